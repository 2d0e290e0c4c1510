// simdattn: small shared types of the public API (views, masks, options, paths, ISAs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "simdattn/isa_list.hpp"

namespace simdattn {

/// Which implementation computes a call. Both share every argument and every semantic;
/// `naive` is the scalar reference that mirrors the tutorial step by step.
enum class Path { optimized, naive };

/// Instruction sets: `naive` (the scalar reference) and, from isa_list.hpp, the ISAs with
/// optimized kernels (e.g. avx2), compiled per ISA into the same binary and picked at run time
/// (see dispatch.hpp).
#define SIMDATTN_ISA_ENUMERATOR_(name) name,
enum class Isa { naive, SIMDATTN_ISA_LIST(SIMDATTN_ISA_ENUMERATOR_) };
#undef SIMDATTN_ISA_ENUMERATOR_

/// Causal masking without a mask buffer. With Lq == Lk both alignments are the tutorial's
/// lower-triangular mask; they differ only for Lq != Lk, so the caller must say which.
enum class Causal {
  none,
  top_left,      ///< key k visible to query q when k <= q (torch.tril(ones(Lq, Lk)))
  bottom_right,  ///< key k visible to query q when k <= q + Lk - Lq (decoding with a KV cache)
};

/// What a query row whose every key is masked returns.
enum class MaskedRows {
  uniform,  ///< the tutorial's -1e20 fill: softmax of equal scores, the plain average of all values
  zeros,    ///< zeros (PyTorch's flash kernel, ONNX Runtime)
};

/// A keep-mask of uint8 (0 = masked, anything else = visible), row-major with shape
/// [n, h, lq, lk]. Each dimension is either the full size or 1, and a 1 broadcasts, as in
/// PyTorch: the tutorial's causal mask is [1, 1, Lq, Lk], a key-padding mask [N, 1, 1, Lk].
/// `data == nullptr` means no mask. Combined with `Options::causal`, a key must pass both.
struct Mask {
  const std::uint8_t* data = nullptr;
  std::size_t n = 1;
  std::size_t h = 1;
  std::size_t lq = 1;
  std::size_t lk = 1;
};

/// An additive float bias on the scores (PyTorch's float attn_mask, ONNX Runtime's
/// attention_bias, ggml's mask), row-major [n, h, lq, lk] in the caller's memory. n, h and lq
/// are each the full size or 1 (a 1 broadcasts, as for Mask); lk is the full key length.
/// An entry of -inf hides its key exactly as a 0 of the keep-mask does (no weight; a row whose
/// every key is hidden follows Options::masked_rows); other entries, NaN included, are added.
/// `data == nullptr` means no bias. For Lq > 4 a bias with rows per query (lq == Lq) is read
/// through each thread's copy of a block of its rows with keys down, kept for the thread's next
/// calls: blocks of up to 2 MiB (or 32 rows where those pass 2 MiB) for a bias shared by the
/// heads (h == 1 with H > 1) whose rows make work for every thread of the call; otherwise of up
/// to 1 MiB, and no copy where not even 32 rows fit (lk past 8192 without a window): the tiles
/// then transpose the bias pieces themselves.
struct Bias {
  const float* data = nullptr;
  std::size_t n = 1;
  std::size_t h = 1;
  std::size_t lq = 1;
  std::size_t lk = 1;
};

/// One float per query head in the caller's memory: data[j] for head j; `size` must be H.
struct PerHead {
  const float* data = nullptr;
  std::size_t size = 0;
};

/// ALiBi (Press et al., "Train Short, Test Long"): the bias slope_j * (k - p_i) on the score of
/// query i and key k in head j, computed in the kernels (no tensor), where p_i = i + the causal
/// alignment's offset (0 for top_left and without causal, Lk - Lq for bottom_right) is the
/// query's position among the keys. Without a causal mask this is BLOOM's slope * (k - i), which
/// softmax makes equal to slope * k; it is not the symmetric -slope * |k - i|.
struct Alibi {
  bool enabled = false;
  /// The slopes, one per query head, finite and at most 1e30 in magnitude; data == nullptr and
  /// size 0: alibi_slopes(H) (attention.hpp), the paper's geometric series. Slopes given (data
  /// or size set) while enabled is false are an error (they would be ignored).
  PerHead slopes;
};

/// PyTorch's key_padding_mask, [n, lk] uint8 in the caller's memory with PyTorch's convention:
/// nonzero = padding, a key that no query of that batch sees; 0 = a real key. Combines with the
/// mask, the bias and causal: a key must pass all of them. `data == nullptr` means none.
struct KeyPadding {
  const std::uint8_t* data = nullptr;
  std::size_t n = 0;
  std::size_t lk = 0;
};

/// Where the attention weights go when the caller asks for them (PyTorch's need_weights): the
/// softmax probabilities P[b, j, i, k] that the output used, row-major [N, H, Lq, Lk], or with
/// average_heads their mean over the H query heads, [N, Lq, Lk] (PyTorch's default
/// average_attn_weights=True). Hidden keys get 0; a row that sees no key gets 1/Lk per key under
/// MaskedRows::uniform (what its output averages) and 0 under MaskedRows::zeros or with a sink.
/// `size` is the number of floats at `data` and must be exactly that shape's. Opt-in: with
/// `data == nullptr` (the default) nothing of size Lq x Lk is computed or allocated.
struct AttentionWeights {
  float* data = nullptr;
  std::size_t size = 0;
  bool average_heads = false;
};

/// Per-call options. Defaults: scale 1/sqrt(head_dim), no causal mask, the tutorial's uniform
/// policy for fully masked rows, the optimized path, OpenMP's default thread count, and none of
/// the score modifications.
///
/// Scores. For query i, key k and head j, in this order (as Gemma 2 and ggml do it):
///     s = scale * <q_i, k_k>
///     s = softcap * tanh(s / softcap)                       if softcap is set
///     s = s + bias[b, j, i, k] + slope_j * (k - p_i)        if a bias / ALiBi is given
///     keys hidden by causal, window, mask, key_padding or a -inf bias get no weight
///     P = exp(s - lse_i),  lse_i = log(sum over visible keys k of exp(s_k) + exp(sink_j))
/// The sink term is present only with sinks. A row with no visible key returns the
/// masked_rows policy's answer, except with sinks, where it returns zeros (the sink takes all
/// the weight) under either policy.
struct Options {
  /// Multiplies Q K^T. Unset: 1/sqrt(head_dim), as in the equation and in PyTorch.
  /// The tutorial's code divides by sqrt(embed_size): use `tutorial_scale(embed_size)`.
  /// Must be finite, > 0 and at most 1e30 (the kernels scale scores by log2(e) in float).
  std::optional<float> scale;
  Causal causal = Causal::none;
  MaskedRows masked_rows = MaskedRows::uniform;
  Path path = Path::optimized;
  /// The ISA of this call's optimized path; unset: active_isa(), the process's choice. One this
  /// machine cannot run is an std::invalid_argument; Isa::naive runs the reference.
  std::optional<Isa> isa;
  /// Threads for this call, at most kMaxThreads; 0 means omp_get_max_threads() (capped at
  /// kMaxThreads). A negative count or one above kMaxThreads is an std::invalid_argument. The
  /// library never changes the caller's OpenMP settings. Results are bitwise identical for every
  /// thread count.
  int threads = 0;

