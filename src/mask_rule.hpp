// The caller's Mask and causal option for a whole call, turned into the kernels' per-(batch,
// head) KeyRule (kernels/key_rule.hpp holds the rule itself).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/key_rule.hpp"
#include "simdattn/types.hpp"

namespace simdattn::detail {

struct MaskRule {
  Mask mask;  // data == nullptr: no explicit mask
  Causal causal = Causal::none;
  std::size_t lq = 0;
  std::size_t lk = 0;

  /// The mask's row for (batch b, head h, query i): lk bytes (or 1 when mask.lk == 1),
  /// or nullptr without a mask.
  const std::uint8_t* mask_row(std::size_t b, std::size_t h, std::size_t i) const {
    if (mask.data == nullptr) return nullptr;
    const std::size_t mb = mask.n == 1 ? 0 : b;
    const std::size_t mh = mask.h == 1 ? 0 : h;
    const std::size_t mi = mask.lq == 1 ? 0 : i;
    return mask.data + ((mb * mask.h + mh) * mask.lq + mi) * mask.lk;
  }
  /// Mask rows of consecutive heads are this far apart (0 when the mask broadcasts over heads).
  std::size_t mask_head_stride() const {
    return mask.data != nullptr && mask.h != 1 ? mask.lq * mask.lk : 0;
  }
  /// The rule for the query rows of (batch b, head h), row i being query i of the call.
  kernels::KeyRule for_head(std::size_t b, std::size_t h) const {
    kernels::KeyRule r;
    r.lk = lk;
    r.causal = causal != Causal::none;
    // Bottom-right: k <= i + Lk - Lq. Sizes are far below 2^63, so the difference is exact.
    r.offset = causal == Causal::bottom_right
                   ? static_cast<std::ptrdiff_t>(lk) - static_cast<std::ptrdiff_t>(lq)
                   : 0;
    r.mask = mask_row(b, h, 0);
    r.mask_row_stride = mask.data != nullptr && mask.lq != 1 ? mask.lk : 0;
    r.mask_lk = mask.lk;
    return r;
  }
};

}  // namespace simdattn::detail
