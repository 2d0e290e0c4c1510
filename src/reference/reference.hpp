// The naive scalar reference: plain loops that mirror the tutorial's SelfAttention step by step.
//
// Templated on the scalar type: float is the benchmark's baseline, double the tests' oracle.
// It holds one score row at a time (Lk values), never a head's Lq x Lk matrix. No SIMD, no
// threads, no validation (the API layer validates before calling).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "mask_rule.hpp"
#include "simdattn/types.hpp"
#include "views.hpp"

namespace simdattn::reference {

using detail::Heads;
using detail::WeightsOut;

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

/// softmax(scale * masked_fill(q k^T, mask == 0, -1e20)) v, head by head, row by row, with the
/// rule's score modifications (kernels/attention/score_mods.hpp: soft-capping, bias, ALiBi, in
/// that order) and sinks.
/// A row with every key masked gets the uniform average of v (the tutorial's behaviour,
/// equal scores) or zeros, as `policy` says, and zeros with a sink; it is detected by the rule,
/// not by comparing numbers, so it holds for any scale. k.h == v.h divides q.h: query head hh
/// reads K/V head hh / (q.h / k.h) (grouped-query attention). q.d == k.d; v.d == out.d may
/// differ from them. `lse`, if given, receives each row's log-sum-exp at
/// lse[(b * q.h + hh) * q.l + i]: log(sum over visible keys of exp(score) + exp(sink)), -inf for
/// a row without visible key and sink, or whose visible scores are all -inf and has no sink.
/// `weights`, if given, receives the probabilities.
template <class T>
void attention(const Heads<const T>& q, const Heads<const T>& k, const Heads<const T>& v,
               const Heads<T>& out, const detail::MaskRule& rule, T scale, MaskedRows policy,
               T* lse = nullptr, WeightsOut<T> weights = {}) {
  const T kMaskFill = static_cast<T>(-1e20);
  const std::size_t group = q.h / k.h;
  const std::size_t dv = v.d;
  std::vector<T> energy(k.l);
  if (weights.data != nullptr && weights.average_heads) {
    std::fill(weights.data, weights.data + q.n * q.l * k.l, T(0));
  }
  for (std::size_t b = 0; b < q.n; ++b) {
    for (std::size_t hh = 0; hh < q.h; ++hh) {
      const kernels::KeyRule keys = rule.for_head(b, hh);
      const kernels::ScoreMods mods = rule.mods_for_head(hh);
      const bool sink = kernels::has_sink(mods);
      const std::size_t kh = hh / group;
      for (std::size_t i = 0; i < q.l; ++i) {
        const T* qi = q.at(b, i, hh);
        const std::uint8_t* mrow = kernels::mask_row(keys, i);
        const float* brow = kernels::bias_row(keys, i);
        const std::size_t visible_begin = kernels::key_begin(keys, i);
        const std::size_t visible_end = kernels::key_end(keys, i);
        auto visible = [&](std::size_t key) {
          return key >= visible_begin && key < visible_end &&
                 kernels::keeps_key(keys, mrow, brow, key);
        };
        T* row_lse = lse != nullptr ? lse + (b * q.h + hh) * q.l + i : nullptr;
        // The row's probabilities go to the weights when asked, else nowhere.
        auto put_weight = [&](std::size_t key, T p) {
          if (weights.data == nullptr) return;
          if (weights.average_heads) {
            weights.data[(b * q.l + i) * k.l + key] += p;
          } else {
            weights.data[((b * q.h + hh) * q.l + i) * k.l + key] = p;
          }
        };
        bool any_visible = false;
        // energy = einsum("qd,kd->k"), masked_fill, then scale (the tutorial's order); then
        // the score modifications on visible keys.
        for (std::size_t key = 0; key < k.l; ++key) {
          T e = 0;
          if (visible(key)) {
            const T* kk = k.at(b, key, kh);
            for (std::size_t dd = 0; dd < q.d; ++dd) e += qi[dd] * kk[dd];
            any_visible = true;
            energy[key] = kernels::modified_score<T>(keys, mods, brow, i, key, e * scale);
          } else {
            energy[key] = kMaskFill * scale;
          }
        }
        T* oi = out.at(b, i, hh);
        if (!any_visible) {
          // Every score equals -1e20 * scale: softmax is uniform (or the caller wants zeros, or
          // a sink takes all the weight).
          const bool zeros = policy == MaskedRows::zeros || sink;
          if (row_lse != nullptr) *row_lse = sink ? static_cast<T>(mods.sink) : -INFINITY;
          for (std::size_t dd = 0; dd < dv; ++dd) oi[dd] = 0;
          const T p = zeros ? T(0) : T(1) / static_cast<T>(k.l);
          for (std::size_t key = 0; key < k.l; ++key) put_weight(key, p);
          if (zeros) continue;
          for (std::size_t key = 0; key < k.l; ++key) {
            const T* vk = v.at(b, key, kh);
            for (std::size_t dd = 0; dd < dv; ++dd) oi[dd] += p * vk[dd];
          }
          continue;
        }
        // Stable softmax: subtract the row max (over visible keys and the sink) before exp.
        // Masked keys get exactly zero weight, also where -1e20 * scale would not underflow exp.
        T row_max = sink ? static_cast<T>(mods.sink) : -INFINITY;
        bool nan = false;
        for (std::size_t key = 0; key < k.l; ++key) {
          if (visible(key) && energy[key] > row_max) row_max = energy[key];
          if (visible(key) && std::isnan(energy[key])) nan = true;
        }
        if (nan) row_max = NAN;
        T sum = sink ? std::exp(static_cast<T>(mods.sink) - row_max) : T(0);
        for (std::size_t key = 0; key < k.l; ++key) {
          energy[key] = visible(key) ? std::exp(energy[key] - row_max) : T(0);
          sum += energy[key];
        }
        // Every visible score -inf: log(0) = -inf, as the tile kernel gives (not -inf + NaN).
        if (row_lse != nullptr) *row_lse = row_max == -INFINITY ? row_max : row_max + std::log(sum);
        for (std::size_t dd = 0; dd < dv; ++dd) oi[dd] = 0;
        for (std::size_t key = 0; key < k.l; ++key) {
          const T p = energy[key] / sum;
          put_weight(key, visible(key) ? p : T(0));
          if (!visible(key)) continue;  // a masked key adds nothing, whatever its value holds
          const T* vk = v.at(b, key, kh);
          for (std::size_t dd = 0; dd < dv; ++dd) oi[dd] += p * vk[dd];
        }
      }
    }
  }
  if (weights.data != nullptr && weights.average_heads) {
    for (std::size_t x = 0; x < q.n * q.l * k.l; ++x) weights.data[x] /= static_cast<T>(q.h);
  }
}

/// The module's weights as plain arrays of T ([out, E] and [out]; Q/K/V biases may be null).
/// The key and value projections have kv_heads x head_dim out features (grouped-query
/// attention), the others E.
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
  std::size_t kv_heads = 0;  ///< 0: as many as the query heads
};