  // ---- score modifications and extra outputs (see "Scores" above) ----

  /// Logit soft-capping (Gemma 2's attn_logit_softcapping, ggml's logit_softcap): must be
  /// within [1e-30, 1e30] when set (the kernels multiply by 1 / softcap in float).
  std::optional<float> softcap;
  /// Additive float bias; combines with the mask, causal and ALiBi.
  Bias bias;
  /// Linear position biases without a tensor.
  Alibi alibi;
  /// Sliding-window (local) attention: query i sees at most the last `window` keys up to its
  /// causal end, key k when i + offset - window < k <= i + offset (offset as for Causal), so
  /// the cost grows with L x window, not L^2. Needs a causal alignment; must be >= 1 when set.
  std::optional<std::size_t> window;
  /// Attention sinks (gpt-oss, ONNX Runtime's head_sink): one logit per query head, finite and
  /// at most 1e30 in magnitude, that joins every row's softmax denominator and contributes no
  /// value.
  PerHead sinks;
  /// PyTorch's key_padding_mask ([N, Lk], nonzero = padding).
  KeyPadding key_padding;
  /// The attention probabilities, if wanted (PyTorch's need_weights).
  AttentionWeights weights;
};

/// The largest Options::threads accepted. OpenMP runtimes crash or abort the process when asked
/// for a team of ~10^5 threads; 1024 is above the hardware threads of today's largest CPUs.
inline constexpr int kMaxThreads = 1024;

/// The tutorial's scale, 1/sqrt(embed_size).
float tutorial_scale(std::size_t embed_size);

/// An [n, l, e] float tensor in the caller's memory (no ownership): element (b, i, k) is at
/// data[b * batch_stride + i * row_stride + k]. A zero stride means dense (row_stride = e,
/// batch_stride = l * row_stride), so {data, n, l, e} is a row-major [n, l, e] buffer. Rows must
/// not overlap: batch-major strides (row_stride >= e, batch_stride >= the rows of a batch) or
/// sequence-major ones (batch_stride >= e, row_stride >= the batches of a position), such as
/// PyTorch's batch_first=False layout, a contiguous [l, n, e] buffer: see sequence_first().
template <class T>
struct TensorView {
  T* data = nullptr;
  std::size_t n = 0;
  std::size_t l = 0;
  std::size_t e = 0;
  std::size_t row_stride = 0;
  std::size_t batch_stride = 0;
};
using ConstTensorView = TensorView<const float>;

/// A contiguous [l, n, e] buffer (PyTorch's batch_first=False: sequence first) as an [n, l, e]
/// view, without a copy: row_stride = n * e, batch_stride = e.
template <class T>
TensorView<T> sequence_first(T* data, std::size_t l, std::size_t n, std::size_t e) {
  return {data, n, l, e, n * e, e};
}

/// An [n, l, h, d] view of attention heads: element (b, i, j, k) is at
/// data[b * batch_stride + i * row_stride + j * head_stride + k]. A zero stride means dense:
///   head_stride = d;
///   row_stride = h * head_stride when head_stride is d (heads inside a row: [N, L, H, D]),
///                d otherwise (rows inside a head: [N, H, L, D]);
///   batch_stride = max(l * row_stride, h * head_stride).
/// So the heads of an [N, L, E] buffer are used in place with the defaults, a larger
/// row_stride selects a slice of a wider row, and PyTorch's and ONNX's [N, H, L, D] tensors are
/// used in place with head_stride = L * D (nhld_view() below). Views may not overlap
/// themselves (two elements at one address): they must nest, each of the three strides, from the
/// smallest up, at least the span of what lies inside it (D elements, then rows and heads, then
/// batches). That also refuses the rare interleaved views that repeat no address (rows 3 and
/// heads 2 floats apart with D = 1), as "makes elements overlap".
template <class T>
struct HeadsView {
  T* data = nullptr;
  std::size_t n = 0;
  std::size_t l = 0;
  std::size_t h = 0;
  std::size_t d = 0;
  std::size_t row_stride = 0;
  std::size_t batch_stride = 0;
  std::size_t head_stride = 0;
};
using ConstHeadsView = HeadsView<const float>;

/// A dense [n, h, l, d] tensor (PyTorch's scaled_dot_product_attention layout, ONNX's default)
/// as a HeadsView; sizes in memory order.
template <class T>
HeadsView<T> nhld_view(T* data, std::size_t n, std::size_t h, std::size_t l, std::size_t d) {
  return {data, n, l, h, d, d, h * l * d, l * d};
}

/// An owning row-major [n, l, e] float tensor: the convenient result of forward().
class Tensor {
 public:
  /// Shape [0, 0, 0], no data.
  Tensor() = default;
  /// Zero-filled. Throws std::invalid_argument if n * l * e overflows.
  Tensor(std::size_t n, std::size_t l, std::size_t e);
  /// Takes `data`; throws std::invalid_argument unless data.size() == n * l * e.
  Tensor(std::size_t n, std::size_t l, std::size_t e, std::vector<float> data);
  /// Standard normal entries from a deterministic generator seeded with `seed`.
  static Tensor randn(std::size_t n, std::size_t l, std::size_t e, std::uint64_t seed);
  Tensor(const Tensor&) = default;
  Tensor& operator=(const Tensor&) = default;
  /// Moving leaves `other` as Tensor(): shape [0, 0, 0], no data.
  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;

