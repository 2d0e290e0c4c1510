// --set=full: the grid, then the sweep.
#include "sets.hpp"

namespace bench {

void register_set_full() {
  register_set_grid();
  register_set_sweep();
}

}  // namespace bench
