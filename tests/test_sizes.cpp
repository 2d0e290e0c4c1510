// Reliability: sizes at the edges.
// - Lq = Lk = 1; E = heads (head_dim 1); very large E with tiny L; L = 65536 with a small E.
// - Shapes whose scratch size overflows size_t: std::invalid_argument before any allocation.
// - A valid request too large for memory: std::bad_alloc, never a crash or a partial write.
//   These requests ask for far more than the address space (over 128 TiB), so they fail at
//   once whatever the kernel's overcommit policy: nothing here can exhaust the machine.
#include <new>
#include <vector>

#include "common.hpp"

namespace simdattn {
namespace {

using test::SdpaProblem;

void check_all_masks_sdpa(const SdpaProblem& p, const char* what) {
  for (test::MaskKind kind : test::kAllMaskKinds) {
    const auto m = test::make_mask(kind, p.n, p.h, p.lq, p.lk);
    for (Path path : test::kPaths) {
      Options o;
      o.path = path;
      o.causal = m.causal;
      INFO(what << ", mask " << test::mask_kind_name(kind) << ", path " << test::path_name(path));
      test::check_close(p.run(m.mask, o).data(), p.oracle(m.mask, o), "vs oracle");
    }
  }
}

void check_all_masks_forward(const MultiHeadAttention& m, std::size_t n, std::size_t lq,
                             std::size_t lk, std::uint64_t seed, const char* what,
                             std::vector<test::MaskKind> kinds = {std::begin(test::kAllMaskKinds),
                                                                  std::end(test::kAllMaskKinds)}) {
  const std::size_t e = m.embed_size();
  const auto q = test::random_normal(n * lq * e, seed);
  const auto kv = test::random_normal(n * lk * e, seed + 1);
  const auto v = test::random_normal(n * lk * e, seed + 2);
  const ConstTensorView qv{q.data(), n, lq, e}, kvv{kv.data(), n, lk, e}, vv{v.data(), n, lk, e};
  for (test::MaskKind kind : kinds) {
    const auto mask = test::make_mask(kind, n, m.heads(), lq, lk);
    Options o;
    o.causal = mask.causal;
    const auto ref = test::oracle_forward(m, vv, kvv, qv, mask.mask, o);  // the same for both paths
    for (Path path : test::kPaths) {
      o.path = path;
      INFO(what << ", mask " << test::mask_kind_name(kind) << ", path " << test::path_name(path));
      std::vector<float> out(n * lq * e, -1.0f);
      m.forward(vv, kvv, qv, mask.mask, {out.data(), n, lq, e}, o);
      test::check_close(out.data(), ref, "vs oracle");
    }
  }
}

}  // namespace

TEST_CASE("Lq = Lk = 1: the single key's value, exactly", "[reliability][sizes]") {
  const SdpaProblem p(3, 1, 1, 4, 5, 70);
  check_all_masks_sdpa(p, "Lq = Lk = 1");
  for (Path path : test::kPaths) {
    for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
      Options o;
      o.path = path;
      o.masked_rows = policy;
      INFO("path " << test::path_name(path));
      // softmax over one key is exactly 1, and the uniform average of one value is that value.
      CHECK(test::first_difference(p.run({}, o), p.v) == "");
      o.causal = Causal::bottom_right;
      CHECK(test::first_difference(p.run({}, o), p.v) == "");
      const std::uint8_t hidden = 0;
      const auto masked = p.run(Mask{&hidden, 1, 1, 1, 1}, o);
      CHECK(test::first_difference(
                masked, policy == MaskedRows::zeros ? std::vector<float>(p.v.size(), 0.0f) : p.v) ==
            "");
    }
  }
  const MultiHeadAttention m(12, 3, 71);
  check_all_masks_forward(m, 3, 1, 1, 72, "module, Lq = Lk = 1");
}

TEST_CASE("E = heads: head_dim 1", "[reliability][sizes]") {
  check_all_masks_sdpa(SdpaProblem(2, 19, 23, 5, 1, 73), "sdpa D = 1");
  check_all_masks_sdpa(SdpaProblem(2, 3, 23, 5, 1, 74), "sdpa D = 1, decode");
  for (std::size_t e : {1u, 7u, 16u}) {
    const MultiHeadAttention m(e, e, 75);
    check_all_masks_forward(m, 2, 9, 11, 76, "module E = heads");
  }
}

TEST_CASE("very large E with tiny L", "[reliability][sizes]") {
  // head_dim 4096 in the core; E = 2048 (2 heads of 1024) in the module: weights of 16 MiB
  // each, and scores that sum 1024-4096 products.
  check_all_masks_sdpa(SdpaProblem(1, 2, 3, 1, 4096, 77), "sdpa D = 4096, decode");
  check_all_masks_sdpa(SdpaProblem(1, 9, 5, 1, 4096, 78), "sdpa D = 4096, tiles");
  const MultiHeadAttention m(2048, 2, 79);
  const std::vector<test::MaskKind> kinds = {test::MaskKind::none, test::MaskKind::causal_top_left,
                                             test::MaskKind::fully_masked_rows};
  check_all_masks_forward(m, 1, 2, 3, 80, "module E = 2048, decode", kinds);
  check_all_masks_forward(m, 1, 7, 5, 81, "module E = 2048, tiles", kinds);
}

