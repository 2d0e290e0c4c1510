// MultiHeadAttention: parameters, their packed copies, validation and the forward driver.
#include "simdattn/multi_head_attention.hpp"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <utility>

#include "driver.hpp"
#include "kernels/gemm/pack.hpp"
#include "random.hpp"
#include "validate.hpp"

namespace simdattn {
namespace {

constexpr int kNumProjections = 4;

int index_of(Projection p) {
  switch (p) {
    case Projection::query:
      return 0;
    case Projection::key:
      return 1;
    case Projection::value:
      return 2;
    case Projection::output:
      return 3;
  }
  detail::fail("MultiHeadAttention",
               "unknown Projection value " + std::to_string(static_cast<int>(p)));
}

const char* name_of(Projection p) {
  static const char* names[] = {"query", "key", "value", "output"};
  return names[index_of(p)];
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

// A packed weight with its own 64-byte aligned storage.
struct OwnedPacked {
  std::unique_ptr<float, FreeDeleter> storage;
  detail::PackedWeight view;
};

// Packs the rows of several [E, E] weights stacked on top of each other ([parts * E, E]).
OwnedPacked pack_stacked(std::initializer_list<const std::vector<float>*> parts, std::size_t e) {
  const std::size_t out = parts.size() * e;
  std::vector<float> stacked;
  const float* src = parts.begin()[0]->data();
  if (parts.size() > 1) {
    stacked.reserve(out * e);
    for (const auto* w : parts) stacked.insert(stacked.end(), w->begin(), w->end());
    src = stacked.data();
  }
  const std::size_t floats = kernels::packed_weight_floats(out, e);
  const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
  OwnedPacked p;
  p.storage.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
  if (!p.storage) throw std::bad_alloc();
  kernels::pack_weight(src, out, e, e, p.storage.get());
  p.view = {e, out, p.storage.get()};
  return p;
}

}  // namespace

struct MultiHeadAttention::Impl {
  std::size_t e = 0;
  std::size_t heads = 0;
  std::vector<float> weight[kNumProjections];
  std::vector<float> bias[kNumProjections];  // empty for an absent Q/K/V bias

  // Derived from the above, never set directly.
  OwnedPacked packed[kNumProjections];
  OwnedPacked packed_qkv;       // [3E, E]: self-attention's one GEMM
  OwnedPacked packed_kv;        // [2E, E]: keys and values from the same buffer
  std::vector<float> bias_qkv;  // [3E], empty when no Q/K/V projection has a bias
  std::vector<float> bias_kv;   // [2E], likewise for K/V

  void repack() {
    for (int i = 0; i < kNumProjections; ++i) packed[i] = pack_stacked({&weight[i]}, e);
    packed_qkv = pack_stacked({&weight[0], &weight[1], &weight[2]}, e);
    packed_kv = pack_stacked({&weight[1], &weight[2]}, e);
    bias_qkv = concat_biases(bias, {0, 1, 2});
    bias_kv = concat_biases(bias, {1, 2});
  }

  // Replaces weight i and the packed copies that contain it. Everything that can throw
  // (allocation) happens before the first change, so a failure leaves the module as it was.
  void replace_weight(int i, std::vector<float> w) {
    auto pick = [&](int j) { return j == i ? &w : &weight[j]; };
    OwnedPacked single = pack_stacked({&w}, e);
    OwnedPacked qkv, kv;
    if (i < 3) qkv = pack_stacked({pick(0), pick(1), pick(2)}, e);
    if (i == 1 || i == 2) kv = pack_stacked({pick(1), pick(2)}, e);
    weight[i] = std::move(w);
    packed[i] = std::move(single);
    if (i < 3) packed_qkv = std::move(qkv);
    if (i == 1 || i == 2) packed_kv = std::move(kv);
  }

  // Replaces bias i (empty: none) with the same guarantee.
  void replace_bias(int i, std::vector<float> b) {
    std::vector<float> next[kNumProjections];
    for (int j = 0; j < kNumProjections; ++j) next[j] = j == i ? std::move(b) : bias[j];
    std::vector<float> qkv = concat_biases(next, {0, 1, 2});
    std::vector<float> kv = concat_biases(next, {1, 2});
    for (int j = 0; j < kNumProjections; ++j) bias[j].swap(next[j]);
    bias_qkv.swap(qkv);
    bias_kv.swap(kv);
  }

