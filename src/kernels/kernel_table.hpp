// The optimized kernels of one ISA, behind one table of function pointers. The kernels do
// arithmetic only: the drivers (src/driver/) own threads and scratch memory and call a kernel
// on a piece of the problem per task; the API layer owns validation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/attention/score_mods.hpp"
#include "kernels/blocking.hpp"
#include "kernels/key_rule.hpp"
#include "simdattn/kv_cache.hpp"
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
  /// kGemmPackFloats floats of scratch for copies of A's rows (gemm.hpp), or nullptr to read A
  /// in place.
  float* a_pack = nullptr;
};

/// One task of the tile path: query rows [row_begin, row_end) of one (batch, head).
struct AttentionArgs {
  const float* q = nullptr;  // row 0 of this (batch, head); row i at q + i * q_stride
  std::size_t q_stride = 0;
  const float* k = nullptr;  // key 0 of the (batch, kv head) this head reads
  std::size_t k_stride = 0;
  const float* v = nullptr;
  std::size_t v_stride = 0;
  float* out = nullptr;  // row 0 of this (batch, head)
  std::size_t out_stride = 0;
  std::size_t lq = 0;
  std::size_t lk = 0;
  std::size_t d = 0;   // head size of Q and K
  std::size_t dv = 0;  // head size of V and the output; 0: d
  std::size_t row_begin = 0;
  std::size_t row_end = 0;
  KeyRule rule;    // rows numbered from 0 = row 0 of this (batch, head)
  ScoreMods mods;  // this head's soft-capping, ALiBi slope and sink
  float scale = 1.0f;
  MaskedRows masked_rows = MaskedRows::uniform;
  float* lse = nullptr;      // nullptr, or lse[i] for row i: see kernels/attention/merge.hpp
  float* scratch = nullptr;  // attention_scratch_floats(d, dv) floats, 64-byte aligned
};

/// One task of the decode path (Lq <= kDecodeMaxLq): keys [key_begin, key_end) of one batch,
/// for every query row and every query head of it. Head j reads its queries at
/// q + j * q_head_stride, its keys and values at k/v + (j / kv_group) * k/v_head_stride
/// (grouped-query attention: kv_group query heads share one K/V head; a head stride of 0 means
/// d, dv: heads side by side in a row), its mask rows at rule.mask + j * mask_head_stride, its
/// bias rows at rule.bias + j * bias_head_stride and its ALiBi slope at alibi[j].
struct DecodeArgs {
  const float* q = nullptr;
  std::size_t q_stride = 0;
  std::size_t q_head_stride = 0;
  const float* k = nullptr;
  std::size_t k_stride = 0;
  std::size_t k_head_stride = 0;
  const float* v = nullptr;
  std::size_t v_stride = 0;
  std::size_t v_head_stride = 0;
  std::size_t lq = 0;
  std::size_t d = 0;   // head size of Q and K
  std::size_t dv = 0;  // head size of V and the output; 0: d
  std::size_t heads = 1;
  std::size_t kv_group = 1;
  KeyRule rule;  // head 0's rule; other heads differ only in their mask and bias rows
  std::size_t mask_head_stride = 0;
  std::size_t bias_head_stride = 0;
  float softcap = 0.0f;          // 0: none
  const float* alibi = nullptr;  // one slope per query head, or nullptr
  float scale = 1.0f;
  std::size_t key_begin = 0;
  std::size_t key_end = 0;
  /// Output: one record per (query row i, head j) at partial + (i * heads + j) * record floats
  /// (partial_record_floats(dv)): the slice's log-sum-exp at [0] (scores modified, no sink) and
  /// its normalised output (Dv floats) from [16] on; see merge.hpp.
  float* partial = nullptr;
  float* scratch = nullptr;  // decode_scratch_floats(heads, dv) floats, 64-byte aligned
};

/// Floats per record of a decode slice's partial result: the log-sum-exp at [0] and the output
/// (D floats) from [16] on, so that records stay 64-byte aligned.
inline std::size_t partial_record_floats(std::size_t d) {
  return (d + 15) / 16 * 16 + 16;
}

/// Floats of scratch one attention task needs: the task's queries transposed, a packed block
/// of K and one of V, a score tile, and the running output, max, sum and rescale factor of every
/// row of the task, plus the uniform average of V. O(task rows x D), independent of Lq and Lk.
/// d: head size of Q and K; dv: of V and the output.
inline std::size_t attention_scratch_floats(std::size_t d, std::size_t dv) {
  const std::size_t dp = (d + 15) / 16 * 16;
  const std::size_t dvp = (dv + 15) / 16 * 16;
  return kMaxTaskRows * (dp + dvp) + kKeyBlock * (dp + dvp) + kKeyBlock * kMaxQueryGroup +
         3 * kMaxTaskRows + dvp + 64;
}
inline std::size_t attention_scratch_floats(std::size_t d) {
  return attention_scratch_floats(d, d);
}