TEST_CASE("L = 65536 with a small E on the optimized path", "[reliability][sizes][long]") {
  const std::size_t long_l = 65536;
  SECTION("decode: Lq = 2, Lk = 65536") {
    const SdpaProblem p(1, 2, long_l, 2, 8, 82);
    Options o;
    o.causal = Causal::bottom_right;
    test::check_close(p.run({}, o).data(), p.oracle({}, o), "decode, causal bottom-right");
    const MultiHeadAttention m(16, 2, 83);
    const auto q = test::random_normal(16, 84), kv = test::random_normal(long_l * 16, 85);
    std::vector<float> out(16);
    m.forward({kv.data(), 1, long_l, 16}, {kv.data(), 1, long_l, 16}, {q.data(), 1, 1, 16}, {},
              {out.data(), 1, 1, 16});
    test::check_close(out.data(),
                      test::oracle_forward(m, {kv.data(), 1, long_l, 16},
                                           {kv.data(), 1, long_l, 16}, {q.data(), 1, 1, 16}),
                      "module decode");
  }
  SECTION("many queries: Lq = 65536, Lk = 3") {
    const SdpaProblem p(1, long_l, 3, 2, 4, 86);
    test::check_close(p.run({}, {}).data(), p.oracle({}, {}), "Lq = 65536");
  }
  SECTION("Lq = Lk = 65536, causal: sampled rows against the oracle") {
    // An Lq x Lk score matrix would be 16 GiB here: the kernels never build one. On the naive
    // ISA (where the optimized path is the scalar reference) and under AddressSanitizer (which
    // makes this 30x slower) 8192 keeps the run short.
#ifdef SIMDATTN_TEST_ASAN
    const std::size_t l = 8192;
#else
    const std::size_t l = active_isa() == Isa::naive ? 8192 : long_l;
#endif
    const SdpaProblem p(1, l, l, 1, 4, 87);
    Options o;
    o.causal = Causal::top_left;
    const auto out = p.run({}, o);
    for (std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{63}, std::size_t{64},
                          std::size_t{4095}, l / 2 + 17, l - 2, l - 1}) {
      INFO("row " << i);
      // Row i of a causal call is attention of that row over keys [0, i].
      const auto ref =
          test::oracle_sdpa({p.q.data() + i * p.d, 1, 1, 1, p.d}, {p.k.data(), 1, i + 1, 1, p.d},
                            {p.v.data(), 1, i + 1, 1, p.d});
      test::check_close(out.data() + i * p.d, ref, "sampled row");
    }
  }
}

TEST_CASE("scratch sizes that overflow size_t are rejected before any allocation",
          "[reliability][sizes]") {
  // Keys and values claiming about 2^60.4 or 2^61 floats: their own byte counts fit in size_t
  // (validation accepts them), but 4 activations of that size do not. Only the claim is huge:
  // the call must fail before it reads anything. out and query sit below the keys' start, so
  // no range overlaps.
  const MultiHeadAttention m(4, 1, 88);
  std::vector<float> buf(64, 1.0f);
  const float* q = buf.data() + 8;
  const float* kv = buf.data() + 16;
  for (std::size_t lk : {std::size_t{1} << 59, std::size_t{384307168202282326}}) {
    for (Path path : test::kPaths) {
      Options o;
      o.path = path;
      o.threads = 1;
      INFO("Lk " << lk << ", path " << test::path_name(path));
      const std::string message =
          "simdattn::MultiHeadAttention::forward: the scratch of 4 "
          "activations of " +
          std::to_string(lk * 4) + " floats overflows size_t";
      CHECK_THROWS_WITH(
          m.forward({kv, 1, lk, 4}, {kv, 1, lk, 4}, {q, 1, 2, 4}, {}, {buf.data(), 1, 2, 4}, o),
          message);
    }
  }
}

TEST_CASE("requests too large for memory throw std::bad_alloc", "[reliability][sizes]") {
  if (!test::huge_allocations_testable()) {
    WARN(
        "AddressSanitizer without ASAN_OPTIONS=allocator_may_return_null=1: a huge allocation "
        "would abort the run, so this test is skipped");
    return;
  }
  // Each asks for at least 2^48 bytes (256 TiB), more than the 128 TiB address space, so no
  // overcommit policy can grant it (and zero-filling it cannot start).
  CHECK_THROWS_AS(MultiHeadAttention(std::size_t{1} << 24, 2), std::bad_alloc);  // 2^50 B weights
  CHECK_THROWS_AS(Tensor(2, std::size_t{1} << 20, std::size_t{1} << 25), std::bad_alloc);
  // A cache of 2^32 - 2 blocks of 512 KiB (2^50 B): refused at once, before its 32 GiB of block
  // bookkeeping is written (which would take the memory of most machines first).
  KvCacheConfig huge;
  huge.blocks = 0xfffffffeu;
  huge.kv_heads = 16;
  huge.head_dim = 64;
  CHECK_THROWS_AS(KvCache(huge), std::bad_alloc);
  // forward(): keys and values claim 2^46 floats at the end of a small buffer; the scratch
  // (several of those) cannot exist, so the call fails before it reads a key.
  const MultiHeadAttention m(8, 2, 89);
  std::vector<float> buf(64, 1.0f);
  const std::size_t lk = std::size_t{1} << 43;
  for (Path path : test::kPaths) {
    Options o;
    o.path = path;
    o.threads = 1;
    INFO("path " << test::path_name(path));
    const std::vector<float> before = buf;
    CHECK_THROWS_AS(m.forward({buf.data() + 32, 1, lk, 8}, {buf.data() + 32, 1, lk, 8},
                              {buf.data() + 16, 1, 2, 8}, {}, {buf.data(), 1, 2, 8}, o),
                    std::bad_alloc);
    CHECK(test::first_difference(buf, before) == "");
    // The returning form: the result tensor itself (2^43 x 8 floats) cannot exist.
    CHECK_THROWS_AS(m.forward({buf.data() + 32, 1, lk, 8}, {buf.data() + 32, 1, lk, 8},
                              {buf.data() + 32, 1, lk, 8}, {}, o),
                    std::bad_alloc);
  }
}

}  // namespace simdattn
