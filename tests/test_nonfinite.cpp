// Reliability: NaN and Inf in the query, keys, values, weights and biases, and in masked
// positions. The rules (README, "Reliability"), checked against the double oracle, which has
// the reference's semantics (masked keys are skipped entirely):
// - NaN/Inf in an input reaches exactly the outputs that depend on it, as in the oracle:
//   where the oracle is finite the result is finite and accurate, where the oracle is NaN/Inf
//   the result is NaN/Inf too. Never a crash, never a NaN in an unrelated row.
// - A masked key's NaN/Inf never reaches anything: masked scores are replaced, not added to.
// - A masked value's NaN/Inf may reach the rows of its (batch, head) on the optimized path,
//   which multiplies masked values by zero inside a key block; it never reaches other heads
//   or batches, and the naive path skips it.
// Every case runs on both paths; CTest repeats the file for every ISA. Tile (Lq > 4) and
// decode (Lq <= 4) kernels are both covered.
#include <initializer_list>
#include <limits>
#include <vector>

#include "common.hpp"

namespace simdattn {
namespace {

using test::compare_nonfinite;
using test::SdpaProblem;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kSpecials[] = {kNaN, kInf, -kInf};

const char* special_name(float x) {
  return std::isnan(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf";
}

// Makes every score of rows [row_begin, row_end) of (batch b, head 1) -inf: their query's column 3
// becomes -Inf where every key of the head is positive there.
void scores_neg_inf(SdpaProblem& p, std::size_t b, std::size_t row_begin, std::size_t row_end) {
  for (std::size_t i = row_begin; i < row_end; ++i) p.q[p.q_at(b, i, 1, 3)] = -kInf;
  for (std::size_t key = 0; key < p.lk; ++key) {
    float& k = p.k[p.k_at(b, key, 1, 3)];
    k = std::abs(k) + 0.1f;
  }
}

// A tile-path and a decode-path problem; one planted element sits at (b = 1, row 20 or 1,
// head 1, column 3).
struct Shapes {
  SdpaProblem tile{2, 37, 37, 3, 7, 11};
  SdpaProblem decode{2, 3, 70, 3, 7, 12};
};

// For the tile and the decode problem, every special value, every mask kind of `kinds` and
// both paths: plants the value with plant(p, special) and calls check(p, out, ref, kind, path).
template <class Plant, class Check>
void for_each_case(const char* what, std::initializer_list<test::MaskKind> kinds, Plant plant,
                   Check check) {
  Shapes shapes;
  for (const SdpaProblem* base : {&shapes.tile, &shapes.decode}) {
    for (float special : kSpecials) {
      for (test::MaskKind kind : kinds) {
        SdpaProblem p = *base;
        plant(p, special);
        const auto m = test::make_mask(kind, p.n, p.h, p.lq, p.lk, 5);
        for (Path path : test::kPaths) {
          Options o;
          o.path = path;
          o.causal = m.causal;
          INFO("Lq " << p.lq << ", " << what << " " << special_name(special) << ", mask "
                     << test::mask_kind_name(kind) << ", path " << test::path_name(path));
          check(p, p.run(m.mask, o), p.oracle(m.mask, o), kind, path);
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("NaN or Inf in one query row reaches that row only", "[reliability][nonfinite]") {
  for_each_case(
      "query",
      {test::MaskKind::none, test::MaskKind::causal_top_left, test::MaskKind::fully_masked_rows},
      [](SdpaProblem& p, float special) { p.q[p.q_at(1, p.lq > 4 ? 20 : 1, 1, 3)] = special; },
      [](const SdpaProblem& p, const std::vector<float>& out, const std::vector<double>& ref,
         test::MaskKind kind, Path) {
        const auto c = compare_nonfinite(out, ref);
        test::check_nonfinite(c, "vs oracle");
        // The row is NaN/Inf unless the mask hides every key from it (its answer then does
        // not involve the query); nothing else is.
        CHECK(c.ref_nonfinite <= p.d);
        if (kind != test::MaskKind::fully_masked_rows) CHECK(c.ref_nonfinite == p.d);
      });
}

TEST_CASE("NaN or Inf in one key reaches exactly the rows that see that key",
          "[reliability][nonfinite]") {
  // Strict: a key the mask hides from a row never reaches that row (its score is replaced),
  // so even the optimized path follows the oracle exactly here.
  for_each_case(
      "key",
      {test::MaskKind::none, test::MaskKind::causal_top_left, test::MaskKind::causal_bottom_right,
       test::MaskKind::full},
      [](SdpaProblem& p, float special) { p.k[p.k_at(1, 20, 1, 3)] = special; },
      [](const SdpaProblem&, const std::vector<float>& out, const std::vector<double>& ref,
         test::MaskKind,
         Path) { test::check_nonfinite(compare_nonfinite(out, ref), "vs oracle"); });
}

TEST_CASE("NaN or Inf in one value reaches the rows that see it, in that column",
          "[reliability][nonfinite]") {
  for_each_case(
      "value",
      {test::MaskKind::none, test::MaskKind::causal_top_left, test::MaskKind::key_padding,
       test::MaskKind::full},
      [](SdpaProblem& p, float special) { p.v[p.k_at(1, 20, 1, 3)] = special; },
      [](const SdpaProblem& p, const std::vector<float>& out, const std::vector<double>& ref,
         test::MaskKind, Path path) {
        // Rows of (batch 1, head 1) that do not see key 20 may get NaN in column 3 on the
        // optimized path (0 x NaN); no other element may.
        auto hidden_reach = [&](std::size_t i) {
          const std::size_t t = i % p.d, head = i / p.d % p.h, b = i / (p.d * p.h * p.lq);
          return path == Path::optimized && b == 1 && head == 1 && t == 3;
        };
        const auto c = compare_nonfinite(out, ref, hidden_reach);
        test::check_nonfinite(c, "vs oracle");
        CHECK(c.ref_nonfinite + c.allowed_nan <= p.lq);  // column 3 of one (batch, head)
      });
}

TEST_CASE("masked positions holding NaN or Inf", "[reliability][nonfinite][masks]") {
  // [N, 1, 1, Lk] key padding: batch 1 sees only its first 12 keys; every key and value after
  // that is garbage in the caller's padding.
  Shapes shapes;
  for (SdpaProblem* base : {&shapes.tile, &shapes.decode}) {
    std::vector<std::uint8_t> bytes(base->n * base->lk, 1);
    for (std::size_t key = 12; key < base->lk; ++key) bytes[base->lk + key] = 0;
    const Mask pad{bytes.data(), base->n, 1, 1, base->lk};
    for (float special : kSpecials) {
      for (Path path : test::kPaths) {
        Options o;
        o.path = path;
        INFO("Lq " << base->lq << ", masked " << special_name(special) << ", path "
                   << test::path_name(path));
        const auto ref = base->oracle(pad, o);  // the garbage is masked: same oracle for all
        {                                       // in masked keys: never reaches any output
          SdpaProblem p = *base;
          for (std::size_t key = 12; key < p.lk; ++key) {
            for (std::size_t j = 0; j < p.h * p.d; ++j) p.k[(p.lk + key) * p.h * p.d + j] = special;
          }
          test::check_nonfinite(compare_nonfinite(p.run(pad, o), ref), "masked keys");
        }
        {  // in masked values: may reach batch 1 on the optimized path, nothing else
          SdpaProblem p = *base;
          for (std::size_t key = 12; key < p.lk; ++key) {
            for (std::size_t j = 0; j < p.h * p.d; ++j) p.v[(p.lk + key) * p.h * p.d + j] = special;
          }
          auto batch1 = [&](std::size_t i) {
            return path == Path::optimized && i >= p.lq * p.h * p.d;
          };
          const auto c = compare_nonfinite(p.run(pad, o), ref, batch1);
          test::check_nonfinite(c, "masked values");
          CHECK(c.ref_nonfinite == 0);
        }
      }
    }
  }
}

TEST_CASE("fully masked rows with NaN values follow the policy",
          "[reliability][nonfinite][masks]") {
  // Every key masked for batch 1: `zeros` writes exact zeros whatever the values hold;
  // `uniform` averages every value, so a NaN value makes the whole column NaN, as in the oracle.
  Shapes shapes;
  for (SdpaProblem* base : {&shapes.tile, &shapes.decode}) {
    SdpaProblem p = *base;
    p.v[p.k_at(1, 5, 2, 4)] = kNaN;
    std::vector<std::uint8_t> bytes(p.n, 1);
    bytes[1] = 0;
    const Mask none_for_batch1{bytes.data(), p.n, 1, 1, 1};
    for (Path path : test::kPaths) {
      for (MaskedRows policy : {MaskedRows::zeros, MaskedRows::uniform}) {
        Options o;
        o.path = path;
        o.masked_rows = policy;
        INFO("Lq " << p.lq << ", path " << test::path_name(path) << ", policy "
                   << (policy == MaskedRows::zeros ? "zeros" : "uniform"));
        const auto out = p.run(none_for_batch1, o);
        const auto c = compare_nonfinite(out, p.oracle(none_for_batch1, o));
        test::check_nonfinite(c, "vs oracle");
        CHECK(c.ref_nonfinite == (policy == MaskedRows::zeros ? 0 : p.lq));
        if (policy == MaskedRows::zeros) {
          bool zeros = true;
          for (std::size_t i = p.q_at(1, 0, 0, 0); i < out.size(); ++i)
            zeros = zeros && out[i] == 0;
          CHECK(zeros);
        }
      }
    }
  }
}

TEST_CASE("NaN or Inf in a key hidden by a -inf bias, the window or the key padding",
          "[reliability][nonfinite][variants]") {
  // The planted key (b = 1, key 20, head 1) is hidden from some or all rows of its head by a
  // variant's own rule, never by the mask: it must reach exactly the rows that see it, as in the
  // oracle. Soft-capping turns an infinite score into +-cap, so an Inf key reaches nothing.
  struct Variant {
    const char* what;
    // Sets the variant's options for a problem; `store` keeps the bias, padding and sinks.
    void (*set)(const SdpaProblem& p, Options& o, std::vector<float>& store,
                std::vector<std::uint8_t>& bytes);
  };
  const Variant variants[] = {
      {"-inf bias entry over keys (hides key 20 everywhere)",
       [](const SdpaProblem& p, Options& o, std::vector<float>& store, std::vector<std::uint8_t>&) {
         store = test::random_normal(p.lk, 41);
         store[20] = -kInf;
         o.bias = {store.data(), 1, 1, 1, p.lk};
       }},
      {"-inf bias per batch, head and row (hides key 20 from even rows of batch 1, head 1)",
       [](const SdpaProblem& p, Options& o, std::vector<float>& store, std::vector<std::uint8_t>&) {
         store = test::random_normal(p.n * p.h * p.lq * p.lk, 42);
         for (std::size_t i = 0; i < p.lq; i += 2)
           store[((p.h + 1) * p.lq + i) * p.lk + 20] = -kInf;
         o.bias = {store.data(), p.n, p.h, p.lq, p.lk};
       }},
      {"-inf bias with soft-capping and sinks",
       [](const SdpaProblem& p, Options& o, std::vector<float>& store, std::vector<std::uint8_t>&) {
         store = test::random_normal(p.lq * p.lk + p.h, 43);
         for (std::size_t i = 0; i < p.lq; i += 3) store[i * p.lk + 20] = -kInf;
         o.bias = {store.data(), 1, 1, p.lq, p.lk};
         o.softcap = 5.0f;
         o.sinks = {store.data() + p.lq * p.lk, p.h};
       }},
      {"sliding window of 4 keys",
       [](const SdpaProblem&, Options& o, std::vector<float>&, std::vector<std::uint8_t>&) {
         o.causal = Causal::bottom_right;
         o.window = 4;
       }},
      {"key padding",
       [](const SdpaProblem& p, Options& o, std::vector<float>&, std::vector<std::uint8_t>& bytes) {
         bytes.assign(p.n * p.lk, 0);
         bytes[p.lk + 20] = 1;
         o.key_padding = {bytes.data(), p.n, p.lk};
       }},
      {"soft-capping", [](const SdpaProblem&, Options& o, std::vector<float>&,
                          std::vector<std::uint8_t>&) { o.softcap = 5.0f; }},
      {"soft-capping and ALiBi",
       [](const SdpaProblem&, Options& o, std::vector<float>&, std::vector<std::uint8_t>&) {
         o.softcap = 5.0f;
         o.alibi.enabled = true;
       }},
  };
  Shapes shapes;
  for (const SdpaProblem* base : {&shapes.tile, &shapes.decode}) {
    for (const Variant& variant : variants) {
      for (float special : kSpecials) {
        SdpaProblem p = *base;
        p.k[p.k_at(1, 20, 1, 3)] = special;
        for (Path path : test::kPaths) {
          Options o;
          o.path = path;
          std::vector<float> store;
          std::vector<std::uint8_t> bytes;
          variant.set(p, o, store, bytes);
          INFO("Lq " << p.lq << ", " << variant.what << ", key " << special_name(special)
                     << ", path " << test::path_name(path));
          const auto c = compare_nonfinite(p.run({}, o), p.oracle({}, o));
          test::check_nonfinite(c, "vs oracle");
          // It reaches at most the rows of its (batch, head); a NaN key reaches the rows that
          // see it, so with soft-capping alone (no hiding) all of them.
          CHECK(c.ref_nonfinite <= p.lq * p.d);
          if (std::isnan(special) && o.softcap.has_value() && o.bias.data == nullptr) {
            CHECK(c.ref_nonfinite == p.lq * p.d);
          }
        }
      }
    }
  }
}

TEST_CASE("sinks: a row whose visible scores are all -inf still sees a NaN or Inf value",
          "[reliability][nonfinite][variants]") {
  // Row 1 of (batch 1, head 1) has a -Inf query component where every key of its head is
  // positive, so each of its scores is -inf: with sinks the sink takes all the weight and the
  // row is 0 x v, zeros but NaN in the column where a value it sees holds NaN or Inf.
  Shapes shapes;
  for (const SdpaProblem* base : {&shapes.tile, &shapes.decode}) {
    for (float special : kSpecials) {
      SdpaProblem p = *base;
      scores_neg_inf(p, 1, 1, 2);
      p.v[p.k_at(1, 0, 1, 2)] = special;  // key 0: every row sees it
      const std::vector<float> sinks = test::random_normal(p.h, 44);
      for (Path path : test::kPaths) {
        Options o;
        o.path = path;
        o.sinks = {sinks.data(), p.h};
        INFO("Lq " << p.lq << ", value " << special_name(special) << ", path "
                   << test::path_name(path));
        const auto ref = p.oracle({}, o);
        for (std::size_t t = 0; t < p.d; ++t) {
          CHECK(std::isfinite(ref[p.q_at(1, 1, 1, t)]) == (t != 2));
        }
        // The value reaches column 2 of its head's other rows too: through their weights.
        const auto c = compare_nonfinite(p.run({}, o), ref);
        test::check_nonfinite(c, "vs oracle");
        CHECK(c.ref_nonfinite == p.lq);
      }
    }
  }
}

TEST_CASE("a row whose visible scores are all -inf is NaN, as 0 / 0 in the reference",
          "[reliability][nonfinite]") {
  // Row 0 of head 1 has a -Inf query component where every key of its head is positive: each
  // of its scores is -inf, and without sinks its softmax is 0 / 0, NaN in every column (the
  // sinks test above covers the sink's case). The other rows are finite. Decoding (Lq <= 4)
  // runs one slice (Lk up to 128) or several, the tile kernel (Lq = 37) one or more key blocks.
  for (std::size_t lq : {1, 3, 37}) {
    for (std::size_t lk : {1, 5, 100, 129, 513}) {
      SdpaProblem p(1, lq, lk, 2, 8, 70 + lk);
      scores_neg_inf(p, 0, 0, 1);
      for (Path path : test::kPaths) {
        Options o;
        o.path = path;
        INFO("Lq " << lq << ", Lk " << lk << ", path " << test::path_name(path));
        const auto ref = p.oracle({}, o);
        const auto c = compare_nonfinite(p.run({}, o), ref);
        test::check_nonfinite(c, "vs oracle");
        CHECK(c.ref_nonfinite == p.d);  // that row, every column
      }
    }
  }
}

TEST_CASE("a NaN key among keys scored -inf makes its rows NaN, with or without sinks",
          "[reliability][nonfinite]") {
  // Head 1's queries have a -Inf component where its keys are positive: every score is -inf but
  // that of key `at`, NaN (a NaN component). The rows' running maximum stays -inf, so the NaN
  // must reach them through their sums: NaN rows, as in the oracle, sinks or not. Decoding
  // (Lq <= 4) runs one slice or several; Lq = 37 runs the tile kernel.
  for (std::size_t lq : {1, 3, 37}) {
    for (std::size_t lk : {3, 70, 600}) {
      for (std::size_t at : {std::size_t{0}, lk / 2, lk - 1}) {
        SdpaProblem p(1, lq, lk, 2, 8, 80 + lk);
        scores_neg_inf(p, 0, 0, lq);
        p.k[p.k_at(0, at, 1, 5)] = kNaN;
        const std::vector<float> sinks = test::random_normal(p.h, 46);
        for (bool with_sinks : {false, true}) {
          for (Path path : test::kPaths) {
            Options o;
            o.path = path;
            if (with_sinks) o.sinks = {sinks.data(), p.h};
            INFO("Lq " << lq << ", Lk " << lk << ", NaN key " << at << (with_sinks ? ", sinks" : "")
                       << ", path " << test::path_name(path));
            const auto ref = p.oracle({}, o);
            const auto c = compare_nonfinite(p.run({}, o), ref);
            test::check_nonfinite(c, "vs oracle");
            CHECK(c.ref_nonfinite == lq * p.d);  // head 1's rows, every column
          }
        }
      }
    }
  }
}

TEST_CASE("a key scored -inf still passes its value's NaN or Inf on, in a slice of its own",
          "[reliability][nonfinite]") {
  // The last key of head 1 has a +Inf component where every query of that head is negative, so
  // every row scores it -inf: weight 0, but 0 x its value reaches each row in the value's column
  // (0 x Inf = NaN, as in the oracle). Decoding (Lq <= 4) splits the keys into slices of 128 or
  // more, merged afterwards; these lengths leave the last key alone in the last slice, whose
  // log-sum-exp is then -inf. Lq = 37 runs the tile kernel.
  for (std::size_t lq : {1, 3, 37}) {
    for (std::size_t lk : {129, 257, 513, 1025}) {
      for (float special : kSpecials) {
        SdpaProblem p(1, lq, lk, 2, 8, 60 + lk);
        for (std::size_t i = 0; i < lq; ++i) {
          float& x = p.q[p.q_at(0, i, 1, 3)];
          x = -std::abs(x) - 0.1f;
        }
        p.k[p.k_at(0, lk - 1, 1, 3)] = kInf;
        p.v[p.k_at(0, lk - 1, 1, 2)] = special;
        const std::vector<float> sinks = test::random_normal(p.h, 45);
        for (bool with_sinks : {false, true}) {
          for (Path path : test::kPaths) {
            Options o;
            o.path = path;
            if (with_sinks) o.sinks = {sinks.data(), p.h};
            INFO("Lq " << lq << ", Lk " << lk << ", value " << special_name(special)
                       << (with_sinks ? ", sinks" : "") << ", path " << test::path_name(path));
            const auto ref = p.oracle({}, o);
            for (std::size_t i = 0; i < lq; ++i) {
              for (std::size_t t = 0; t < p.d; ++t) {
                CHECK(std::isfinite(ref[p.q_at(0, i, 1, t)]) == (t != 2));
              }
            }
            const auto c = compare_nonfinite(p.run({}, o), ref);
            test::check_nonfinite(c, "vs oracle");
            CHECK(c.ref_nonfinite == lq);
          }
        }
      }
    }
  }
}

TEST_CASE("module: NaN or Inf in inputs, weights and biases reaches what depends on it",
          "[reliability][nonfinite][module]") {
  // E = 12, H = 3; cross-attention with separate buffers and a causal mask, so every row sees
  // key 0 and only rows >= 20 see key 20.
  const std::size_t e = 12, heads = 3, n = 2, lq = 33, lk = 33;
  const MultiHeadAttention clean(e, heads, 31);
  const auto q = test::random_normal(n * lq * e, 32);
  const auto k = test::random_normal(n * lk * e, 33);
  const auto v = test::random_normal(n * lk * e, 34);
  struct Plant {
    const char* what;
    int input;  // 0 query, 1 keys, 2 values, -1 none
    std::size_t index;
    Projection p;
    bool bias;
  };
  const Plant plants[] = {
      {"query row (1, 7)", 0, (lq + 7) * e + 5, Projection::query, false},
      {"keys row (1, 20)", 1, (lk + 20) * e + 2, Projection::query, false},
      {"weight Wq", -1, 3 * e + 4, Projection::query, false},
      {"weight Wk", -1, 7 * e + 1, Projection::key, false},
      {"weight Wv", -1, 5 * e + 11, Projection::value, false},
      {"weight Wo", -1, 2 * e + 9, Projection::output, false},
      {"bias bq", -1, 4, Projection::query, true},
      {"bias bv", -1, 10, Projection::value, true},
      {"bias bo", -1, 6, Projection::output, true},
  };
  for (const Plant& plant : plants) {
    for (float special : kSpecials) {
      MultiHeadAttention m = clean;
      std::vector<float> in[3] = {q, k, v};
      if (plant.input >= 0) {
        in[plant.input][plant.index] = special;
      } else if (plant.bias) {
        std::vector<float> b = m.has_bias(plant.p) ? m.bias(plant.p) : test::random_normal(e, 35);
        b[plant.index] = special;
        m.set_bias(plant.p, b);
      } else {
        std::vector<float> w = m.weight(plant.p);
        w[plant.index] = special;
        m.set_weight(plant.p, w);
      }
      const ConstTensorView qv{in[0].data(), n, lq, e}, kv{in[1].data(), n, lk, e},
          vv{in[2].data(), n, lk, e};
      for (Path path : test::kPaths) {
        Options o;
        o.path = path;
        o.causal = Causal::top_left;
        INFO(plant.what << " = " << special_name(special) << ", path " << test::path_name(path));
        std::vector<float> out(n * lq * e, -1.0f);
        m.forward(vv, kv, qv, {}, {out.data(), n, lq, e}, o);
        const auto c = compare_nonfinite(out, test::oracle_forward(m, vv, kv, qv, {}, o));
        test::check_nonfinite(c, "vs oracle");
        CHECK(c.ref_nonfinite > 0);  // the plant reached something, as it must
      }
    }
  }
}

}  // namespace simdattn
