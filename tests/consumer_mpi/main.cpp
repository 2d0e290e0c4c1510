// Self-attention over a sequence split across the ranks, through an installed simdattn_mpi: the
// headers, the static libraries and MPI all come from find_package(simdattn COMPONENTS mpi).
// Each rank holds its rows of the zig-zag layout; the output is checked against one process.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <simdattn/mpi.hpp>
#include <simdattn/simdattn.hpp>
#include <vector>

int main(int argc, char** argv) {
  int provided = 0, rank = 0, ranks = 1;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);

  const std::size_t length = 64, embed = 64, heads = 4;
  const simdattn::MultiHeadAttention attention(embed, heads);
  const simdattn::Tensor x = simdattn::Tensor::randn(1, length, embed, 1);  // the whole sequence
  simdattn::Options one;
  one.causal = simdattn::Causal::top_left;
  const simdattn::Tensor whole = attention.forward(x, x, x, {}, one);

  // This rank's rows: an early and a late chunk of the sequence.
  simdattn::mpi::Options options;
  options.causal = simdattn::Causal::top_left;
  options.layout = simdattn::mpi::Layout::zigzag;
  const auto segments = simdattn::mpi::even_split(options.layout, length, ranks, rank);
  std::size_t rows = 0;
  for (const auto& s : segments) rows += s.length;
  simdattn::Tensor mine(1, rows, embed);
  for (const auto& s : segments) {
    std::copy_n(x.data() + s.global_begin * embed, s.length * embed,
                mine.data() + s.local_begin * embed);
  }
  const simdattn::Tensor out =
      simdattn::mpi::forward(attention, MPI_COMM_WORLD, mine, mine, mine, {}, options);

  double worst = 0;
  for (const auto& s : segments) {
    for (std::size_t i = 0; i < s.length; ++i) {
      for (std::size_t k = 0; k < embed; ++k) {
        worst = std::fmax(
            worst, std::fabs(out.at(0, s.local_begin + i, k) - whole.at(0, s.global_begin + i, k)));
      }
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const bool ok = worst < 1e-5;
  if (rank == 0) {
    std::printf(
        "consumer_mpi: %d ranks, zig-zag causal self-attention, largest difference to one "
        "process %.2g%s\n",
        ranks, worst, ok ? "" : " (WRONG)");
  }
  MPI_Finalize();
  return ok ? 0 : 1;
}
