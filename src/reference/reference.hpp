// The naive scalar reference: plain loops that mirror the tutorial's SelfAttention step by step.
//
// Templated on the scalar type: float is the benchmark's baseline, double the tests' oracle.
// It holds one score row at a time (Lk values), never a head's Lq x Lk matrix. No SIMD, no
// threads, no validation (the API layer validates before calling).
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "mask_rule.hpp"
#include "simdattn/types.hpp"

namespace simdattn::reference {

/// [n, l, h, d] heads with explicit strides (in elements), as HeadsView after resolution.
template <class T>
struct Heads {
  T* data = nullptr;
  std::size_t n = 0, l = 0, h = 0, d = 0;
  std::size_t row_stride = 0, batch_stride = 0;
  T* at(std::size_t b, std::size_t i, std::size_t j) const {
    return data + b * batch_stride + i * row_stride + j * d;
  }
};

/// y[r, :] = x[r, :] W^T + bias for r < rows; W is [out, in] (PyTorch), bias may be null.
template <class T>
void linear(const T* x, std::size_t rows, std::size_t in, const T* w, std::size_t out,
            const T* bias, T* y) {
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t o = 0; o < out; ++o) {
      T acc = 0;
      for (std::size_t c = 0; c < in; ++c) acc += x[r * in + c] * w[o * in + c];
      y[r * out + o] = bias != nullptr ? acc + bias[o] : acc;
    }
  }
}

/// softmax(scale * masked_fill(q k^T, mask == 0, -1e20)) v, head by head, row by row.
/// A row with every key masked gets the uniform average of v (the tutorial's behaviour,
/// equal scores) or zeros, as `policy` says; it is detected by the rule, not by comparing
/// numbers, so it holds for any scale.
template <class T>
void attention(const Heads<const T>& q, const Heads<const T>& k, const Heads<const T>& v,
               const Heads<T>& out, const detail::MaskRule& rule, T scale, MaskedRows policy) {
  const T kMaskFill = static_cast<T>(-1e20);
  std::vector<T> energy(k.l);
  for (std::size_t b = 0; b < q.n; ++b) {
    for (std::size_t hh = 0; hh < q.h; ++hh) {
      for (std::size_t i = 0; i < q.l; ++i) {
        const T* qi = q.at(b, i, hh);
        const std::uint8_t* mrow = rule.mask_row(b, hh, i);
        const std::size_t visible_end = rule.causal_end(i);
        bool any_visible = false;
        // energy = einsum("qd,kd->k"), masked_fill, then scale (the tutorial's order).
        for (std::size_t key = 0; key < k.l; ++key) {
          const bool visible = key < visible_end && rule.mask_keeps(mrow, rule.mask.lk, key);
          T e = 0;
          if (visible) {
            const T* kk = k.at(b, key, hh);
            for (std::size_t dd = 0; dd < q.d; ++dd) e += qi[dd] * kk[dd];
            any_visible = true;
          } else {
            e = kMaskFill;
          }
          energy[key] = e * scale;
        }
        T* oi = out.at(b, i, hh);
        if (!any_visible) {
          // Every score equals -1e20 * scale: softmax is uniform (or the caller wants zeros).
          for (std::size_t dd = 0; dd < q.d; ++dd) oi[dd] = 0;
          if (policy == MaskedRows::zeros) continue;
          const T p = T(1) / static_cast<T>(k.l);
          for (std::size_t key = 0; key < k.l; ++key) {
            const T* vk = v.at(b, key, hh);
            for (std::size_t dd = 0; dd < q.d; ++dd) oi[dd] += p * vk[dd];
          }
          continue;
        }
        // Stable softmax: subtract the row max (over visible keys) before exp. Masked keys get
        // exactly zero weight, also where -1e20 * scale would not underflow exp.
        T row_max = -INFINITY;
        for (std::size_t key = 0; key < k.l; ++key) {
          const bool visible = key < visible_end && rule.mask_keeps(mrow, rule.mask.lk, key);
          if (visible && energy[key] > row_max) row_max = energy[key];
          if (visible && std::isnan(energy[key])) row_max = energy[key];
        }
        T sum = 0;
        for (std::size_t key = 0; key < k.l; ++key) {
          const bool visible = key < visible_end && rule.mask_keeps(mrow, rule.mask.lk, key);
          energy[key] = visible ? std::exp(energy[key] - row_max) : T(0);
          sum += energy[key];
        }
        for (std::size_t dd = 0; dd < q.d; ++dd) oi[dd] = 0;
        for (std::size_t key = 0; key < k.l; ++key) {
          const bool visible = key < visible_end && rule.mask_keeps(mrow, rule.mask.lk, key);
          if (!visible) continue;  // a masked key adds nothing, whatever its value holds
          const T p = energy[key] / sum;
          const T* vk = v.at(b, key, hh);
          for (std::size_t dd = 0; dd < q.d; ++dd) oi[dd] += p * vk[dd];
        }
      }
    }
  }
}

/// The module's weights as plain arrays of T (each [E, E] or [E]; Q/K/V biases may be null).
template <class T>
struct Weights {
  const T* wq = nullptr;
  const T* wk = nullptr;
  const T* wv = nullptr;
  const T* wo = nullptr;
  const T* bq = nullptr;
  const T* bk = nullptr;
  const T* bv = nullptr;
  const T* bo = nullptr;
};

/// The whole module: project, split heads (a view), attend, concatenate (a view), project.
/// values, keys: [n, lk, e]; query, out: [n, lq, e]. `scratch` grows to 4 activations.
template <class T>
void multi_head_attention(const T* values, const T* keys, const T* query, std::size_t n,
                          std::size_t lk, std::size_t lq, std::size_t e, std::size_t heads,
                          const Weights<T>& w, const detail::MaskRule& rule, T scale,
                          MaskedRows policy, T* out, std::vector<T>& scratch) {
  const std::size_t d = e / heads;
  const std::size_t q_size = n * lq * e;
  const std::size_t kv_size = n * lk * e;
  scratch.resize(2 * q_size + 2 * kv_size);
  T* qp = scratch.data();
  T* kp = qp + q_size;
  T* vp = kp + kv_size;
  T* attn = vp + kv_size;
  linear(values, n * lk, e, w.wv, e, w.bv, vp);
  linear(keys, n * lk, e, w.wk, e, w.bk, kp);
  linear(query, n * lq, e, w.wq, e, w.bq, qp);
  auto heads_of = [&](T* p, std::size_t l) { return Heads<T>{p, n, l, heads, d, e, l * e}; };
  auto cheads = [&](T* p, std::size_t l) { return Heads<const T>{p, n, l, heads, d, e, l * e}; };
  attention<T>(cheads(qp, lq), cheads(kp, lk), cheads(vp, lk), heads_of(attn, lq), rule, scale,
               policy);
  linear(attn, n * lq, e, w.wo, e, w.bo, out);
}

}  // namespace simdattn::reference
