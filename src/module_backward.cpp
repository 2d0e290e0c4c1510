// MultiHeadAttention::backward (simdattn/training.hpp): the module's gradients.
//
// For out = attn Wo^T + bo and each input projection Y = X W^T (+ b):
//     dbo = colsum(dOut)      dWo = dOut^T attn      dAttn = dOut Wo
//     dQ, dK, dV: the attention core's backward (driver/attention_backward.hpp)
//     db = colsum(dY)         dW = dY^T X            dX = dY W
// all on the forward's GEMM, y = x M^T with M packed: dX takes M = W^T, dW takes A = dY^T and
// M = X^T. The transposed copies are O(L x E) against the products' O(L x E^2). The inputs
// that the forward projects with one GEMM (self-attention's [Wq; Wk; Wv], shared keys/values'
// [Wk; Wv]) get one GEMM here too: dX = [dQ dK dV] [Wq; Wk; Wv] is already the sum over the
// three uses of X.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "driver/attention.hpp"
#include "driver/attention_backward.hpp"
#include "driver/linear.hpp"
#include "driver/scratch.hpp"
#include "isa/registry.hpp"
#include "kernels/gemm/pack.hpp"
#include "module_impl.hpp"
#include "reference/backward.hpp"
#include "simdattn/training.hpp"
#include "validate.hpp"

namespace simdattn {

const std::vector<float>& Gradients::weight(Projection p) const {
  return weight_[detail::projection_index("Gradients::weight", p)];
}

const std::vector<float>& Gradients::bias(Projection p) const {
  return bias_[detail::projection_index("Gradients::bias", p)];
}

namespace {

std::size_t round16(std::size_t x) {
  return (x + 15) / 16 * 16;
}

// dst[c][r] = src[r][c] for r < rows, c < cols (src rows lds floats apart, dst rows ldd), in
// 32 x 32 blocks so that both sides touch whole cache lines.
void transpose(const float* src, std::size_t rows, std::size_t cols, std::size_t lds, float* dst,
               std::size_t ldd) {
  constexpr std::size_t kB = 32;
  for (std::size_t r0 = 0; r0 < rows; r0 += kB) {
    const std::size_t r1 = std::min(rows, r0 + kB);
    for (std::size_t c0 = 0; c0 < cols; c0 += kB) {
      const std::size_t c1 = std::min(cols, c0 + kB);
      for (std::size_t c = c0; c < c1; ++c) {
        for (std::size_t r = r0; r < r1; ++r) dst[c * ldd + r] = src[r * lds + c];
      }
    }
  }
}

// out[c] = sum over r < rows of src[r][c] (rows lds floats apart), rows in order.
void column_sums(const float* src, std::size_t rows, std::size_t cols, std::size_t lds,
                 float* out) {
  std::fill(out, out + cols, 0.0f);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) out[c] += src[r * lds + c];
  }
}

// The buffers of one optimized backward call, carved from one scratch slot.
struct Buffers {
  float* projected;  // the forward's projections, then their gradients' layout twin below
  float* d_projected;
  float* attn;     // the heads' concatenated output [rows_q, E]
  float* d_attn;   // its gradient
  float* lse;      // [N, H, Lq]
  float* xt;       // a transposed operand, [E][rows] or [E][width]
  float* yt;       // a transposed dY, [width][rows]
  float* packed;   // a packed GEMM operand
  float* product;  // a weight gradient block [width][E], or a dX [rows][E]
  float* d_x[3];   // the input gradients of up to three GEMMs, [rows][E] each
};

