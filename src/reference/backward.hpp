// The naive scalar backward pass: the gradients of reference.hpp's attention and module, as plain
// loops that recompute everything from the inputs (no saved statistics), so that they check the
// optimized path's use of the saved log-sum-exp rather than share it.
//
// Templated on the scalar type: double is the tests' oracle (itself checked by finite
// differences in tests/test_backward.cpp), float the naive path. One score row (Lk values) at a
// time, never an Lq x Lk matrix. No SIMD, no threads, no validation.
//
// With S = scale * Q K^T (visible keys only), P = softmax(S), O = P V and dO = dL/dO:
//     dV = P^T dO       dP = dO V^T       D_i = sum_k P_ik dP_ik (= rowsum(dO_i * O_i))
//     dS = P * (dP - D) (elementwise, per row)       dQ = scale dS K       dK = scale dS^T Q
// A masked key gets no gradient through its score (the -1e20 fill is a constant). A query row
// with no visible key has the policy's output: under MaskedRows::uniform that is the plain
// average of V, so every value row receives dO_i / Lk and dQ_i = 0 (what autograd gives for the
// tutorial's module); under MaskedRows::zeros nothing at all.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "reference/reference.hpp"

namespace simdattn::reference {

/// True if key `key` is visible to query row i of (batch b, head hh).
inline bool visible_key(const detail::MaskRule& rule, std::size_t b, std::size_t hh, std::size_t i,
                        std::size_t key) {
  return kernels::key_visible(rule.for_head(b, hh), i, key);
}

/// Gradients of attention() (reference.hpp) for the output gradient d_out ([n, lq, h, d] like the
/// output): overwrites d_q, d_k and d_v. Query head hh reads key/value head hh / (q.h / k.h), so
/// the gradient of a shared key/value head sums over the query heads of its group, in order.
template <class T>
void attention_backward(const Heads<const T>& q, const Heads<const T>& k, const Heads<const T>& v,
                        const Heads<const T>& d_out, const Heads<T>& d_q, const Heads<T>& d_k,
                        const Heads<T>& d_v, const detail::MaskRule& rule, T scale,
                        MaskedRows policy) {
  const std::size_t group = q.h / k.h, d = q.d;
  for (std::size_t b = 0; b < q.n; ++b) {
    for (std::size_t i = 0; i < q.l; ++i) {
      for (std::size_t hh = 0; hh < q.h; ++hh) std::fill(d_q.at(b, i, hh), d_q.at(b, i, hh) + d, 0);
    }
    for (std::size_t key = 0; key < k.l; ++key) {
      for (std::size_t hh = 0; hh < k.h; ++hh) {
        std::fill(d_k.at(b, key, hh), d_k.at(b, key, hh) + d, 0);
        std::fill(d_v.at(b, key, hh), d_v.at(b, key, hh) + d, 0);
      }
    }
  }
  std::vector<T> p(k.l), dp(k.l);
  for (std::size_t b = 0; b < q.n; ++b) {
    for (std::size_t hh = 0; hh < q.h; ++hh) {
      const std::size_t kvh = hh / group;
      for (std::size_t i = 0; i < q.l; ++i) {
        const T* qi = q.at(b, i, hh);
        const T* doi = d_out.at(b, i, hh);
        bool any_visible = false;
        T m = -std::numeric_limits<T>::infinity();
        for (std::size_t key = 0; key < k.l; ++key) {
          if (!visible_key(rule, b, hh, i, key)) continue;
          any_visible = true;
          const T* kk = k.at(b, key, kvh);
          T dot = 0;
          for (std::size_t dd = 0; dd < d; ++dd) dot += qi[dd] * kk[dd];
          p[key] = dot * scale;
          if (p[key] > m || std::isnan(p[key])) m = p[key];
        }
        if (!any_visible) {
          if (policy == MaskedRows::zeros) continue;
          // out_i = sum_k v_k / Lk: each value row receives d_out_i / Lk, nothing else does.
          const T w = T(1) / static_cast<T>(k.l);
          for (std::size_t key = 0; key < k.l; ++key) {
            T* dv = d_v.at(b, key, kvh);
            for (std::size_t dd = 0; dd < d; ++dd) dv[dd] += w * doi[dd];
          }
          continue;
        }
        T sum = 0;
        for (std::size_t key = 0; key < k.l; ++key) {
          p[key] = visible_key(rule, b, hh, i, key) ? std::exp(p[key] - m) : T(0);
          sum += p[key];
        }
        T delta = 0;  // D_i = sum_k P_ik dP_ik
        for (std::size_t key = 0; key < k.l; ++key) {
          p[key] /= sum;
          dp[key] = 0;
          if (!visible_key(rule, b, hh, i, key)) continue;
          const T* vk = v.at(b, key, kvh);
          for (std::size_t dd = 0; dd < d; ++dd) dp[key] += doi[dd] * vk[dd];
          delta += p[key] * dp[key];
        }
        T* dqi = d_q.at(b, i, hh);
        for (std::size_t key = 0; key < k.l; ++key) {
          if (!visible_key(rule, b, hh, i, key)) continue;
          const T ds = p[key] * (dp[key] - delta) * scale;
          const T* kk = k.at(b, key, kvh);
          T* dk = d_k.at(b, key, kvh);
          T* dv = d_v.at(b, key, kvh);
          for (std::size_t dd = 0; dd < d; ++dd) {
            dqi[dd] += ds * kk[dd];
            dk[dd] += ds * qi[dd];
            dv[dd] += p[key] * doi[dd];
          }
        }
      }
    }
  }
}

/// Gradients of linear(): for y = x W^T + bias (x [rows, in], W [out, in]) and dy [rows, out],
/// adds dy W to dx (unless null), dy^T x to dw and the column sums of dy to dbias (unless null).
template <class T>
void linear_backward(const T* x, std::size_t rows, std::size_t in, const T* w, std::size_t out,
                     const T* dy, T* dx, T* dw, T* dbias) {
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t o = 0; o < out; ++o) {
      const T g = dy[r * out + o];
      if (dbias != nullptr) dbias[o] += g;
      for (std::size_t c = 0; c < in; ++c) {
        if (dx != nullptr) dx[r * in + c] += g * w[o * in + c];
        dw[o * in + c] += g * x[r * in + c];
      }
    }
  }
}

