// Masks: broadcasting, the tutorial's tril mask against causal top-left, key padding, bottom-right
// alignment with Lq < Lk and Lq > Lk, fully masked rows under both policies, no NaN from masking.
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;
using test::SdpaProblem;

namespace {

// CHECKs a and b (float results of the same shape) agree to the table's tolerances.
void check_same(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  test::check_close(a.data(), test::to_double(b), what);
}

}  // namespace

TEST_CASE("every broadcast shape of the mask equals its expansion to [N, H, Lq, Lk]", "[masks]") {
  const SdpaProblem p(2, 5, 7, 3, 4, 10);
  for (int shape = 0; shape < 16; ++shape) {
    const std::size_t mn = shape & 1 ? p.n : 1, mh = shape & 2 ? p.h : 1,
                      mlq = shape & 4 ? p.lq : 1, mlk = shape & 8 ? p.lk : 1;
    std::vector<std::uint8_t> small(mn * mh * mlq * mlk);
    detail::Random rng(shape + 1);
    for (auto& x : small) x = rng.uniform() < 0.3 ? 0 : 1;
    small[0] = 1;  // the [1,1,1,1] mask keeps everything
    std::vector<std::uint8_t> full(p.n * p.h * p.lq * p.lk);
    for (std::size_t b = 0; b < p.n; ++b) {
      for (std::size_t hh = 0; hh < p.h; ++hh) {
        for (std::size_t i = 0; i < p.lq; ++i) {
          for (std::size_t key = 0; key < p.lk; ++key) {
            const std::size_t src =
                (((mn == 1 ? 0 : b) * mh + (mh == 1 ? 0 : hh)) * mlq + (mlq == 1 ? 0 : i)) * mlk +
                (mlk == 1 ? 0 : key);
            full[((b * p.h + hh) * p.lq + i) * p.lk + key] = small[src];
          }
        }
      }
    }
    const Mask broadcast{small.data(), mn, mh, mlq, mlk};
    const Mask expanded{full.data(), p.n, p.h, p.lq, p.lk};
    for (Path path : kPaths) {
      INFO("mask [" << mn << ", " << mh << ", " << mlq << ", " << mlk << "] path "
                    << path_name(path));
      Options o;
      o.path = path;
      const auto out = p.run(broadcast, o);
      check_same(out, p.run(expanded, o), "broadcast vs expanded");
      test::check_close(out.data(), p.oracle(expanded, o), "vs oracle of the expansion");
    }
  }
}

TEST_CASE("the tutorial's [1, 1, Lq, Lk] lower-triangular mask equals causal top-left", "[masks]") {
  const std::size_t shapes[][2] = {{9, 9}, {5, 12}, {12, 5}, {1, 6}};
  for (const auto& s : shapes) {
    const SdpaProblem p(2, s[0], s[1], 3, 5, 20);
    const auto tril = test::make_mask(test::MaskKind::lower_triangular, p.n, p.h, p.lq, p.lk);
    for (Path path : kPaths) {
      INFO("Lq " << p.lq << " Lk " << p.lk << " path " << path_name(path));
      Options o;
      o.path = path;
      const auto with_mask = p.run(tril.mask, o);
      o.causal = Causal::top_left;
      const auto causal = p.run({}, o);
      check_same(with_mask, causal, "tril mask vs causal top-left");
      test::check_close(causal.data(), p.oracle(tril.mask, Options{}), "causal vs oracle");
    }
  }
}

TEST_CASE("top-left causal with Lq > Lk: rows from Lk on see every key", "[masks]") {
  const SdpaProblem p(1, 10, 4, 2, 3, 25);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const auto plain = p.run({}, o);
    o.causal = Causal::top_left;
    const auto causal = p.run({}, o);
    const std::size_t from = p.q_at(0, p.lk, 0, 0);
    CHECK(std::memcmp(plain.data() + from, causal.data() + from,
                      (plain.size() - from) * sizeof(float)) == 0);
    CHECK(std::memcmp(plain.data(), causal.data(), from * sizeof(float)) != 0);
  }
}

TEST_CASE("[N, 1, 1, Lk] key padding equals attending over each batch's valid keys only",
          "[masks]") {
  const SdpaProblem p(3, 6, 13, 2, 7, 30);
  const auto pad = test::make_mask(test::MaskKind::key_padding, p.n, p.h, p.lq, p.lk);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const auto out = p.run(pad.mask, o);
    test::check_close(out.data(), p.oracle(pad.mask, o), "padding vs oracle");
    for (std::size_t b = 0; b < p.n; ++b) {
      std::size_t valid = 0;
      while (valid < p.lk && pad.bytes[b * p.lk + valid] != 0) ++valid;
      INFO("batch " << b << " valid keys " << valid);
      const std::size_t row = p.h * p.d;
      const ConstHeadsView q1{p.q.data() + b * p.lq * row, 1, p.lq, p.h, p.d};
      const ConstHeadsView k1{p.k.data() + b * p.lk * row, 1, valid, p.h, p.d};
      const ConstHeadsView v1{p.v.data() + b * p.lk * row, 1, valid, p.h, p.d};
      std::vector<float> alone(p.lq * row);
      scaled_dot_product_attention(q1, k1, v1, HeadsView<float>{alone.data(), 1, p.lq, p.h, p.d},
                                   {}, o);
      const std::vector<float> mine(out.begin() + b * p.lq * row,
                                    out.begin() + (b + 1) * p.lq * row);
      check_same(mine, alone, "padded batch vs its valid keys alone");
    }
  }
}

