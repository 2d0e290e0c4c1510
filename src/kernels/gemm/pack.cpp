#include "kernels/gemm/pack.hpp"

namespace simdattn::kernels {

void pack_weight(const float* w, std::size_t out, std::size_t in, std::size_t ldw, float* dst) {
  const std::size_t panels = (out + kPanel - 1) / kPanel;
  for (std::size_t p = 0; p < panels; ++p) {
    float* panel = dst + p * in * kPanel;
    for (std::size_t k = 0; k < in; ++k) {
      for (std::size_t j = 0; j < kPanel; ++j) {
        const std::size_t o = p * kPanel + j;
        panel[k * kPanel + j] = o < out ? w[o * ldw + k] : 0.0f;
      }
    }
  }
}

}  // namespace simdattn::kernels