// Gradient GEMMs for one linear layer group y = x [W_first; ...]^T: x [rows, E], dy [rows,
// width] dense. Writes dW (stacked [width, E]) into b.product, then dX [rows, E] into d_x.
void linear_group_backward(const kernels::KernelTable& table, const float* x, std::size_t rows,
                           std::size_t e, const float* dy, std::size_t width,
                           const std::vector<const std::vector<float>*>& weights, float* d_x,
                           const Buffers& b, int threads) {
  // dW = dY^T X: A = dY^T [width, rows], M = X^T [E, rows].
  transpose(dy, rows, width, width, b.yt, rows);
  transpose(x, rows, e, e, b.xt, rows);
  kernels::pack_weight(b.xt, e, rows, rows, b.packed);
  detail::run_linear(table, b.yt, width, detail::PackedWeight{rows, e, b.packed}, nullptr,
                     b.product, e, threads);
  if (d_x == nullptr) return;
  // dX = dY W: M = W^T [E, width], the stacked weights transposed.
  std::size_t row = 0;
  for (const std::vector<float>* w : weights) {
    const std::size_t out = w->size() / e;
    transpose(w->data(), out, e, e, b.xt + row, width);
    row += out;
  }
  kernels::pack_weight(b.xt, e, width, width, b.packed);
  detail::run_linear(table, dy, rows, detail::PackedWeight{width, e, b.packed}, nullptr, d_x, e,
                     threads);
}

void shape_tensor(Tensor& t, std::size_t n, std::size_t l, std::size_t e) {
  if (t.n() != n || t.l() != l || t.e() != e) t = Tensor(n, l, e);
}

bool same_tensor(const detail::Rows<const float>& a, const detail::Rows<const float>& b) {
  return a.same_layout(b);
}

}  // namespace

