// A rank that fails after the ranks agreed on a call ends the whole job with a message, instead
// of leaving the others waiting: rank 1 fails inside the call while rank 0 waits for it in a
// collective that never completes. CTest expects the message and a prompt end.
#include <mpi.h>

#include <cstdio>
#include <stdexcept>

#include "mpi/plan.hpp"

int main(int argc, char* argv[]) {
  MPI_Init(&argc, &argv);
  namespace dm = simdattn::detail::mpi;
  dm::Plan plan;
  plan.comm = MPI_COMM_WORLD;
  MPI_Comm_size(plan.comm, &plan.ranks);
  MPI_Comm_rank(plan.comm, &plan.rank);
  dm::or_abort("mpi::abort_check", plan, [&] {
    if (plan.rank == 1) throw std::runtime_error("injected failure");
    MPI_Barrier(plan.comm);  // never completes: rank 1 is gone
  });
  std::printf("abort_check: the job was not ended\n");
  MPI_Finalize();
  return 0;
}