  // The biases of projections `idx` end to end (zeros for an absent one), or empty if none of
  // them has a bias.
  std::vector<float> concat_biases(const std::vector<float> (&b)[kNumProjections],
                                   std::initializer_list<int> idx) const {
    bool any = false;
    for (int i : idx) any = any || !b[i].empty();
    std::vector<float> out;
    if (!any) return out;
    for (int i : idx) {
      if (b[i].empty()) {
        out.insert(out.end(), e, 0.0f);
      } else {
        out.insert(out.end(), b[i].begin(), b[i].end());
      }
    }
    return out;
  }

  Impl clone() const {
    Impl c;
    c.e = e;
    c.heads = heads;
    for (int i = 0; i < kNumProjections; ++i) {
      c.weight[i] = weight[i];
      c.bias[i] = bias[i];
    }
    c.repack();
    return c;
  }
};

MultiHeadAttention::MultiHeadAttention(std::size_t embed_size, std::size_t heads,
                                       std::uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
  const char* where = "MultiHeadAttention";
  if (embed_size == 0) detail::fail(where, "embed_size must be > 0, got 0");
  if (heads == 0) detail::fail(where, "heads must be > 0, got 0");
  if (embed_size % heads != 0) {
    detail::fail(where, "embed_size (" + std::to_string(embed_size) +
                            ") must be divisible by heads (" + std::to_string(heads) + ")");
  }
  detail::checked_mul(where, "embed_size * embed_size * 3", embed_size, embed_size, 3);
  impl_->e = embed_size;
  impl_->heads = heads;
  reset_parameters(seed);
}

MultiHeadAttention::~MultiHeadAttention() = default;
MultiHeadAttention::MultiHeadAttention(MultiHeadAttention&&) noexcept = default;
MultiHeadAttention& MultiHeadAttention::operator=(MultiHeadAttention&&) noexcept = default;

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttention& other)
    : impl_(std::make_unique<Impl>(other.impl_->clone())) {}

MultiHeadAttention& MultiHeadAttention::operator=(const MultiHeadAttention& other) {
  if (this != &other) impl_ = std::make_unique<Impl>(other.impl_->clone());
  return *this;
}

std::size_t MultiHeadAttention::embed_size() const noexcept {
  return impl_->e;
}
std::size_t MultiHeadAttention::heads() const noexcept {
  return impl_->heads;
}
std::size_t MultiHeadAttention::head_dim() const noexcept {
  return impl_->e / impl_->heads;
}

void MultiHeadAttention::reset_parameters(std::uint64_t seed) {
  // nn.Linear's default: kaiming_uniform(a = sqrt(5)) for weights, which is U(-b, b) with
  // b = 1/sqrt(in_features), and the same bound for the bias.
  const std::size_t e = impl_->e;
  const double bound = 1.0 / std::sqrt(static_cast<double>(e));
  detail::Random rng(seed);
  for (int i = 0; i < kNumProjections; ++i) {
    impl_->weight[i].resize(e * e);
    for (float& w : impl_->weight[i]) w = static_cast<float>(rng.uniform(-bound, bound));
    impl_->bias[i].clear();
  }
  impl_->bias[3].resize(e);
  for (float& b : impl_->bias[3]) b = static_cast<float>(rng.uniform(-bound, bound));
  impl_->repack();
}

void MultiHeadAttention::set_weight(Projection p, const float* data, std::size_t count) {
  const int i = index_of(p);
  const std::size_t e = impl_->e;
  if (data == nullptr) detail::fail("set_weight", std::string(name_of(p)) + " weight is null");
  if (count != e * e) {
    detail::fail("set_weight", std::string(name_of(p)) + " weight has " + std::to_string(count) +
                                   " elements, [E, E] = [" + std::to_string(e) + ", " +
                                   std::to_string(e) + "] needs " + std::to_string(e * e));
  }
  impl_->replace_weight(i, std::vector<float>(data, data + count));
}

const std::vector<float>& MultiHeadAttention::weight(Projection p) const {
  return impl_->weight[index_of(p)];
}

void MultiHeadAttention::set_bias(Projection p, const float* data, std::size_t count) {
  const int i = index_of(p);
  const std::size_t e = impl_->e;
  if (data == nullptr) detail::fail("set_bias", std::string(name_of(p)) + " bias is null");
  if (count != e) {
    detail::fail("set_bias", std::string(name_of(p)) + " bias has " + std::to_string(count) +
                                 " elements, [E] = [" + std::to_string(e) + "] needs " +
                                 std::to_string(e));
  }
  impl_->replace_bias(i, std::vector<float>(data, data + count));
}

void MultiHeadAttention::clear_bias(Projection p) {
  const int i = index_of(p);
  impl_->replace_bias(
      i, p == Projection::output ? std::vector<float>(impl_->e, 0.0f) : std::vector<float>());
}

bool MultiHeadAttention::has_bias(Projection p) const {
  return !impl_->bias[index_of(p)].empty();
}

const std::vector<float>& MultiHeadAttention::bias(Projection p) const {
  return impl_->bias[index_of(p)];
}

namespace {

void check_tensor(const char* where, const char* name, const ConstTensorView& t, std::size_t e) {
  if (t.data == nullptr) detail::fail(where, std::string(name) + ".data is null");
  if (t.n == 0 || t.l == 0 || t.e == 0) {
    detail::fail(where,
                 std::string(name) + " has a zero size: " + detail::shape_string(t.n, t.l, t.e));
  }
  if (t.e != e) {
    detail::fail(where, std::string(name) + " has embedding size " + std::to_string(t.e) +
                            " (shape " + detail::shape_string(t.n, t.l, t.e) +
                            "), the module has embed_size " + std::to_string(e));
  }
  detail::checked_mul(where, name, t.n, t.l, t.e);
}

std::size_t bytes_of(const ConstTensorView& t) {
  return t.n * t.l * t.e * sizeof(float);
}

}  // namespace

void MultiHeadAttention::forward(const ConstTensorView& values, const ConstTensorView& keys,
                                 const ConstTensorView& query, const Mask& mask,
                                 const TensorView<float>& out, const Options& options) const {
  const char* where = "MultiHeadAttention::forward";
  const Impl& m = *impl_;
  const std::size_t e = m.e;
  check_tensor(where, "values", values, e);
  check_tensor(where, "keys", keys, e);
  check_tensor(where, "query", query, e);
  const ConstTensorView out_c{out.data, out.n, out.l, out.e};
  check_tensor(where, "out", out_c, e);
  if (keys.n != values.n || keys.l != values.l) {
    detail::fail(where, "keys " + detail::shape_string(keys.n, keys.l, keys.e) + " and values " +
                            detail::shape_string(values.n, values.l, values.e) +
                            " must have the same shape");
  }
  if (query.n != keys.n) {
    detail::fail(where, "batch sizes differ: query has N = " + std::to_string(query.n) +
                            ", keys and values have N = " + std::to_string(keys.n));
  }
  if (out.n != query.n || out.l != query.l) {
    detail::fail(where, "out has shape " + detail::shape_string(out.n, out.l, out.e) +
                            ", the query needs " + detail::shape_string(query.n, query.l, e));
  }
  const std::size_t n = query.n, lq = query.l, lk = keys.l, heads = m.heads, d = e / heads;
  detail::check_mask(where, mask, n, heads, lq, lk);
  const float scale = detail::resolve_scale(where, options, d);
  const int threads = detail::resolve_threads(where, options);
  const std::size_t out_bytes = bytes_of(out_c);
  for (const ConstTensorView* in : {&values, &keys, &query}) {
    if (detail::overlaps(out.data, out_bytes, in->data, bytes_of(*in))) {
      detail::fail(where,
                   "out overlaps an input (values, keys or query): in-place forward is "
                   "not supported");
    }
  }
  if (mask.data != nullptr &&
      detail::overlaps(out.data, out_bytes, mask.data, mask.n * mask.h * mask.lq * mask.lk)) {
    detail::fail(where, "out overlaps the mask");
  }
  const detail::MaskRule rule{mask, options.causal, lq, lk};

  // Scratch: projected Q, K, V and the heads' concatenated output, reused call after call.
  const std::size_t q_size = n * lq * e, kv_size = n * lk * e;
  // The scratch holds at most 4 activations. Shapes whose own byte counts fit can still make
  // that count overflow: an error before any allocation, never a wrapped-around small buffer
  // (both paths crashed on such shapes). The factor 2 leaves room for thread_scratch's rounding.
  if (std::max(q_size, kv_size) >
      std::numeric_limits<std::size_t>::max() / (4 * 2 * sizeof(float))) {
    detail::fail(where, "the scratch of 4 activations of " +
                            std::to_string(std::max(q_size, kv_size)) + " floats overflows size_t");
  }
  const bool self = values.data == keys.data && keys.data == query.data && lq == lk;
  const bool shared_kv = !self && values.data == keys.data;

  if (options.path == Path::naive) {
    float* scratch = detail::thread_scratch(2, 2 * q_size + 2 * kv_size);
    reference::linear<float>(values.data, n * lk, e, m.weight[2].data(), e,
                             m.bias[2].empty() ? nullptr : m.bias[2].data(), scratch);
    reference::linear<float>(keys.data, n * lk, e, m.weight[1].data(), e,
                             m.bias[1].empty() ? nullptr : m.bias[1].data(), scratch + kv_size);
    reference::linear<float>(query.data, n * lq, e, m.weight[0].data(), e,
                             m.bias[0].empty() ? nullptr : m.bias[0].data(), scratch + 2 * kv_size);
    float* attn = scratch + 2 * kv_size + q_size;
    const reference::Heads<const float> vh{scratch, n, lk, heads, d, e, lk * e};
    const reference::Heads<const float> kh{scratch + kv_size, n, lk, heads, d, e, lk * e};
    const reference::Heads<const float> qh{scratch + 2 * kv_size, n, lq, heads, d, e, lq * e};
    const reference::Heads<float> oh{attn, n, lq, heads, d, e, lq * e};
    reference::attention<float>(qh, kh, vh, oh, rule, scale, options.masked_rows);
    reference::linear<float>(attn, n * lq, e, m.weight[3].data(), e, m.bias[3].data(), out.data);
    return;
  }

  auto bias_or_null = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
  float* scratch = detail::thread_scratch(2, 3 * std::max(q_size, kv_size) + q_size);
  reference::Heads<const float> qh, kh, vh;
  bool ok = true;
  if (self) {
    // One GEMM against [Wq; Wk; Wv]: each row of x is read once for all three projections.
    ok = detail::run_linear(query.data, n * lq, m.packed_qkv.view, bias_or_null(m.bias_qkv),
                            scratch, 3 * e, threads);
    qh = {scratch, n, lq, heads, d, 3 * e, lq * 3 * e};
    kh = {scratch + e, n, lk, heads, d, 3 * e, lk * 3 * e};
    vh = {scratch + 2 * e, n, lk, heads, d, 3 * e, lk * 3 * e};
  } else {
    float* kv = scratch + q_size;
    ok = detail::run_linear(query.data, n * lq, m.packed[0].view, bias_or_null(m.bias[0]), scratch,
                            e, threads);
    if (shared_kv) {
      ok = ok && detail::run_linear(keys.data, n * lk, m.packed_kv.view, bias_or_null(m.bias_kv),
                                    kv, 2 * e, threads);
      kh = {kv, n, lk, heads, d, 2 * e, lk * 2 * e};
      vh = {kv + e, n, lk, heads, d, 2 * e, lk * 2 * e};
    } else {
      ok = ok && detail::run_linear(keys.data, n * lk, m.packed[1].view, bias_or_null(m.bias[1]),
                                    kv, e, threads);
      ok = ok && detail::run_linear(values.data, n * lk, m.packed[2].view, bias_or_null(m.bias[2]),
                                    kv + kv_size, e, threads);
      kh = {kv, n, lk, heads, d, e, lk * e};
      vh = {kv + kv_size, n, lk, heads, d, e, lk * e};
    }
    qh = {scratch, n, lq, heads, d, e, lq * e};
  }
  if (!ok) {  // no optimized kernels in this build or SIMDATTN_ISA=naive
    Options naive = options;
    naive.path = Path::naive;
    forward(values, keys, query, mask, out, naive);
    return;
  }
  float* attn = scratch + 3 * std::max(q_size, kv_size);
  const reference::Heads<float> oh{attn, n, lq, heads, d, e, lq * e};
  detail::run_attention(qh, kh, vh, oh, rule, scale, options.masked_rows, Path::optimized, threads);
  detail::run_linear(attn, n * lq, m.packed[3].view, m.bias[3].data(), out.data, e, threads);
}

Tensor MultiHeadAttention::forward(const ConstTensorView& values, const ConstTensorView& keys,
                                   const ConstTensorView& query, const Mask& mask,
                                   const Options& options) const {
  // Validate the query before sizing the result from it: a wrong shape must be reported as
  // such, not as a failed allocation.
  check_tensor("MultiHeadAttention::forward", "query", query, impl_->e);
  Tensor out(query.n, query.l, impl_->e);
  forward(values, keys, query, mask, out.view(), options);
  return out;
}

}  // namespace simdattn