void MultiHeadAttention::backward(const ConstTensorView& values, const ConstTensorView& keys,
                                  const ConstTensorView& query, const ConstTensorView& d_out,
                                  Gradients& grads, const Mask& mask,
                                  const Options& options) const {
  const char* where = "MultiHeadAttention::backward";
  const Impl& m = detail::ModuleAccess::impl(*this, where);
  const std::size_t e = m.e;
  detail::check_backward_options(where, options);
  const detail::Rows<const float> go = detail::check_tensor(where, "d_out", d_out, e);
  if (d_out.n != query.n || d_out.l != query.l) {
    detail::fail(where, "d_out has shape " + detail::shape_string(d_out.n, d_out.l, d_out.e) +
                            ", the output is " + detail::shape_string(query.n, query.l, e));
  }
  // d_out stands in for forward()'s out in the shape checks (its own name checked above).
  const TensorView<float> out_shape{const_cast<float*>(d_out.data),
                                    d_out.n,
                                    d_out.l,
                                    d_out.e,
                                    d_out.row_stride,
                                    d_out.batch_stride};
  const detail::ForwardTensors t =
      detail::check_forward_tensors(where, e, values, keys, query, out_shape);
  const std::pair<const char*, const detail::Rows<const float>*> dense[] = {
      {"values", &t.values}, {"keys", &t.keys}, {"query", &t.query}, {"d_out", &go}};
  for (const auto& [name, x] : dense) {
    if (!x->batch_major()) {
      detail::fail(where, std::string("the backward pass takes dense [N, L, E] tensors (row_stride "
                                      "E, batch_stride L x E); ") +
                              name + " has row_stride " + std::to_string(x->row_stride) +
                              " and batch_stride " + std::to_string(x->batch_stride) +
                              " with [L, E] = [" + std::to_string(x->l) + ", " +
                              std::to_string(x->e) + "]: pass a copy");
    }
  }
  const std::size_t n = t.query.n, lq = t.query.l, lk = t.keys.l, heads = m.heads;
  const std::size_t d = e / heads;
  detail::check_activations_fit(where, n, lq, lk, e);
  struct {
    detail::MaskRule rule;
    float scale;
    int threads;
  } c{detail::resolve_rule(where, mask, options, n, heads, lq, lk),
      detail::resolve_scale(where, options, d), detail::resolve_threads(where, options)};
  // The gradients are (re)allocated below: an argument inside them would be freed or written.
  for (const Tensor* t : {&grads.values, &grads.keys, &grads.query}) {
    for (const ConstTensorView* in : {&values, &keys, &query, &d_out}) {
      if (detail::overlaps(t->data(), t->size() * sizeof(float), in->data,
                           in->n * in->l * in->e * sizeof(float))) {
        detail::fail(where,
                     "an argument lies inside grads' tensors (which are reallocated and "
                     "overwritten): pass a copy");
      }
    }
  }
  const kernels::KernelTable* table = detail::kernels_for(where, options);
  const std::size_t rows_q = n * lq, rows_k = n * lk;
  for (int i = 0; i < detail::kNumProjections; ++i) {
    grads.weight_[i].resize(m.out_features(i) * e);
    grads.bias_[i].resize(m.bias[i].empty() ? 0 : m.out_features(i));
  }
  auto bias_grad = [&](int i) { return grads.bias_[i].empty() ? nullptr : grads.bias_[i].data(); };
  // The input gradient of each use (query, keys, values), and which argument is which tensor.
  const detail::Rows<const float>* args[3] = {&t.query, &t.keys, &t.values};
  std::vector<float> d_use[3];             // naive path only
  const float* d_arg[3] = {};              // the gradient of use i as computed, [rows, E]
  bool summed[3] = {false, false, false};  // d_arg[i] already sums the uses sharing its tensor

  if (table == nullptr) {
    using detail::bias_or_null;
    const reference::Weights<float> w{
        m.weight[0].data(),      m.weight[1].data(),      m.weight[2].data(),
        m.weight[3].data(),      bias_or_null(m.bias[0]), bias_or_null(m.bias[1]),
        bias_or_null(m.bias[2]), m.bias[3].data(),        m.kv_heads};
    d_use[0].resize(rows_q * e);
    d_use[1].resize(rows_k * e);
    d_use[2].resize(rows_k * e);
    reference::multi_head_attention_backward<float>(
        values.data, keys.data, query.data, n, lk, lq, e, heads, w, c.rule, c.scale,
        options.masked_rows, d_out.data, d_use[2].data(), d_use[1].data(), d_use[0].data(),
        reference::WeightGradients<float>{grads.weight_[0].data(), grads.weight_[1].data(),
                                          grads.weight_[2].data(), grads.weight_[3].data(),
                                          bias_grad(0), bias_grad(1), bias_grad(2), bias_grad(3)});
    for (int i = 0; i < 3; ++i) d_arg[i] = d_use[i].data();
  } else {
    const std::size_t rows = std::max(rows_q, rows_k);
    const std::size_t projected = m.projection_floats(n, lq, lk);
    // The widest dY: self-attention's [dQ dK dV] (K and V narrower with grouped heads).
    const std::size_t width = 3 * e;
    const std::size_t packed =
        std::max(kernels::packed_weight_floats(e, rows), kernels::packed_weight_floats(e, width));
    const std::size_t sizes[] = {
        projected,    projected, rows_q * e, rows_q * e, n * heads * lq, e * std::max(rows, width),
        width * rows, packed,    width * e,  rows * e,   rows * e,       rows * e};
    std::size_t total = 0;
    for (std::size_t s : sizes) total += round16(s);
    float* at = detail::thread_scratch(detail::ScratchSlot::gradients, total);
    float* parts[12];
    for (int i = 0; i < 12; ++i) {
      parts[i] = at;
      at += round16(sizes[i]);
    }
    const Buffers b{parts[0], parts[1], parts[2], parts[3], parts[4],
                    parts[5], parts[6], parts[7], parts[8], {parts[9], parts[10], parts[11]}};

    // The forward again, keeping the projections, the heads' output and the row log-sum-exp.
    detail::InputCopies copies;  // stays empty: the inputs are dense
    const detail::ProjectedInputs in = m.project_inputs(table, t, b.projected, c.threads, copies);
    detail::AttentionProblem f;
    f.q = in.q;
    f.k = in.k;
    f.v = in.v;
    f.out = {b.attn, n, lq, heads, d, e, lq * e};
    f.rule = c.rule;
    f.scale = c.scale;
    f.policy = options.masked_rows;
    f.lse = b.lse;
    detail::run_attention(table, f, c.threads);

    // The output projection.
    column_sums(d_out.data, rows_q, e, e, grads.bias_[3].data());
    linear_group_backward(*table, b.attn, rows_q, e, d_out.data, e, {&m.weight[3]}, b.d_attn, b,
                          c.threads);
    std::copy(b.product, b.product + e * e, grads.weight_[3].data());

    // The core, its gradients laid out as the forward's Q, K, V.
    detail::BackwardProblem p;
    p.q = f.q;
    p.k = f.k;
    p.v = f.v;
    p.out = {f.out.data, n, lq, heads, d, e, lq * e};
    p.d_out = {b.d_attn, n, lq, heads, d, e, lq * e};
    p.lse = b.lse;
    auto twin = [&](const detail::Heads<const float>& h) {
      detail::Heads<float> g{b.d_projected + (h.data - b.projected), h.n, h.l, h.h, h.d};
      g.row_stride = h.row_stride;
      g.batch_stride = h.batch_stride;
      return g;
    };
    p.d_q = twin(f.q);
    p.d_k = twin(f.k);
    p.d_v = twin(f.v);
    p.rule = c.rule;
    p.scale = c.scale;
    p.policy = options.masked_rows;
    detail::run_attention_backward(table, p, c.threads);

    // The input projections, grouped as the forward's GEMMs: (first use, uses, dY).
    struct Group {
      int first, count;
      const float* dy;
    };
    std::vector<Group> groups;
    if (t.values.same_layout(t.keys) && t.keys.same_layout(t.query)) {
      groups.push_back({0, 3, p.d_q.data});  // self-attention: one GEMM for the three
    } else if (t.values.same_layout(t.keys)) {
      groups.push_back({0, 1, p.d_q.data});
      groups.push_back({1, 2, p.d_k.data});  // keys = values: one GEMM for both
    } else {
      groups.push_back({0, 1, p.d_q.data});
      groups.push_back({1, 1, p.d_k.data});
      groups.push_back({2, 1, p.d_v.data});
    }
    for (std::size_t gi = 0; gi < groups.size(); ++gi) {
      const Group& g = groups[gi];
      const detail::Rows<const float>& x = *args[g.first];
      const std::size_t x_rows = x.n * x.l;
      std::size_t gw = 0;  // dY's width: the group's out features side by side
      std::vector<const std::vector<float>*> w;
      for (int j = g.first; j < g.first + g.count; ++j) {
        w.push_back(&m.weight[j]);
        gw += m.out_features(j);
      }
      linear_group_backward(*table, x.data, x_rows, e, g.dy, gw, w, b.d_x[gi], b, c.threads);
      std::size_t col = 0;  // projection j's first column of dY (and row of the stacked dW)
      for (int j = g.first; j < g.first + g.count; ++j) {
        const std::size_t out = m.out_features(j);
        std::copy(b.product + col * e, b.product + (col + out) * e, grads.weight_[j].data());
        if (!grads.bias_[j].empty()) {
          column_sums(g.dy + col, x_rows, out, gw, grads.bias_[j].data());
        }
        d_arg[j] = b.d_x[gi];
        summed[j] = g.count > 1;
        col += out;
      }
    }
  }

  // Each argument's gradient: the sum over the uses of its tensor, in use order. Uses that a
  // fused GEMM already summed are added once.
  Tensor* fields[3] = {&grads.query, &grads.keys, &grads.values};
  for (int a = 0; a < 3; ++a) {
    const detail::Rows<const float>& x = *args[a];
    shape_tensor(*fields[a], x.n, x.l, e);
    float* to = fields[a]->data();
    const std::size_t count = x.n * x.l * e;
    bool first = true;
    for (int u = 0; u < 3; ++u) {
      if (!same_tensor(*args[u], x)) continue;
      if (u > 0 && summed[u] && d_arg[u] == d_arg[u - 1]) continue;  // part of the same GEMM
      const float* from = d_arg[u];
      if (first) {
        std::copy(from, from + count, to);
      } else {
        for (std::size_t i = 0; i < count; ++i) to[i] += from[i];
      }
      first = false;
    }
  }
}

}  // namespace simdattn
