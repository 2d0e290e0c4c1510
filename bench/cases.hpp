// The benchmark's cases, their names and their FLOP counts (bench/README.md lists them and
// derives the formulas).
#pragma once

#include <cstddef>
#include <string>

#include "simdattn/simdattn.hpp"

namespace bench {

enum class Op { mha, sdpa };

const char* op_name(Op op);
const char* path_name(simdattn::Path path);

struct Shape {
  std::string name;  // a grid case, "sweep", "memory" or "calibration"
  std::size_t n, lq, lk, e, h;
  bool causal;

  bool operator==(const Shape& o) const {
    return name == o.name && n == o.n && lq == o.lq && lk == o.lk && e == o.e && h == o.h &&
           causal == o.causal;
  }
};

// The grid: nine cases from the smallest call (seed: the tutorial's L = 2) to a long sequence,
// a causal mask, cross-attention and one decode step.
inline const Shape kGrid[] = {
    {"seed", 1, 2, 2, 256, 8, false},        {"s128", 1, 128, 128, 256, 8, false},
    {"s512", 1, 512, 512, 512, 8, false},    {"s2048", 1, 2048, 2048, 512, 8, false},
    {"bert", 4, 512, 512, 768, 12, false},   {"s4096", 1, 4096, 4096, 1024, 16, false},
    {"causal", 1, 2048, 2048, 512, 8, true}, {"cross", 2, 256, 1024, 512, 8, false},
    {"decode", 1, 1, 4096, 1024, 16, false},
};
inline const std::size_t kSweepE[] = {128, 256, 512, 1024};
inline const std::size_t kSweepH[] = {1, 4, 8, 16};
inline const std::size_t kSweepL[] = {2, 128, 512, 2048, 4096};

// The default run's sweep points beyond the grid cases. With the grid's N = 1 self-attention
// cases (seed, s128, s512, s2048, s4096) they give L series for (E, H) = (256, 8), (512, 8) and
// (1024, 16), E from 128 to 1024 at L = 512, and H from 1 to 16 at E = 512, L = 512. Chosen to
// keep a plain run under 3 minutes on 2 cores: the naive path and the checks of large `mha`
// shapes (their K and V projections run naive) take half of it.
struct SweepPoint {
  std::size_t e, h, l;
};
inline const SweepPoint kDefaultSweep[] = {
    {256, 8, 512},   {512, 8, 2},   {512, 8, 128}, {512, 8, 4096}, {1024, 16, 128},
    {1024, 16, 512}, {128, 8, 512}, {512, 1, 512}, {512, 4, 512},  {512, 16, 512},
};

inline Shape sweep_shape(std::size_t e, std::size_t h, std::size_t l) {
  return {"sweep", 1, l, l, e, h, false};
}
inline const Shape kMemoryShape{"memory", 1, 16384, 16384, 512, 8, false};

// FLOPs of one call.
double sdpa_flops(const Shape& s);
double projection_flops(const Shape& s);
double flops(Op op, const Shape& s);
// Decode reads each K and V element once; that traffic, not arithmetic, bounds it.
double kv_bytes(const Shape& s);

// <op>/<path>/<case>/N:<n>/Lq:<lq>/Lk:<lk>/E:<e>/H:<h>/threads:<t>
std::string benchmark_name(Op op, simdattn::Path path, const Shape& s, int threads);

}  // namespace bench
