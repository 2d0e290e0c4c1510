// --set=default: what a plain run shows on a 2-core machine in a few minutes: the grid cases
// and the sweep points of kDefaultSweep, which with them vary L, E and H.
#include "cases.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {

void register_set_default() {
  for (const Shape& s : kGrid) add_shape(s);
  for (const SweepPoint& p : kDefaultSweep) add_shape(sweep_shape(p.e, p.h, p.l));
}

}  // namespace bench
