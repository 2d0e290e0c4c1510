// The caller's mask, causal option and score modifications for a whole call, turned into the
// kernels' per-(batch, head) KeyRule (kernels/key_rule.hpp holds the rule itself) and
// ScoreMods (kernels/attention/score_mods.hpp). Validated by the API layer (validate.hpp's
// resolve_rule); {mask, causal, lq, lk} alone is the plain rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "kernels/attention/score_mods.hpp"
#include "kernels/key_rule.hpp"
#include "simdattn/types.hpp"

namespace simdattn::detail {

struct MaskRule {
  Mask mask;  // data == nullptr: no explicit mask
  Causal causal = Causal::none;
  std::size_t lq = 0;
  std::size_t lk = 0;
  Bias bias{};                   // data == nullptr: none; bias.lk == lk
  std::size_t window = 0;        // 0: none; only with causal
  KeyPadding key_padding{};      // data == nullptr: none; [N, lk], nonzero = padding
  float softcap = 0.0f;          // 0: none
  std::vector<float> alibi{};    // slopes per query head; empty: no ALiBi
  const float* sinks = nullptr;  // one per query head, or nullptr
  /// A call that computes one block of a larger problem (a rank's slice of a sequence against
  /// another rank's keys, a chunk of a prompt) reads the whole problem's mask: its head 0, query
  /// row 0 and key 0 are the mask's head `mask_head0`, row `mask_row0` and column `mask_col0`
  /// (where a mask dimension broadcasts, the offset does not apply). The variants above have no
  /// such offsets: a block call uses mask and causal only.
  std::size_t mask_head0 = 0;
  std::size_t mask_row0 = 0;
  std::size_t mask_col0 = 0;
  /// Set: the causal offset itself (key k visible to row i iff k <= i + offset), for such a
  /// block: the first query's global position minus the first key's, plus the whole problem's
  /// alignment offset. Unset: the alignment's offset for lq, lk (0, or lk - lq).
  std::optional<std::ptrdiff_t> causal_offset = std::nullopt;

  /// The mask's row for (batch b, head h, query i): lk bytes (or 1 when mask.lk == 1),
  /// or nullptr without a mask.
  const std::uint8_t* mask_row(std::size_t b, std::size_t h, std::size_t i) const {
    if (mask.data == nullptr) return nullptr;
    const std::size_t mb = mask.n == 1 ? 0 : b;
    const std::size_t mh = mask.h == 1 ? 0 : h + mask_head0;
    const std::size_t mi = mask.lq == 1 ? 0 : i + mask_row0;
    const std::size_t mk = mask.lk == 1 ? 0 : mask_col0;
    return mask.data + ((mb * mask.h + mh) * mask.lq + mi) * mask.lk + mk;
  }
  /// Mask rows of consecutive heads are this far apart (0 when the mask broadcasts over heads).
  std::size_t mask_head_stride() const {
    return mask.data != nullptr && mask.h != 1 ? mask.lq * mask.lk : 0;
  }
  /// The bias's row 0 for (batch b, head h), or nullptr without a bias.
  const float* bias_rows(std::size_t b, std::size_t h) const {
    if (bias.data == nullptr) return nullptr;
    const std::size_t bb = bias.n == 1 ? 0 : b;
    const std::size_t bh = bias.h == 1 ? 0 : h;
    return bias.data + (bb * bias.h + bh) * bias.lq * bias.lk;
  }
  /// Bias rows of consecutive heads are this far apart (0 when it broadcasts over heads).
  std::size_t bias_head_stride() const {
    return bias.data != nullptr && bias.h != 1 ? bias.lq * bias.lk : 0;
  }
  /// The rule for the query rows of (batch b, head h), row i being query i of the call.
  kernels::KeyRule for_head(std::size_t b, std::size_t h) const {
    kernels::KeyRule r;
    r.lk = lk;
    r.causal = causal != Causal::none;
    // Bottom-right: k <= i + Lk - Lq. Sizes are far below 2^63, so the difference is exact.
    r.offset = causal_offset ? *causal_offset
               : causal == Causal::bottom_right
                   ? static_cast<std::ptrdiff_t>(lk) - static_cast<std::ptrdiff_t>(lq)
                   : 0;
    r.mask = mask_row(b, h, 0);
    r.mask_row_stride = mask.data != nullptr && mask.lq != 1 ? mask.lk : 0;
    r.mask_lk = mask.lk;
    r.window = r.causal ? window : 0;
    r.padding = key_padding.data != nullptr ? key_padding.data + b * lk : nullptr;
    r.bias = bias_rows(b, h);
    r.bias_row_stride = bias.data != nullptr && bias.lq != 1 ? bias.lk : 0;
    return r;
  }
  /// The score modifications of query head h.
  kernels::ScoreMods mods_for_head(std::size_t h) const {
    kernels::ScoreMods m;
    m.softcap = softcap;
    if (!alibi.empty()) m.alibi_slope = alibi[h];
    if (sinks != nullptr) m.sink = sinks[h];
    return m;
  }
  /// True if the call uses any score modification or visibility rule beyond mask and causal.
  bool has_variants() const {
    return bias.data != nullptr || window != 0 || key_padding.data != nullptr || softcap != 0.0f ||
           !alibi.empty() || sinks != nullptr;
  }
};

}  // namespace simdattn::detail
