// Inputs of the benchmarks that build their own: uniform floats from a seed, reproducible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bench {

// Uniform in [-1, 1), written in place: no temporary copy adds to a memory case's peak.
inline std::vector<float> random_floats(std::size_t count, std::uint32_t seed) {
  std::vector<float> x(count);
  std::uint32_t state = seed * 2654435761u + 1;
  for (float& f : x) {
    state = state * 1664525u + 1013904223u;
    f = static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
  return x;
}

}  // namespace bench
