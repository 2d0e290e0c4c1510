// --set=sweep: E x H x L over kSweepE, kSweepH (where H divides E) and kSweepL, both ops and
// both paths.
#include "cases.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {

void register_set_sweep() {
  for (std::size_t e : kSweepE) {
    for (std::size_t h : kSweepH) {
      if (e % h != 0) continue;
      for (std::size_t l : kSweepL) add_shape(sweep_shape(e, h, l));
    }
  }
}

}  // namespace bench
