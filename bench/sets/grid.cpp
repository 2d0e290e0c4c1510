// --set=grid: the nine grid cases, both ops, both paths, every thread count.
#include "cases.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {

void register_set_grid() {
  for (const Shape& s : kGrid) add_shape(s);
}

}  // namespace bench
