// MultiHeadAttention: parameters, their packed copies, validation and the forward driver.
#include "simdattn/multi_head_attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "driver/attention.hpp"
#include "driver/linear.hpp"
#include "driver/scratch.hpp"
#include "isa/registry.hpp"
#include "kernels/gemm/pack.hpp"
#include "module_impl.hpp"
#include "module_layout.hpp"
#include "random.hpp"
#include "reference/reference.hpp"
#include "validate.hpp"

namespace simdattn {
namespace detail {

int projection_index(const char* where, Projection p) {
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
  fail(where, "unknown Projection value " + std::to_string(static_cast<int>(p)));
}

const char* projection_name(Projection p) {
  static const char* names[] = {"query", "key", "value", "output"};
  return names[projection_index("MultiHeadAttention", p)];
}

namespace {

// Packs the rows of several [out_i, E] weights stacked on top of each other. Parts of whole
// panels (all but the last) are packed in place one after the other, the same panels as the
// stacked rows give, without a copy of the stack (12 MiB at E = 1024).
OwnedPacked pack_stacked(std::initializer_list<const std::vector<float>*> parts, std::size_t e) {
  std::size_t out = 0;
  bool whole_panels = true;
  for (const auto* w : parts) {
    whole_panels = whole_panels && out % kernels::kPanel == 0;
    out += w->size() / e;
  }
  OwnedPacked p;
  p.storage = AlignedBuffer(kernels::packed_weight_floats(out, e));
  p.view = {e, out, p.storage.data()};
  if (whole_panels) {
    std::size_t row0 = 0;
    for (const auto* w : parts) {
      const std::size_t rows = w->size() / e;
      kernels::pack_weight(w->data(), rows, e, e,
                           p.storage.data() + kernels::packed_weight_floats(row0, e));
      row0 += rows;
    }
    return p;
  }
  std::vector<float> stacked;
  stacked.reserve(out * e);
  for (const auto* w : parts) stacked.insert(stacked.end(), w->begin(), w->end());
  kernels::pack_weight(stacked.data(), out, e, e, p.storage.data());
  return p;
}

// The biases of projections `idx` end to end (zeros for an absent one), or empty if none of
// them has a bias. Projection i has sizes[i] out features.
std::vector<float> concat_biases(const std::vector<float> (&b)[kNumProjections],
                                 const std::size_t (&sizes)[kNumProjections],
                                 std::initializer_list<int> idx) {
  bool any = false;
  for (int i : idx) any = any || !b[i].empty();
  std::vector<float> out;
  if (!any) return out;
  for (int i : idx) {
    if (b[i].empty()) {
      out.insert(out.end(), sizes[i], 0.0f);
    } else {
      out.insert(out.end(), b[i].begin(), b[i].end());
    }
  }
  return out;
}

}  // namespace
}  // namespace detail

bool MultiHeadAttention::Impl::qkv_slices() const {
  return e % kernels::kPanel == 0 && kv_e() % kernels::kPanel == 0;
}

void MultiHeadAttention::Impl::slice_qkv() {
  const float* data = packed_qkv.view.data;
  auto slice = [&](std::size_t row0, std::size_t rows) {
    detail::OwnedPacked p;  // no storage: the rows live in packed_qkv's
    p.view = {e, rows, data + kernels::packed_weight_floats(row0, e)};
    return p;
  };
  packed[0] = slice(0, e);
  packed[1] = slice(e, kv_e());
  packed[2] = slice(e + kv_e(), kv_e());
  packed_kv = slice(e, 2 * kv_e());
}

void MultiHeadAttention::Impl::repack() {
  using detail::pack_stacked;
  // Everything that allocates first, so that a failure leaves no slice pointing at freed rows.
  detail::OwnedPacked qkv = pack_stacked({&weight[0], &weight[1], &weight[2]}, e);
  detail::OwnedPacked out = pack_stacked({&weight[3]}, e);
  detail::OwnedPacked apart[3], kv;
  const bool sliced = qkv_slices();
  if (!sliced) {
    for (int i = 0; i < 3; ++i) apart[i] = pack_stacked({&weight[i]}, e);
    kv = pack_stacked({&weight[1], &weight[2]}, e);
  }
  const std::size_t sizes[] = {e, kv_e(), kv_e(), e};
  std::vector<float> b_qkv = detail::concat_biases(bias, sizes, {0, 1, 2});
  std::vector<float> b_kv = detail::concat_biases(bias, sizes, {1, 2});
  packed_qkv = std::move(qkv);
  packed[3] = std::move(out);
  if (sliced) {
    slice_qkv();
  } else {
    for (int i = 0; i < 3; ++i) packed[i] = std::move(apart[i]);
    packed_kv = std::move(kv);
  }
  bias_qkv.swap(b_qkv);
  bias_kv.swap(b_kv);
}

void MultiHeadAttention::Impl::replace_weight(int i, std::vector<float> w) {
  using detail::pack_stacked;
  auto pick = [&](int j) { return j == i ? &w : &weight[j]; };
  const bool sliced = i < 3 && qkv_slices();
  detail::OwnedPacked single, qkv, kv;
  if (!sliced) single = pack_stacked({&w}, e);
  if (i < 3) qkv = pack_stacked({pick(0), pick(1), pick(2)}, e);
  if (!sliced && (i == 1 || i == 2)) kv = pack_stacked({pick(1), pick(2)}, e);
  weight[i] = std::move(w);
  if (i < 3) packed_qkv = std::move(qkv);
  if (sliced) {
    slice_qkv();  // allocates nothing
    return;
  }
  packed[i] = std::move(single);
  if (i == 1 || i == 2) packed_kv = std::move(kv);
}

void MultiHeadAttention::Impl::replace_bias(int i, std::vector<float> b) {
  std::vector<float> next[detail::kNumProjections];
  for (int j = 0; j < detail::kNumProjections; ++j) next[j] = j == i ? std::move(b) : bias[j];
  const std::size_t sizes[] = {e, kv_e(), kv_e(), e};
  std::vector<float> qkv = detail::concat_biases(next, sizes, {0, 1, 2});
  std::vector<float> kv = detail::concat_biases(next, sizes, {1, 2});
  for (int j = 0; j < detail::kNumProjections; ++j) bias[j].swap(next[j]);
  bias_qkv.swap(qkv);
  bias_kv.swap(kv);
}

// Packs the copy's weights again. Copying the packed panels instead saved 1-2 ms of a copy
// (E = 1024, H = 16, fastest of 9 copies: 2.9-4.7 -> 1.8-2.2 ms) and nothing of its median
// (32-47 ms both ways), which is the first touch of the new 32 MiB's pages.
MultiHeadAttention::Impl MultiHeadAttention::Impl::clone() const {
  Impl c;
  c.e = e;
  c.heads = heads;
  c.kv_heads = kv_heads;
  for (int i = 0; i < detail::kNumProjections; ++i) {
    c.weight[i] = weight[i];
    c.bias[i] = bias[i];
  }
  c.repack();
  return c;
}

MultiHeadAttention::MultiHeadAttention(std::size_t embed_size, std::size_t heads,
                                       std::uint64_t seed)
    : MultiHeadAttention(embed_size, heads, KvHeads{heads}, seed) {}

MultiHeadAttention::MultiHeadAttention(std::size_t embed_size, std::size_t heads, KvHeads kv_heads,
                                       std::uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
  const char* where = "MultiHeadAttention";
  if (embed_size == 0) detail::fail(where, "embed_size must be > 0, got 0");
  if (heads == 0) detail::fail(where, "heads must be > 0, got 0");
  if (embed_size % heads != 0) {
    detail::fail(where, "embed_size (" + std::to_string(embed_size) +
                            ") must be divisible by heads (" + std::to_string(heads) + ")");
  }
  if (kv_heads.value == 0 || heads % kv_heads.value != 0) {
    detail::fail(where, "kv_heads (" + std::to_string(kv_heads.value) +
                            ") must be > 0 and divide heads (" + std::to_string(heads) + ")");
  }
  detail::checked_mul(where, "embed_size * embed_size * 3", embed_size, embed_size, 3);
  impl_->e = embed_size;
  impl_->heads = heads;
  impl_->kv_heads = kv_heads.value;
  reset_parameters(seed);
}

MultiHeadAttention::~MultiHeadAttention() = default;
MultiHeadAttention::MultiHeadAttention(MultiHeadAttention&&) noexcept = default;
MultiHeadAttention& MultiHeadAttention::operator=(MultiHeadAttention&&) noexcept = default;

// A moved-from module (impl_ null) copies as one; its getters read zero (noexcept) and every
// other member function throws (ModuleAccess::impl).
MultiHeadAttention::MultiHeadAttention(const MultiHeadAttention& other)
    : impl_(other.impl_ ? std::make_unique<Impl>(other.impl_->clone()) : nullptr) {}

MultiHeadAttention& MultiHeadAttention::operator=(const MultiHeadAttention& other) {
  if (this != &other) {
    impl_ = other.impl_ ? std::make_unique<Impl>(other.impl_->clone()) : nullptr;
  }
  return *this;
}

std::size_t MultiHeadAttention::embed_size() const noexcept {
  return impl_ ? impl_->e : 0;
}
std::size_t MultiHeadAttention::heads() const noexcept {
  return impl_ ? impl_->heads : 0;
}
std::size_t MultiHeadAttention::head_dim() const noexcept {
  return impl_ ? impl_->e / impl_->heads : 0;
}
std::size_t MultiHeadAttention::kv_heads() const noexcept {
  return impl_ ? impl_->kv_heads : 0;
}

void MultiHeadAttention::reset_parameters(std::uint64_t seed) {
  // nn.Linear's default: kaiming_uniform(a = sqrt(5)) for weights, which is U(-b, b) with
  // b = 1/sqrt(in_features), and the same bound for the bias.
  // Drawn and packed into a new state, which then replaces the module's: a failure (memory)
  // leaves the module as it was, its weights and their packed copies alike.
  Impl& m = detail::ModuleAccess::impl(*this, "MultiHeadAttention::reset_parameters");
  Impl next;
  next.e = m.e;
  next.heads = m.heads;
  next.kv_heads = m.kv_heads;
  const std::size_t e = next.e;
  const double bound = 1.0 / std::sqrt(static_cast<double>(e));
  detail::Random rng(seed);
  for (int i = 0; i < detail::kNumProjections; ++i) {
    next.weight[i].resize(next.out_features(i) * e);
    for (float& w : next.weight[i]) w = static_cast<float>(rng.uniform(-bound, bound));
  }
  next.bias[3].resize(e);
  for (float& b : next.bias[3]) b = static_cast<float>(rng.uniform(-bound, bound));
  next.repack();
  m = std::move(next);
}

void MultiHeadAttention::set_weight(Projection p, const float* data, std::size_t count) {
  const char* where = "MultiHeadAttention::set_weight";
  Impl& m = detail::ModuleAccess::impl(*this, where);
  const int i = detail::projection_index(where, p);
  const std::size_t e = m.e, out = m.out_features(i);
  if (data == nullptr)
    detail::fail(where, std::string(detail::projection_name(p)) + " weight is null");
  if (count != out * e) {
    detail::fail(where, std::string(detail::projection_name(p)) + " weight has " +
                            std::to_string(count) + " elements, [" +
                            (out == e ? "E" : "kv_heads * head_dim") + ", E] = [" +
                            std::to_string(out) + ", " + std::to_string(e) + "] needs " +
                            std::to_string(out * e));
  }
  m.replace_weight(i, std::vector<float>(data, data + count));
}

const std::vector<float>& MultiHeadAttention::weight(Projection p) const {
  const char* where = "MultiHeadAttention::weight";
  return detail::ModuleAccess::impl(*this, where).weight[detail::projection_index(where, p)];
}

void MultiHeadAttention::set_bias(Projection p, const float* data, std::size_t count) {
  const char* where = "MultiHeadAttention::set_bias";
  Impl& m = detail::ModuleAccess::impl(*this, where);
  const int i = detail::projection_index(where, p);
  const std::size_t out = m.out_features(i);
  if (data == nullptr)
    detail::fail(where, std::string(detail::projection_name(p)) + " bias is null");
  if (count != out) {
    detail::fail(where, std::string(detail::projection_name(p)) + " bias has " +
                            std::to_string(count) + " elements, [" +
                            (out == m.e ? "E" : "kv_heads * head_dim") + "] = [" +
                            std::to_string(out) + "] needs " + std::to_string(out));
  }
  m.replace_bias(i, std::vector<float>(data, data + count));
}

void MultiHeadAttention::clear_bias(Projection p) {
  const char* where = "MultiHeadAttention::clear_bias";
  Impl& m = detail::ModuleAccess::impl(*this, where);
  const int i = detail::projection_index(where, p);
  m.replace_bias(i, p == Projection::output ? std::vector<float>(m.e, 0.0f) : std::vector<float>());
}

bool MultiHeadAttention::has_bias(Projection p) const {
  const char* where = "MultiHeadAttention::has_bias";
  return !detail::ModuleAccess::impl(*this, where).bias[detail::projection_index(where, p)].empty();
}

const std::vector<float>& MultiHeadAttention::bias(Projection p) const {
  const char* where = "MultiHeadAttention::bias";
  return detail::ModuleAccess::impl(*this, where).bias[detail::projection_index(where, p)];
}

namespace {

detail::WeightsOut<float> weights_out(const Options& o) {
  return {o.weights.data, o.weights.average_heads};
}

// A validated forward() call.
struct ForwardCall {
  detail::ForwardTensors t;
  std::size_t n, lq, lk, heads, d;
  float scale;
  int threads;
  detail::MaskRule rule;
};

ForwardCall check_forward(const char* where, std::size_t e, std::size_t heads,
                          const ConstTensorView& values, const ConstTensorView& keys,
                          const ConstTensorView& query, const Mask& mask,
                          const TensorView<float>& out, const Options& options) {
  const detail::ForwardTensors t =
      detail::check_forward_tensors(where, e, values, keys, query, out);
  const std::size_t n = query.n, lq = query.l, lk = keys.l, d = e / heads;
  detail::MaskRule rule = detail::resolve_rule(where, mask, options, n, heads, lq, lk);
  const bool weights = detail::check_weights(where, options, n, heads, lq, lk);
  const float scale = detail::resolve_scale(where, options, d);
  const int threads = detail::resolve_threads(where, options);
  detail::check_forward_overlaps(where, t);
  // Byte ranges from each view's first element to its last.
  const std::size_t out_bytes = t.out.extent() * sizeof(float);
  auto bytes = [](const detail::Rows<const float>& r) { return r.extent() * sizeof(float); };
  std::vector<detail::ByteRange> inputs = detail::option_inputs(mask, options, n, lk);
  detail::check_apart(where, {t.out.data, out_bytes, "out"}, inputs);
  if (weights) {
    inputs.push_back({t.values.data, bytes(t.values), "values"});
    inputs.push_back({t.keys.data, bytes(t.keys), "keys"});
    inputs.push_back({t.query.data, bytes(t.query), "query"});
    inputs.push_back({t.out.data, out_bytes, "out"});
    detail::check_apart(
        where, {options.weights.data, options.weights.size * sizeof(float), "options.weights"},
        inputs);
  }
  detail::check_activations_fit(where, n, lq, lk, e);
  return {t, n, lq, lk, heads, d, scale, threads, std::move(rule)};
}

}  // namespace

void MultiHeadAttention::forward(const ConstTensorView& values, const ConstTensorView& keys,
                                 const ConstTensorView& query, const Mask& mask,
                                 const TensorView<float>& out, const Options& options) const {
  using detail::RowOrder;
  const char* where = "MultiHeadAttention::forward";
  const Impl& m = detail::ModuleAccess::impl(*this, where);
  const std::size_t e = m.e;
  const ForwardCall c = check_forward(where, e, m.heads, values, keys, query, mask, out, options);
  const kernels::KernelTable* table = detail::kernels_for(where, options);
  const std::size_t n = c.n, lq = c.lq, lk = c.lk, heads = c.heads, d = c.d;
  const std::size_t q_size = n * lq * e;
  // Copies of inputs in an unusual layout, and the result before it goes to such an out
  // (module_layout.hpp); empty for the dense layouts.
  detail::InputCopies copies;
  std::vector<float> out_copy;
  const bool out_direct = c.t.out.batch_major() || (table != nullptr && c.t.out.sequence_major());
  if (!out_direct) out_copy.resize(q_size);
  float* const result = out_direct ? out.data : out_copy.data();
  const RowOrder out_order =
      c.t.out.sequence_major() && out_direct ? RowOrder::sequence_major : RowOrder::batch_major;

  if (table == nullptr) {
    // The reference reads and writes batch-major buffers.
    const auto& t = c.t;
    const float* v = detail::as_matrix(t.values, copies.values, true).data;
    const float* k =
        t.keys.same_layout(t.values) ? v : detail::as_matrix(t.keys, copies.keys, true).data;
    const float* q = t.query.same_layout(t.values) ? v
                     : t.query.same_layout(t.keys)
                         ? k
                         : detail::as_matrix(t.query, copies.query, true).data;
    using detail::bias_or_null;
    reference::Weights<float> w{m.weight[0].data(),      m.weight[1].data(),
                                m.weight[2].data(),      m.weight[3].data(),
                                bias_or_null(m.bias[0]), bias_or_null(m.bias[1]),
                                bias_or_null(m.bias[2]), m.bias[3].data()};
    w.kv_heads = m.kv_heads;
    float* scratch = detail::thread_scratch(detail::ScratchSlot::activations,
                                            reference::multi_head_attention_scratch(n, lq, lk, e));
    reference::multi_head_attention<float>(v, k, q, n, lk, lq, e, heads, w, c.rule, c.scale,
                                           options.masked_rows, result, scratch,
                                           weights_out(options));
    if (!out_direct) detail::scatter_rows(result, t.out);
    return;
  }

  // Scratch: projected Q, K, V and the heads' concatenated output, reused call after call. Each
  // projection runs on its input's rows in memory order and keeps their layout.
  const std::size_t projected = m.projection_floats(n, lq, lk);
  float* scratch = detail::thread_scratch(detail::ScratchSlot::activations, projected + q_size);
  const detail::ProjectedInputs in = m.project_inputs(table, c.t, scratch, c.threads, copies);
  detail::AttentionProblem p;
  p.q = in.q;
  p.k = in.k;
  p.v = in.v;
  // The heads' output in out's layout, so that the output projection writes out's rows in
  // memory order.
  float* attn = scratch + projected;
  p.out = detail::heads_in<float>(attn, out_order, n, lq, heads, d, e);
  p.rule = c.rule;
  p.scale = c.scale;
  p.policy = options.masked_rows;
  p.weights = weights_out(options);
  detail::run_attention(table, p, c.threads);
  m.project_output(table, attn, n * lq, result, c.threads);
  if (!out_direct) detail::scatter_rows(result, c.t.out);
}

Tensor MultiHeadAttention::forward(const ConstTensorView& values, const ConstTensorView& keys,
                                   const ConstTensorView& query, const Mask& mask,
                                   const Options& options) const {
  // Validate the query before sizing the result from it: a wrong shape must be reported as
  // such, not as a failed allocation.
  const char* where = "MultiHeadAttention::forward";
  const std::size_t e = detail::ModuleAccess::impl(*this, where).e;
  detail::check_tensor(where, "query", query, e);
  Tensor out(query.n, query.l, e);
  forward(values, keys, query, mask, out.view(), options);
  return out;
}

}  // namespace simdattn
