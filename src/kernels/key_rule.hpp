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
//   - the sliding window, if any (only with causal): k > i + offset - window, so that keys
//     [key_begin(i), key_end(i)) are the at most `window` keys up to the causal end;
//   - the keep-mask row, if any: mask_row(i)[k] != 0 (mask_row(i)[0] when it broadcasts
//     over keys);
//   - the key-padding row, if any: padding[k] == 0 (PyTorch's convention, nonzero = padding);
//   - the float bias row, if any: bias_row(i)[k] != -inf (a -inf bias is a mask; any other
//     value, NaN included, is added to the score and leaves the key visible).
// key_begin/key_end bound the keys any row can see, so kernels and decode slices never read keys
// outside them: a window bounds what a decode step reads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

namespace simdattn::kernels {

struct KeyRule {
  std::size_t lk = 0;
  bool causal = false;
  std::ptrdiff_t offset = 0;  // causal: key k visible to row i iff k <= i + offset
  // Keep-mask: row i at mask + i * mask_row_stride (stride 0 when the mask broadcasts over
  // queries), key k at row[k]; mask_lk is 1 when it broadcasts over keys (row[0] for every key),
  // else the mask's row length (lk, or more when the call reads a block of a larger mask).
  // nullptr: no mask.
  const std::uint8_t* mask = nullptr;
  std::size_t mask_row_stride = 0;
  std::size_t mask_lk = 0;
  // Sliding window (causal only): key k visible to row i iff k > i + offset - window. 0: none.
  std::size_t window = 0;
  // Key padding: lk bytes, nonzero hides the key for every row. nullptr: none.
  const std::uint8_t* padding = nullptr;
  // Float bias: row i at bias + i * bias_row_stride (0 when it broadcasts over queries), lk
  // floats; -inf hides the key. nullptr: no bias.
  const float* bias = nullptr;
  std::size_t bias_row_stride = 0;
  // Rows [bias_t_row0, ...) and keys [bias_t_key0, ...) of the same bias with keys down, where
  // the driver made that copy (the tile path then reads it instead of transposing pieces in
  // registers): row i, key k at bias_t[(k - bias_t_key0) * bias_t_stride + i - bias_t_row0],
  // each key's rows padded to whole query groups. nullptr: none.
  const float* bias_t = nullptr;
  std::size_t bias_t_stride = 0;
  std::size_t bias_t_row0 = 0;
  std::size_t bias_t_key0 = 0;
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

/// Keys before key_begin(r, i) are outside row i's window (0 without a window). Positional:
/// the window ends at the unclamped causal end i + offset + 1, so a row past the last key
/// (top-left alignment with Lq > Lk) sees the keys of its window that exist.
inline std::size_t key_begin(const KeyRule& r, std::size_t i) {
  if (r.window == 0 || !r.causal) return 0;
  const std::ptrdiff_t e = static_cast<std::ptrdiff_t>(i) + r.offset + 1;
  if (e <= 0 || static_cast<std::size_t>(e) <= r.window) return 0;
  const std::size_t b = static_cast<std::size_t>(e) - r.window;
  return b < r.lk ? b : r.lk;
}

/// Row i's mask bytes, or nullptr without a mask.
inline const std::uint8_t* mask_row(const KeyRule& r, std::size_t i) {
  return r.mask == nullptr ? nullptr : r.mask + i * r.mask_row_stride;
}

/// The mask part alone, for a row looked up once by mask_row().
inline bool mask_keeps(const KeyRule& r, const std::uint8_t* row, std::size_t k) {
  return row == nullptr || row[r.mask_lk == 1 ? 0 : k] != 0;
}

/// Row i's bias (lk floats), or nullptr without a bias.
inline const float* bias_row(const KeyRule& r, std::size_t i) {
  return r.bias == nullptr ? nullptr : r.bias + i * r.bias_row_stride;
}

/// True if the rule has a per-key part beyond the bounds [key_begin, key_end): a mask, key
/// padding or a bias that can hide keys one by one.
inline bool hides_single_keys(const KeyRule& r) {
  return r.mask != nullptr || r.padding != nullptr || r.bias != nullptr;
}

/// The per-key parts (mask, padding, -inf bias) for a key within the bounds, for a row whose
/// mask and bias rows were looked up once.
inline bool keeps_key(const KeyRule& r, const std::uint8_t* mrow, const float* brow,
                      std::size_t k) {
  return mask_keeps(r, mrow, k) && (r.padding == nullptr || r.padding[k] == 0) &&
         (brow == nullptr || brow[k] != -std::numeric_limits<float>::infinity());
}

inline bool key_visible(const KeyRule& r, std::size_t i, std::size_t k) {
  return k >= key_begin(r, i) && k < key_end(r, i) &&
         keeps_key(r, mask_row(r, i), bias_row(r, i), k);
}

/// True if row i sees at least one key. A row that sees none gets the masked-row policy's
/// answer; this, not the arithmetic, decides it (a visible key whose score is -inf must give
/// NaN, as in the reference, not the masked answer).
inline bool has_visible_key(const KeyRule& r, std::size_t i) {
  const std::size_t b = key_begin(r, i), e = key_end(r, i);
  if (b >= e) return false;
  if (!hides_single_keys(r)) return true;
  const std::uint8_t* mrow = mask_row(r, i);
  const float* brow = bias_row(r, i);
  for (std::size_t k = b; k < e; ++k) {
    if (keeps_key(r, mrow, brow, k)) return true;
  }
  return false;
}

}  // namespace
}  // namespace simdattn::kernels
