#include "sets.hpp"

namespace bench {

const std::vector<BenchSet>& bench_sets() {
#define BENCH_SET_ENTRY(id, min_time_s, help) {#id, min_time_s, help, register_set_##id},
  static const std::vector<BenchSet> sets = {BENCH_SETS(BENCH_SET_ENTRY)};
#undef BENCH_SET_ENTRY
  return sets;
}

const BenchSet* find_set(const std::string& name) {
  for (const BenchSet& set : bench_sets()) {
    if (name == set.name) return &set;
  }
  return nullptr;
}

}  // namespace bench