TEST_CASE("masked keys contribute nothing, whatever their keys and values hold", "[masks]") {
  SdpaProblem p(2, 5, 9, 2, 6, 35);
  const auto pad = test::make_mask(test::MaskKind::key_padding, p.n, p.h, p.lq, p.lk);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const auto before = p.run(pad.mask, o);
    SdpaProblem garbled = p;
    for (std::size_t b = 0; b < p.n; ++b) {
      for (std::size_t key = 0; key < p.lk; ++key) {
        if (pad.bytes[b * p.lk + key] != 0) continue;
        for (std::size_t j = 0; j < p.h * p.d; ++j) {
          garbled.k[(b * p.lk + key) * p.h * p.d + j] = 1e6f;
          garbled.v[(b * p.lk + key) * p.h * p.d + j] = -1e6f;
        }
      }
    }
    check_same(garbled.run(pad.mask, o), before, "garbled masked keys");
  }
}

TEST_CASE("full [N, H, Lq, Lk] masks, alone and combined with causal", "[masks]") {
  const SdpaProblem p(2, 11, 11, 3, 9, 40);
  const auto full = test::make_mask(test::MaskKind::full, p.n, p.h, p.lq, p.lk);
  for (Path path : kPaths) {
    for (Causal causal : {Causal::none, Causal::top_left, Causal::bottom_right}) {
      INFO("path " << path_name(path) << " causal " << static_cast<int>(causal));
      Options o;
      o.path = path;
      o.causal = causal;
      const auto out = p.run(full.mask, o);
      test::check_close(out.data(), p.oracle(full.mask, o), "full mask vs oracle");
      if (causal == Causal::none) continue;
      // A key must pass both: AND the causal rule into an explicit mask (Lq == Lk here, so
      // both alignments mean k <= q).
      std::vector<std::uint8_t> both = full.bytes;
      for (std::size_t row = 0; row < p.n * p.h * p.lq; ++row) {
        const std::size_t i = row % p.lq;
        for (std::size_t key = i + 1; key < p.lk; ++key) both[row * p.lk + key] = 0;
      }
      Options plain = o;
      plain.causal = Causal::none;
      check_same(out, p.run(Mask{both.data(), p.n, p.h, p.lq, p.lk}, plain), "mask AND causal");
    }
  }
}

TEST_CASE("bottom-right causal: Lq < Lk equals the mask k <= q + Lk - Lq", "[masks]") {
  const std::size_t shapes[][2] = {{4, 11}, {1, 9}, {7, 8}};
  for (const auto& s : shapes) {
    const SdpaProblem p(2, s[0], s[1], 2, 5, 45);
    std::vector<std::uint8_t> bytes(p.lq * p.lk);
    for (std::size_t i = 0; i < p.lq; ++i) {
      for (std::size_t key = 0; key < p.lk; ++key) {
        bytes[i * p.lk + key] = key <= i + p.lk - p.lq ? 1 : 0;
      }
    }
    const Mask explicit_mask{bytes.data(), 1, 1, p.lq, p.lk};
    for (Path path : kPaths) {
      INFO("Lq " << p.lq << " Lk " << p.lk << " path " << path_name(path));
      Options o;
      o.path = path;
      const auto with_mask = p.run(explicit_mask, o);
      o.causal = Causal::bottom_right;
      const auto causal = p.run({}, o);
      check_same(causal, with_mask, "bottom-right vs explicit mask");
      test::check_close(causal.data(), p.oracle({}, o), "bottom-right vs oracle");
      o.causal = Causal::top_left;
      const auto top_left = p.run({}, o);
      if (p.lq == 1) {  // decoding: the one query sees every key, not only the first
        o.causal = Causal::none;
        check_same(causal, p.run({}, o), "Lq = 1 sees all keys");
        CHECK(std::memcmp(causal.data(), top_left.data(), causal.size() * sizeof(float)) != 0);
      }
    }
  }
}