/// Elements of scratch multi_head_attention() needs: projected Q, K, V and the heads' output.
inline std::size_t multi_head_attention_scratch(std::size_t n, std::size_t lq, std::size_t lk,
                                                std::size_t e) {
  return 2 * n * lq * e + 2 * n * lk * e;
}

/// The whole module: project, split heads (a view), attend, concatenate (a view), project.
/// values, keys: [n, lk, e]; query, out: [n, lq, e]. `scratch` holds
/// multi_head_attention_scratch(n, lq, lk, e) elements.
template <class T>
void multi_head_attention(const T* values, const T* keys, const T* query, std::size_t n,
                          std::size_t lk, std::size_t lq, std::size_t e, std::size_t heads,
                          const Weights<T>& w, const detail::MaskRule& rule, T scale,
                          MaskedRows policy, T* out, T* scratch, WeightsOut<T> weights = {}) {
  const std::size_t d = e / heads;
  const std::size_t kvh = w.kv_heads == 0 ? heads : w.kv_heads, kv_e = kvh * d;
  const std::size_t q_size = n * lq * e;
  const std::size_t kv_size = n * lk * kv_e;
  T* qp = scratch;
  T* kp = qp + q_size;
  T* vp = kp + kv_size;
  T* attn = vp + kv_size;
  linear(values, n * lk, e, w.wv, kv_e, w.bv, vp);
  linear(keys, n * lk, e, w.wk, kv_e, w.bk, kp);
  linear(query, n * lq, e, w.wq, e, w.bq, qp);
  auto heads_of = [&](T* p, std::size_t l) { return Heads<T>{p, n, l, heads, d, e, l * e}; };
  auto cheads = [&](T* p, std::size_t l, std::size_t h) {
    return Heads<const T>{p, n, l, h, d, h * d, l * h * d};
  };
  attention<T>(cheads(qp, lq, heads), cheads(kp, lk, kvh), cheads(vp, lk, kvh), heads_of(attn, lq),
               rule, scale, policy, nullptr, weights);
  linear(attn, n * lq, e, w.wo, e, w.bo, out);
}

/// The same with a scratch vector that grows as needed.
template <class T>
void multi_head_attention(const T* values, const T* keys, const T* query, std::size_t n,
                          std::size_t lk, std::size_t lq, std::size_t e, std::size_t heads,
                          const Weights<T>& w, const detail::MaskRule& rule, T scale,
                          MaskedRows policy, T* out, std::vector<T>& scratch,
                          WeightsOut<T> weights = {}) {
  scratch.resize(multi_head_attention_scratch(n, lq, lk, e));
  multi_head_attention<T>(values, keys, query, n, lk, lq, e, heads, w, rule, scale, policy, out,
                          scratch.data(), weights);
}

}  // namespace simdattn::reference