  std::size_t n() const noexcept { return n_; }
  std::size_t l() const noexcept { return l_; }
  std::size_t e() const noexcept { return e_; }
  std::size_t size() const noexcept { return data_.size(); }
  float* data() noexcept { return data_.data(); }
  const float* data() const noexcept { return data_.data(); }
  const std::vector<float>& values() const noexcept { return data_; }
  /// Element [b, i, k]; throws std::out_of_range naming the index and the shape if it is
  /// outside, as std::vector::at does. data() is the unchecked access.
  float& at(std::size_t b, std::size_t i, std::size_t k) { return data_[offset(b, i, k)]; }
  float at(std::size_t b, std::size_t i, std::size_t k) const { return data_[offset(b, i, k)]; }
  /// "[n, l, e]", as PyTorch prints a shape.
  std::string shape_string() const;

  TensorView<float> view() noexcept { return {data_.data(), n_, l_, e_}; }
  ConstTensorView view() const noexcept { return {data_.data(), n_, l_, e_}; }
  operator ConstTensorView() const noexcept { return view(); }  // NOLINT: implicit on purpose

 private:
  std::size_t offset(std::size_t b, std::size_t i, std::size_t k) const {
    if (b >= n_ || i >= l_ || k >= e_) out_of_range(b, i, k);
    return (b * l_ + i) * e_ + k;
  }
  [[noreturn]] void out_of_range(std::size_t b, std::size_t i, std::size_t k) const;

  std::size_t n_ = 0;
  std::size_t l_ = 0;
  std::size_t e_ = 0;
  std::vector<float> data_;
};

}  // namespace simdattn
