// Which keys a query row may see: the one rule that the reference and every optimized path
// share, so that "masked" means the same everywhere.
#pragma once

#include <cstddef>
#include <cstdint>

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
  /// Keys [0, causal_end(i)) pass the causal rule for query i (all keys without one).
  std::size_t causal_end(std::size_t i) const {
    switch (causal) {
      case Causal::top_left:
        return i + 1 < lk ? i + 1 : lk;
      case Causal::bottom_right:
        // k <= i + lk - lq  <=>  k < i + 1 + lk - lq, computed without unsigned wrap-around.
        if (i + 1 + lk <= lq) return 0;
        return i + 1 + lk - lq < lk ? i + 1 + lk - lq : lk;
      case Causal::none:
        break;
    }
    return lk;
  }
  /// True if query row i of (batch b, head h) sees at least one key.
  bool has_visible_key(std::size_t b, std::size_t h, std::size_t i) const {
    const std::size_t end = causal_end(i);
    const std::uint8_t* row = mask_row(b, h, i);
    for (std::size_t k = 0; k < end; ++k) {
      if (mask_keeps(row, mask.lk, k)) return true;
    }
    return false;
  }
  static bool mask_keeps(const std::uint8_t* row, std::size_t mask_lk, std::size_t k) {
    return row == nullptr || row[mask_lk == 1 ? 0 : k] != 0;
  }
};

}  // namespace simdattn::detail
