// --set=memory: sdpa at kMemoryShape, once, at the last thread count of --threads, with the
// process's peak resident memory (getrusage) against the bytes of inputs plus output. The peak is
// process-wide, so run this set in its own process.
#include "cases.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {

void register_set_memory() {
  add(Op::sdpa, simdattn::Path::optimized, kMemoryShape, config().threads.back());
}

}  // namespace bench
