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
/// optimized kernels, compiled per ISA into the same binary and picked at run time (see
/// dispatch.hpp): avx512, avx2, sse2.
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

/// Per-call options. Defaults: scale 1/sqrt(head_dim), no causal mask, the tutorial's uniform
/// policy for fully masked rows, the optimized path, OpenMP's default thread count.
struct Options {
  /// Multiplies Q K^T. Unset: 1/sqrt(head_dim), as in the equation and in PyTorch.
  /// The tutorial's code divides by sqrt(embed_size): use `tutorial_scale(embed_size)`.
  /// Must be finite and > 0.
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
};

/// The largest Options::threads accepted. OpenMP runtimes crash or abort the process when asked
/// for a team of ~10^5 threads; 1024 is above the hardware threads of today's largest CPUs.
inline constexpr int kMaxThreads = 1024;

/// The tutorial's scale, 1/sqrt(embed_size).
float tutorial_scale(std::size_t embed_size);

/// A row-major [n, l, e] float tensor in the caller's memory (no ownership, no strides).
template <class T>
struct TensorView {
  T* data = nullptr;
  std::size_t n = 0;
  std::size_t l = 0;
  std::size_t e = 0;
};
using ConstTensorView = TensorView<const float>;

/// An [n, l, h, d] view of attention heads: element (b, i, j, k) is at
/// data[b * batch_stride + i * row_stride + j * d + k]. A zero stride means dense
/// (row_stride = h * d, batch_stride = l * row_stride), so the heads of an [N, L, E] buffer
/// are used in place with the defaults, and a larger row_stride selects a slice of a wider row.
template <class T>
struct HeadsView {
  T* data = nullptr;
  std::size_t n = 0;
  std::size_t l = 0;
  std::size_t h = 0;
  std::size_t d = 0;
  std::size_t row_stride = 0;
  std::size_t batch_stride = 0;
};
using ConstHeadsView = HeadsView<const float>;

/// An owning row-major [n, l, e] float tensor: the convenient result of forward().
class Tensor {
 public:
  Tensor() = default;
  /// Zero-filled. Throws std::invalid_argument if n * l * e overflows.
  Tensor(std::size_t n, std::size_t l, std::size_t e);
  /// Takes `data`; throws std::invalid_argument unless data.size() == n * l * e.
  Tensor(std::size_t n, std::size_t l, std::size_t e, std::vector<float> data);
  /// Standard normal entries from a deterministic generator seeded with `seed`.
  static Tensor randn(std::size_t n, std::size_t l, std::size_t e, std::uint64_t seed);

  std::size_t n() const noexcept { return n_; }
  std::size_t l() const noexcept { return l_; }
  std::size_t e() const noexcept { return e_; }
  std::size_t size() const noexcept { return data_.size(); }
  float* data() noexcept { return data_.data(); }
  const float* data() const noexcept { return data_.data(); }
  const std::vector<float>& values() const noexcept { return data_; }
  float& at(std::size_t b, std::size_t i, std::size_t k) { return data_[(b * l_ + i) * e_ + k]; }
  float at(std::size_t b, std::size_t i, std::size_t k) const {
    return data_[(b * l_ + i) * e_ + k];
  }
  /// "[n, l, e]", as PyTorch prints a shape.
  std::string shape_string() const;

  TensorView<float> view() noexcept { return {data_.data(), n_, l_, e_}; }
  ConstTensorView view() const noexcept { return {data_.data(), n_, l_, e_}; }
  operator ConstTensorView() const noexcept { return view(); }  // NOLINT: implicit on purpose

 private:
  std::size_t n_ = 0;
  std::size_t l_ = 0;
  std::size_t e_ = 0;
  std::vector<float> data_;
};

}  // namespace simdattn
