// simdattn::mpi::forward: the module with local projections and the attention core over the
// ranks equals the single-process module on the whole sequence.
#include <algorithm>
#include <string>

#include "mpi_test.hpp"

namespace simdattn::test::mpi {

TEST_CASE("mpi::forward equals MultiHeadAttention::forward on the whole sequence", "[mpi]") {
  const std::size_t e = 48, heads = 4, n = 2;
  const std::size_t p = static_cast<std::size_t>(ranks());
  MultiHeadAttention module(e, heads, 5);
  module.set_bias(Projection::key, random_normal(e, 6));
  struct Case {
    const char* name;
    std::size_t lq, lk;
    bool self, shared_kv;
    Causal causal;
    Layout layout;
  };
  const Case cases[] = {
      {"self-attention, causal, zig-zag", 9 * p + 1, 9 * p + 1, true, true, Causal::top_left,
       Layout::zigzag},
      {"self-attention, contiguous", 7 * p, 7 * p, true, true, Causal::none, Layout::contiguous},
      {"cross-attention, keys = values", 5 * p, 8 * p + 3, false, true, Causal::bottom_right,
       Layout::contiguous},
      {"cross-attention, separate keys and values", 6 * p + 2, 4 * p, false, false,
       Causal::top_left, Layout::zigzag},
  };
  for (const Case& c : cases) {
    const auto x = random_normal(n * c.lq * e, 31);
    const auto kx = c.self ? x : random_normal(n * c.lk * e, 32);
    const auto vx = c.shared_kv ? kx : random_normal(n * c.lk * e, 33);
    for (Path path : kPaths) {
      simdattn::mpi::Options options;
      options.causal = c.causal;
      options.layout = c.layout;
      options.path = path;
      std::vector<float> whole(n * c.lq * e);
      module.forward({vx.data(), n, c.lk, e}, {kx.data(), n, c.lk, e}, {x.data(), n, c.lq, e}, {},
                     {whole.data(), n, c.lq, e}, options);

      const auto q_segs = simdattn::mpi::even_split(c.layout, c.lq, ranks(), rank());
      const auto k_segs = simdattn::mpi::even_split(c.layout, c.lk, ranks(), rank());
      const auto lx = take_rows(x, n, c.lq, e, q_segs);
      const auto lkx = c.self ? lx : take_rows(kx, n, c.lk, e, k_segs);
      const auto lvx = c.shared_kv ? lkx : take_rows(vx, n, c.lk, e, k_segs);
      const std::size_t lq = lx.size() / (n * e), lk = lkx.size() / (n * e);
      // Pass one buffer where the whole problem did, so that the same projections run.
      const float* kp = c.self ? lx.data() : lkx.data();
      const float* vp = c.shared_kv ? kp : lvx.data();
      const Tensor out = simdattn::mpi::forward(module, MPI_COMM_WORLD, {vp, n, lk, e},
                                                {kp, n, lk, e}, {lx.data(), n, lq, e}, {}, options);
      const Comparison cmp = compare_rows(out.values(), whole, n, c.lq, e, q_segs);
      INFO(c.name << ", " << path_name(path) << ": relative error " << cmp.rel);
      CHECK(cmp.rel <= 1e-6);
    }
  }
}

TEST_CASE("mpi::forward: grouped K/V heads and sequence-first views", "[mpi]") {
  const std::size_t e = 32, heads = 4, n = 2;
  const std::size_t p = static_cast<std::size_t>(ranks()), l = 5 * p + 1;
  const MultiHeadAttention module(e, heads, KvHeads{2}, 7);
  const auto x = random_normal(n * l * e, 41);
  for (Path path : kPaths) {
    simdattn::mpi::Options options;
    options.causal = Causal::top_left;
    options.layout = Layout::zigzag;
    options.path = path;
    std::vector<float> whole(n * l * e);
    module.forward({x.data(), n, l, e}, {x.data(), n, l, e}, {x.data(), n, l, e}, {},
                   {whole.data(), n, l, e}, options);

    const auto segs = simdattn::mpi::even_split(options.layout, l, ranks(), rank());
    const auto lx = take_rows(x, n, l, e, segs);
    const std::size_t lq = lx.size() / (n * e);
    // The rank's rows as [L_r, N, E] buffers (PyTorch's batch_first=False).
    std::vector<float> xs(lx.size()), outs(lx.size());
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t i = 0; i < lq; ++i) {
        std::copy_n(&lx[(b * lq + i) * e], e, &xs[(i * n + b) * e]);
      }
    }
    const ConstTensorView xv = sequence_first(static_cast<const float*>(xs.data()), lq, n, e);
    simdattn::mpi::forward(module, MPI_COMM_WORLD, xv, xv, xv, {},
                           sequence_first(outs.data(), lq, n, e), options);
    std::vector<float> out(lx.size());
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t i = 0; i < lq; ++i) {
        std::copy_n(&outs[(i * n + b) * e], e, &out[(b * lq + i) * e]);
      }
    }
    const Comparison cmp = compare_rows(out, whole, n, l, e, segs);
    INFO(path_name(path) << ": relative error " << cmp.rel);
    CHECK(cmp.rel <= 1e-6);
  }
}

}  // namespace simdattn::test::mpi