/// Where a decode task's running records start in its scratch: after the scores and rescale
/// factors of every head for one key block (64-byte aligned).
inline std::size_t decode_running_offset(std::size_t heads) {
  return heads * kKeyBlock + (heads + 15) / 16 * 16;
}
/// Floats of scratch one decode task needs: the above, and every head's running record for one
/// query row.
inline std::size_t decode_scratch_floats(std::size_t heads, std::size_t dv) {
  return decode_running_offset(heads) + heads * partial_record_floats(dv) + 64;
}

/// One task of attention over a paged KV cache (attention/paged_decode.hpp): `heads` kv heads
/// side by side in the cache and, for each, the `groups` query heads that read it, for `tokens`
/// new tokens (rows = groups x tokens <= kPagedMaxRows per kv head, row t x groups + g),
/// against keys [key_begin, key_end) of one sequence of rule.lk keys. Row (t, g) sees the keys the
/// rule gives query t (causal, offset rule.lk - tokens: the new tokens are the sequence's last),
/// with soft-capping and the ALiBi slope alibi[g] (query position t + rule.offset) applied to its
/// scores; sinks are the driver's.
struct PagedAttentionArgs {
  // Row (t, g) of kv head i at q + t * q_stride + (i * groups + g) * q_head_stride.
  const float* q = nullptr;
  std::size_t q_stride = 0;
  std::size_t q_head_stride = 0;
  std::size_t heads = 1;
  std::size_t groups = 1;
  std::size_t tokens = 1;
  std::size_t d = 0;
  KeyRule rule;
  // The cache: block i of the sequence starts at pool + blocks[i] * block_bytes; in a block,
  // the first kv head's keys, transposed [d][block_tokens], start key_offset bytes in, and its
  // values [block_tokens][row_elems] value_offset bytes in; kv head i's key_head_bytes x i and
  // value_head_bytes x i further.
  const void* pool = nullptr;
  const std::uint32_t* blocks = nullptr;
  std::size_t block_bytes = 0;
  std::size_t block_tokens = 0;
  std::size_t key_offset = 0;
  std::size_t value_offset = 0;
  std::size_t key_head_bytes = 0;
  std::size_t value_head_bytes = 0;
  std::size_t row_elems = 0;
  KvStorage storage = KvStorage::f32;
  std::size_t key_begin = 0;  // a multiple of kKeyBlock
  std::size_t key_end = 0;
  float scale = 1.0f;
  float softcap = 0.0f;          // 0: none
  const float* alibi = nullptr;  // slope of (i, g) at alibi[i * groups + g], or nullptr
  /// Output: one record per row (partial_record_floats(d) floats each), those of kv head i from
  /// partial + i * partial_head_stride: the slice's log-sum-exp at [0] (scores modified, no
  /// sink), its normalised output from [16] (see merge.hpp).
  float* partial = nullptr;
  std::size_t partial_head_stride = 0;
  float* scratch = nullptr;  // paged_scratch_floats(d, heads x rows) floats, 64-byte aligned
};

/// Where a paged task's running records start in its scratch: after its query rows, a score
/// tile and each row's rescale factor (with room to spare; 64-byte aligned).
inline std::size_t paged_running_offset(std::size_t d) {
  return (kPagedMaxRows * d + 15) / 16 * 16 + kPagedMaxRows * kKeyBlock + 3 * kPagedMaxRows + 64;
}
/// Floats of scratch one paged task needs: the above, and the running record of each of its
/// `records` rows (heads x G x T).
inline std::size_t paged_scratch_floats(std::size_t d, std::size_t records) {
  return paged_running_offset(d) + records * partial_record_floats(d);
}
struct BackwardArgs;  // kernels/attention/backward_args.hpp

struct KernelTable {
  Isa isa;
  void (*gemm)(const GemmArgs& args);
  /// Whether gemm copies A's rows into GemmArgs::a_pack (GemmTileFor::kPackA); where it does
  /// not, the driver passes no scratch.
  bool gemm_copies_a;
  void (*attention)(const AttentionArgs& args);  // Lq > kDecodeMaxLq, one (batch, head)
  void (*decode)(const DecodeArgs& args);        // Lq <= kDecodeMaxLq, one (batch, slice)
  void (*paged_attention)(const PagedAttentionArgs& args);  // over a KvCache, one slice
  void (*attention_backward)(const BackwardArgs& args);     // one key block of one (batch, head)
  /// A task's bias rows copied with keys down for the attention kernel (KeyRule::bias_t):
  /// out[k * stride + t] = bias[t * row_stride + k] for t < rows, k < keys; zeros for rows
  /// [rows, stride). stride: a multiple of 16.
  void (*bias_keys_down)(const float* bias, std::size_t row_stride, std::size_t rows,
                         std::size_t keys, std::size_t stride, float* out);
  /// y[i] = exp(x[i]) with the kernels' vector exp: a hook for the tests of its accuracy.
  void (*exp)(const float* x, float* y, std::size_t n);
  /// y[i] = 2^x[i] for x[i] <= 0 with the tile path's exp2 (exp2.hpp), likewise.
  void (*exp2)(const float* x, float* y, std::size_t n);
  /// y[i] = tanh(x[i]) with soft-capping's vector tanh (attention/score_mods_vec.hpp), likewise.
  void (*tanh)(const float* x, float* y, std::size_t n);
};

}  // namespace simdattn::kernels