TEST_CASE("bottom-right causal with Lq > Lk: the first Lq - Lk rows follow the policy", "[masks]") {
  const SdpaProblem p(2, 9, 4, 3, 5, 50);
  const std::size_t empty_rows = p.lq - p.lk;
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    o.causal = Causal::bottom_right;
    const auto uniform = p.run({}, o);
    test::check_close(uniform.data(), p.oracle({}, o), "uniform vs oracle");
    o.masked_rows = MaskedRows::zeros;
    const auto zeros = p.run({}, o);
    test::check_close(zeros.data(), p.oracle({}, o), "zeros vs oracle");
    for (std::size_t b = 0; b < p.n; ++b) {
      for (std::size_t hh = 0; hh < p.h; ++hh) {
        const auto mean = p.mean_v(b, hh);
        for (std::size_t i = 0; i < p.lq; ++i) {
          const std::size_t at = p.q_at(b, i, hh, 0);
          for (std::size_t j = 0; j < p.d; ++j) {
            INFO("b " << b << " h " << hh << " i " << i << " j " << j);
            if (i < empty_rows) {
              CHECK(uniform[at + j] == Approx(mean[j]).margin(1e-6));
              CHECK(zeros[at + j] == 0.0f);
            } else {
              CHECK(uniform[at + j] == zeros[at + j]);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("fully masked rows of an explicit mask, under both policies", "[masks]") {
  const SdpaProblem p(2, 7, 10, 3, 6, 55);
  const auto m = test::make_mask(test::MaskKind::fully_masked_rows, p.n, p.h, p.lq, p.lk);
  for (Path path : kPaths) {
    for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
      INFO("path " << path_name(path) << " policy "
                   << (policy == MaskedRows::uniform ? "uniform" : "zeros"));
      Options o;
      o.path = path;
      o.masked_rows = policy;
      const auto out = p.run(m.mask, o);
      test::check_close(out.data(), p.oracle(m.mask, o), "vs oracle");
      std::size_t empty_seen = 0;
      for (std::size_t b = 0; b < p.n; ++b) {
        for (std::size_t hh = 0; hh < p.h; ++hh) {
          for (std::size_t i = 0; i < p.lq; ++i) {
            const std::uint8_t* row = m.bytes.data() + ((b * p.h + hh) * p.lq + i) * p.lk;
            bool empty = true;
            for (std::size_t key = 0; key < p.lk; ++key) empty = empty && row[key] == 0;
            if (!empty) continue;
            ++empty_seen;
            const auto mean = p.mean_v(b, hh);
            for (std::size_t j = 0; j < p.d; ++j) {
              const float got = out[p.q_at(b, i, hh, 0) + j];
              if (policy == MaskedRows::zeros) {
                CHECK(got == 0.0f);
              } else {
                CHECK(got == Approx(mean[j]).margin(1e-6));
              }
            }
          }
        }
      }
      CHECK(empty_seen > 0);
    }
  }
}

TEST_CASE("no NaN or Inf from masking alone, at extreme scales and large inputs", "[masks]") {
  // Scale 1e30 turns the -1e20 fill into -inf in float; 1e-30 makes it about -1e-10, close to
  // the visible scores. Neither may produce NaN, and masked keys stay excluded.
  const float scales[] = {1e30f, 1e-30f, 1.0f};
  const float input_scales[] = {1.0f, 1e3f};
  for (float input_scale : input_scales) {
    const SdpaProblem p(2, 6, 9, 2, 4, 60, input_scale);
    for (test::MaskKind kind : test::kAllMaskKinds) {
      const auto m = test::make_mask(kind, p.n, p.h, p.lq, p.lk);
      for (float scale : scales) {
        if (scale > 1 && input_scale > 1) continue;  // scores above FLT_MAX: not masking's fault
        for (Path path : kPaths) {
          for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
            INFO("mask " << test::mask_kind_name(kind) << " scale " << scale << " inputs x"
                         << input_scale << " path " << path_name(path) << " policy "
                         << static_cast<int>(policy));
            Options o;
            o.path = path;
            o.causal = m.causal;
            o.scale = scale;
            o.masked_rows = policy;
            const auto out = p.run(m.mask, o);
            bool finite = true;
            for (float x : out) finite = finite && std::isfinite(x);
            CHECK(finite);
            test::check_close(out.data(), p.oracle(m.mask, o), "vs oracle");
          }
        }
      }
    }
  }
}

TEST_CASE("the module applies masks as the attention core does", "[masks][module]") {
  const std::size_t n = 3, lq = 8, lk = 12, e = 30, heads = 3;
  const MultiHeadAttention module(e, heads, 70);
  const Tensor kv = Tensor::randn(n, lk, e, 71);
  const Tensor query = Tensor::randn(n, lq, e, 72);
  for (test::MaskKind kind : test::kAllMaskKinds) {
    const auto m = test::make_mask(kind, n, heads, lq, lk);
    for (Path path : kPaths) {
      INFO("mask " << test::mask_kind_name(kind) << " path " << path_name(path));
      Options o;
      o.path = path;
      o.causal = m.causal;
      test::check_close(module.forward(kv, kv, query, m.mask, o).data(),
                        test::oracle_forward(module, kv, kv, query, m.mask, o), "cross");
      if (kind == test::MaskKind::none || kind == test::MaskKind::causal_top_left ||
          kind == test::MaskKind::causal_bottom_right || kind == test::MaskKind::key_padding) {
        test::check_close(module.forward(kv, kv, kv, m.mask, o).data(),
                          test::oracle_forward(module, kv, kv, kv, m.mask, o), "self");
      }
    }
  }
}
