// Which keys a query row may see: the one visibility rule that the reference, the tile and
// decode kernels and every merge of partial results share, so that "masked" means the same
// everywhere. Plain data and inline arithmetic, no dependency: usable from any layer.
//
// A key k is visible to query row i when it passes
//   - the causal rule, if any: k <= i + offset. Top-left alignment is offset 0 (the tutorial's
//     lower-triangular mask); bottom-right is offset Lk - Lq (the last query sees every key, as
//     decoding with a KV cache needs). A caller that holds a slice of a longer sequence (a
//     chunk of a prompt, one rank's slice of a ring) passes the difference of the slices'
//     first global positions;
//   - and the keep-mask row, if any: mask_row(i)[k] != 0 (mask_row(i)[0] when it broadcasts
//     over keys).
#pragma once

#include <cstddef>
#include <cstdint>

namespace simdattn::kernels {

struct KeyRule {
  std::size_t lk = 0;
  bool causal = false;
  std::ptrdiff_t offset = 0;  // causal: key k visible to row i iff k <= i + offset
  // Keep-mask: row i at mask + i * mask_row_stride (stride 0 when the mask broadcasts over
  // queries); mask_lk is lk, or 1 when it broadcasts over keys. nullptr: no mask.
  const std::uint8_t* mask = nullptr;
  std::size_t mask_row_stride = 0;
  std::size_t mask_lk = 0;
};

// Free functions with internal linkage, not members: this header is also compiled into the
// per-ISA units, and an inline function with external linkage emitted there could be the copy
// the linker keeps for the whole program (AVX-512 code on an AVX2 machine).
namespace {

/// Keys [0, key_end(r, i)) pass the causal rule for row i (all lk keys without one).
inline std::size_t key_end(const KeyRule& r, std::size_t i) {
  if (!r.causal) return r.lk;
  const std::ptrdiff_t e = static_cast<std::ptrdiff_t>(i) + r.offset + 1;
  if (e <= 0) return 0;
  return static_cast<std::size_t>(e) < r.lk ? static_cast<std::size_t>(e) : r.lk;
}

/// Row i's mask bytes, or nullptr without a mask.
inline const std::uint8_t* mask_row(const KeyRule& r, std::size_t i) {
  return r.mask == nullptr ? nullptr : r.mask + i * r.mask_row_stride;
}

/// The mask part alone, for a row looked up once by mask_row().
inline bool mask_keeps(const KeyRule& r, const std::uint8_t* row, std::size_t k) {
  return row == nullptr || row[r.mask_lk == 1 ? 0 : k] != 0;
}

inline bool key_visible(const KeyRule& r, std::size_t i, std::size_t k) {
  return k < key_end(r, i) && mask_keeps(r, mask_row(r, i), k);
}

/// True if row i sees at least one key. A row that sees none gets the masked-row policy's
/// answer; this, not the arithmetic, decides it (a visible key whose score is -inf must give
/// NaN, as in the reference, not the masked answer).
inline bool has_visible_key(const KeyRule& r, std::size_t i) {
  const std::size_t e = key_end(r, i);
  if (e == 0) return false;
  const std::uint8_t* row = mask_row(r, i);
  if (row == nullptr) return true;
  if (r.mask_lk == 1) return row[0] != 0;
  for (std::size_t k = 0; k < e; ++k) {
    if (row[k] != 0) return true;
  }
  return false;
}

}  // namespace
}  // namespace simdattn::kernels
