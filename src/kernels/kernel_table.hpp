// The optimized kernels of one ISA, behind one table of function pointers. The kernels do
// arithmetic only: the drivers (attention.cpp, multi_head_attention.cpp) own validation,
// threads and scratch memory, and call a kernel on a piece of the problem per task.
#pragma once

#include <cstddef>
#include <cstdint>

#include "simdattn/types.hpp"

namespace simdattn::kernels {

/// C[m, n] = A[m, k] B + bias, with B packed by pack_weight() (see gemm/pack.hpp).
/// Single-threaded: the driver splits C into blocks and calls once per block.
struct GemmArgs {
  const float* a = nullptr;
  std::size_t lda = 0;
  std::size_t m = 0;
  std::size_t n = 0;  // columns of C computed by this call; a multiple of kPanel unless last
  std::size_t k = 0;
  const float* b_packed = nullptr;  // already offset to the first panel of this call's columns
  const float* bias = nullptr;      // [n] (offset like b_packed) or nullptr
  float* c = nullptr;
  std::size_t ldc = 0;
};

/// One task of the attention core: query rows [row_begin, row_end) of one (batch, head).
struct AttentionArgs {
  const float* q = nullptr;  // row 0 of this (batch, head); row i at q + i * q_stride
  std::size_t q_stride = 0;
  const float* k = nullptr;  // key 0 of this (batch, head)
  std::size_t k_stride = 0;
  const float* v = nullptr;
  std::size_t v_stride = 0;
  float* out = nullptr;  // row 0 of this (batch, head)
  std::size_t out_stride = 0;
  std::size_t lq = 0;
  std::size_t lk = 0;
  std::size_t d = 0;
  std::size_t row_begin = 0;
  std::size_t row_end = 0;
  // Keep-mask rows for this (batch, head): row i at mask + i * mask_row_stride (0 when the
  // mask broadcasts over queries); mask_lk is lk or 1 (broadcast over keys). nullptr: none.
  const std::uint8_t* mask = nullptr;
  std::size_t mask_row_stride = 0;
  std::size_t mask_lk = 0;
  Causal causal = Causal::none;
  float scale = 1.0f;
  MaskedRows masked_rows = MaskedRows::uniform;
  float* scratch = nullptr;  // attention_scratch_floats(d) floats, 64-byte aligned

  // Decoding only (KernelTable::decode): all `heads` heads of one batch, head j's data at
  // q/k/v + j * d and its mask rows at mask + j * mask_head_stride; keys [key_begin, key_end);
  // unnormalised results go to `partial` (see partial_record()).
  std::size_t heads = 1;
  std::size_t mask_head_stride = 0;
  std::size_t key_begin = 0;
  std::size_t key_end = 0;
  float* partial = nullptr;
};

/// Query lengths up to this are decoding: the driver calls KernelTable::decode.
inline constexpr std::size_t kDecodeMaxLq = 4;
/// Keys per decode slice: slices depend on Lk only, so the merged result does not depend on
/// the thread count; 512 keys keep the per-slice work (512 x D x 2 reads) far above the merge.
inline constexpr std::size_t kDecodeSlice = 512;

/// Floats per (query row, head) record of a decode slice's partial result: the running max at
/// [0], the sum of exponentials at [1], the unnormalised output (D floats) from [16] on, so that
/// records stay 64-byte aligned.
inline std::size_t partial_record_floats(std::size_t d) {
  return (d + 15) / 16 * 16 + 16;
}

/// Query rows per attention task at most (the driver splits longer sequences).
inline constexpr std::size_t kMaxTaskRows = 256;
/// Keys per block of the attention kernels, every ISA.
inline constexpr std::size_t kKeyBlock = 64;
/// Queries per group of the attention tile path, the largest over ISAs (2 zmm on AVX-512).
inline constexpr std::size_t kMaxQueryGroup = 32;

/// Floats of scratch one attention task needs: the task's queries transposed, a padded block
/// of V, a score tile, and the running output, max, sum and rescale factor of every row of the
/// task, plus the uniform average of V. O(task rows x D), independent of Lq and Lk.
inline std::size_t attention_scratch_floats(std::size_t d) {
  const std::size_t dp = (d + 15) / 16 * 16;
  return kMaxTaskRows * dp * 2 + kKeyBlock * dp + kKeyBlock * kMaxQueryGroup + 3 * kMaxTaskRows +
         dp + 64;
}

/// Floats of scratch one decode task needs: scores and rescale factors of every head for one
/// key block.
inline std::size_t decode_scratch_floats(std::size_t heads) {
  return heads * (kKeyBlock + 1) + 64;
}

struct KernelTable {
  Isa isa;
  void (*gemm)(const GemmArgs& args);
  void (*attention)(const AttentionArgs& args);  // Lq > kDecodeMaxLq, one (batch, head)
  void (*decode)(const AttentionArgs& args);     // Lq <= kDecodeMaxLq, one (batch, slice)
  /// y[i] = exp(x[i]) with the kernels' vector exp, for tests of its accuracy.
  void (*exp)(const float* x, float* y, std::size_t n);
};

/// The table of an optimized ISA compiled into this build and runnable here, else nullptr.
const KernelTable* kernel_table(Isa isa);

}  // namespace simdattn::kernels