/// The module's parameter gradients as plain arrays of T, shaped as the weights (Weights): [out,
/// E] and [out]; a Q/K/V bias gradient is null when the module has no such bias.
template <class T>
struct WeightGradients {
  T* wq = nullptr;
  T* wk = nullptr;
  T* wv = nullptr;
  T* wo = nullptr;
  T* bq = nullptr;
  T* bk = nullptr;
  T* bv = nullptr;
  T* bo = nullptr;
};

/// Gradients of multi_head_attention() for d_out [n, lq, e]: overwrites d_values, d_keys
/// ([n, lk, e]), d_query ([n, lq, e]) and every gradient of `g`, treating the three inputs as
/// separate tensors (a caller whose inputs alias sums their gradients). With grouped K/V heads
/// (w.kv_heads), a K/V head's gradient sums over the query heads that read it.
template <class T>
void multi_head_attention_backward(const T* values, const T* keys, const T* query, std::size_t n,
                                   std::size_t lk, std::size_t lq, std::size_t e, std::size_t heads,
                                   const Weights<T>& w, const detail::MaskRule& rule, T scale,
                                   MaskedRows policy, const T* d_out, T* d_values, T* d_keys,
                                   T* d_query, const WeightGradients<T>& g) {
  const std::size_t d = e / heads;
  const std::size_t kvh = w.kv_heads == 0 ? heads : w.kv_heads, kv_e = kvh * d;
  const std::size_t q_size = n * lq * e, in_size = n * lk * e, kv_size = n * lk * kv_e;
  std::vector<T> qp(q_size), kp(kv_size), vp(kv_size), attn(q_size);
  std::vector<T> dqp(q_size), dkp(kv_size), dvp(kv_size), dattn(q_size, T(0));
  linear(values, n * lk, e, w.wv, kv_e, w.bv, vp.data());
  linear(keys, n * lk, e, w.wk, kv_e, w.bk, kp.data());
  linear(query, n * lq, e, w.wq, e, w.bq, qp.data());
  auto heads_of = [&](T* p, std::size_t l, std::size_t h) {
    return Heads<T>{p, n, l, h, d, h * d, l * h * d};
  };
  auto cheads = [&](const T* p, std::size_t l, std::size_t h) {
    return Heads<const T>{p, n, l, h, d, h * d, l * h * d};
  };
  attention<T>(cheads(qp.data(), lq, heads), cheads(kp.data(), lk, kvh), cheads(vp.data(), lk, kvh),
               heads_of(attn.data(), lq, heads), rule, scale, policy);

  auto zero = [](T* p, std::size_t count) {
    if (p != nullptr) std::fill(p, p + count, T(0));
  };
  for (T* p : {g.wq, g.wo}) zero(p, e * e);
  for (T* p : {g.wk, g.wv}) zero(p, kv_e * e);
  for (T* p : {g.bq, g.bo}) zero(p, e);
  for (T* p : {g.bk, g.bv}) zero(p, kv_e);
  zero(d_values, in_size);
  zero(d_keys, in_size);
  zero(d_query, q_size);
  linear_backward(attn.data(), n * lq, e, w.wo, e, d_out, dattn.data(), g.wo, g.bo);
  attention_backward<T>(cheads(qp.data(), lq, heads), cheads(kp.data(), lk, kvh),
                        cheads(vp.data(), lk, kvh), cheads(dattn.data(), lq, heads),
                        heads_of(dqp.data(), lq, heads), heads_of(dkp.data(), lk, kvh),
                        heads_of(dvp.data(), lk, kvh), rule, scale, policy);
  linear_backward(query, n * lq, e, w.wq, e, dqp.data(), d_query, g.wq, g.bq);
  linear_backward(keys, n * lk, e, w.wk, kv_e, dkp.data(), d_keys, g.wk, g.bk);
  linear_backward(values, n * lk, e, w.wv, kv_e, dvp.data(), d_values, g.wv, g.bv);
}

}  // namespace simdattn::reference
