#include "workload.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>

namespace bench {
namespace {

using simdattn::Causal;
using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::Mask;
using simdattn::MultiHeadAttention;
using simdattn::Options;
using simdattn::Path;
using simdattn::Tensor;

constexpr std::uint64_t kQuerySeed = 1;
constexpr std::uint64_t kKeySeed = 2;
constexpr std::uint64_t kValueSeed = 3;
constexpr std::uint64_t kWeightSeed = 7;

// Rows per check block. 16 rows at each end cover a partial first and last tile of any
// query blocking up to 16 rows and the edge of larger ones, at a cost of 32 rows' work.
constexpr std::size_t kCheckRows = 16;
// Loose on purpose: the tests hold the kernels to 1e-5 / 1e-4 against a double oracle; here the
// check only refuses to time a broken kernel, against a float reference with its own rounding.
constexpr double kCheckRelTol = 1e-4;
constexpr double kCheckMaxTol = 1e-3;

struct Block {
  std::size_t begin, count;
};

std::vector<Block> check_blocks(std::size_t lq) {
  if (lq <= 2 * kCheckRows) return {{0, lq}};
  return {{0, kCheckRows}, {lq - kCheckRows, kCheckRows}};
}

std::unique_ptr<Workload> g_workload;

}  // namespace

Workload::Workload(Op op, const Shape& s) : op_(op), s_(s), out_(s.n, s.lq, s.e) {
  query_ = Tensor::randn(s.n, s.lq, s.e, kQuerySeed);
  if (op == Op::sdpa) {
    keys_ = Tensor::randn(s.n, s.lk, s.e, kKeySeed);
    values_ = Tensor::randn(s.n, s.lk, s.e, kValueSeed);
  } else {
    module_ = std::make_unique<MultiHeadAttention>(s.e, s.h, kWeightSeed);
    // The module's self-attention passes one tensor three times; otherwise keys and values
    // are one encoder memory (cross) or KV history (decode).
    if (!self_attention()) keys_ = Tensor::randn(s.n, s.lk, s.e, kKeySeed);
  }
}

Options Workload::options(Path path, int threads, std::optional<simdattn::Isa> isa) const {
  Options o;
  o.path = path;
  o.threads = threads;
  if (path == Path::optimized) o.isa = isa;
  o.causal = s_.causal ? Causal::top_left : Causal::none;
  return o;
}

void Workload::run(const Options& o) {
  if (op_ == Op::mha) {
    module_->forward(kv(), kv(), query_, Mask{}, out_.view(), o);
  } else {
    simdattn::scaled_dot_product_attention(
        heads(query_), heads(keys_), heads(values_),
        HeadsView<float>{out_.data(), s_.n, s_.lq, s_.h, d(), 0, 0}, Mask{}, o);
  }
}

CheckResult& Workload::check(Path path, int threads, std::optional<simdattn::Isa> isa) {
  CheckResult& c = checks_[{path, threads, isa}];
  if (c.done) return c;
  c.done = true;
  if (expected_.empty()) expected_ = naive_rows();
  std::fill(out_.data(), out_.data() + out_.size(), std::nanf(""));
  run(options(path, threads, isa));
  const std::vector<float> got = checked_rows(out_);
  compare(got, c);
  return c;
}

std::size_t Workload::bytes() const {
  return (query_.size() + keys_.size() + values_.size() + out_.size()) * sizeof(float);
}

bool Workload::self_attention() const {
  return s_.lq == s_.lk && s_.name != "cross";
}

ConstHeadsView Workload::heads(const Tensor& t) const {
  return {t.data(), t.n(), t.l(), s_.h, d(), 0, 0};
}

// The rows of check_blocks() for every batch, in (block, batch, row) order.
std::vector<float> Workload::checked_rows(const Tensor& out) const {
  std::vector<float> rows;
  for (const Block& blk : check_blocks(s_.lq)) {
    for (std::size_t b = 0; b < s_.n; ++b) {
      const float* first = out.data() + (b * s_.lq + blk.begin) * s_.e;
      rows.insert(rows.end(), first, first + blk.count * s_.e);
    }
  }
  return rows;
}

// The naive path on each block of query rows alone: query rows are independent given the
// keys, so this is the full problem's answer for those rows at a fraction of its cost. A
// causal mask becomes an explicit [1, 1, rows, Lk] keep-mask at the block's offset.
std::vector<float> Workload::naive_rows() const {
  std::vector<float> rows;
  Options o = options(Path::naive, 1);
  o.causal = Causal::none;
  for (const Block& blk : check_blocks(s_.lq)) {
    std::vector<std::uint8_t> keep;
    Mask mask;
    if (s_.causal) {
      keep.resize(blk.count * s_.lk);
      for (std::size_t i = 0; i < blk.count; ++i) {
        for (std::size_t k = 0; k < s_.lk; ++k) keep[i * s_.lk + k] = k <= blk.begin + i;
      }
      mask = Mask{keep.data(), 1, 1, blk.count, s_.lk};
    }
    Tensor out(s_.n, blk.count, s_.e);
    if (op_ == Op::mha) {
      Tensor query(s_.n, blk.count, s_.e);
      for (std::size_t b = 0; b < s_.n; ++b) {
        const float* first = query_.data() + (b * s_.lq + blk.begin) * s_.e;
        std::copy(first, first + blk.count * s_.e, query.data() + b * blk.count * s_.e);
      }
      module_->forward(kv(), kv(), query, mask, out.view(), o);
    } else {
      const ConstHeadsView q{
          query_.data() + blk.begin * s_.e, s_.n, blk.count, s_.h, d(), s_.e, s_.lq * s_.e};
      simdattn::scaled_dot_product_attention(
          q, heads(keys_), heads(values_),
          HeadsView<float>{out.data(), s_.n, blk.count, s_.h, d(), 0, 0}, mask, o);
    }
    rows.insert(rows.end(), out.data(), out.data() + out.size());
  }
  return rows;
}

void Workload::compare(const std::vector<float>& got, CheckResult& c) const {
  double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
  std::size_t nonfinite = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], r = expected_[i];
    if (!std::isfinite(g)) {
      ++nonfinite;
      continue;
    }
    diff2 += (g - r) * (g - r);
    ref2 += r * r;
    max_diff = std::max(max_diff, std::fabs(g - r));
    max_ref = std::max(max_ref, std::fabs(r));
  }
  c.rel_err = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  const double max_rel = max_ref > 0 ? max_diff / max_ref : max_diff;
  c.ok = nonfinite == 0 && c.rel_err <= kCheckRelTol && max_rel <= kCheckMaxTol;
  std::ostringstream msg;
  msg << "output check FAILED against the naive path: " << nonfinite
      << " non-finite values, relative Frobenius error " << c.rel_err << " (limit " << kCheckRelTol
      << "), max element error " << max_rel << " x max|ref| (limit " << kCheckMaxTol << ") over "
      << got.size() << " values";
  if (!c.ok) c.message = msg.str();
}

Workload& workload(Op op, const Shape& s) {
  if (!g_workload || !g_workload->matches(op, s)) {
    g_workload.reset();  // free the previous inputs before allocating the next
    g_workload = std::make_unique<Workload>(op, s);
  }
  return *g_workload;
}

void release_workload() {
  g_workload.reset();
}

}  // namespace bench
