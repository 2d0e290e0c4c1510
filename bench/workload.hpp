// The inputs, module and output of one (op, shape), shared by its benchmarks (naive and each
// thread count), and the output check that runs before any of them is timed.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cases.hpp"
#include "simdattn/simdattn.hpp"

namespace bench {

struct CheckResult {
  bool done = false;
  bool ok = false;
  double rel_err = 0;
  std::string message;  // why it failed
  bool reported = false;
  bool warmed = false;
};

// Inputs are standard normal from fixed seeds (Tensor::randn), the module's weights from
// MultiHeadAttention(E, H, seed): every run and every path sees the same numbers.
class Workload {
 public:
  Workload(Op op, const Shape& s);

  bool matches(Op op, const Shape& s) const { return op == op_ && s == s_; }
  // `isa` is the optimized path's Options::isa (unset: the process's choice).
  simdattn::Options options(simdattn::Path path, int threads,
                            std::optional<simdattn::Isa> isa = std::nullopt) const;
  void run(const simdattn::Options& o);

  // Runs the call once (the first warm-up) and compares its checked rows with the naive
  // path's: every row when Lq <= 32, otherwise the first and last 16 query rows of every batch
  // (the edges of any tiling).
  CheckResult& check(simdattn::Path path, int threads,
                     std::optional<simdattn::Isa> isa = std::nullopt);

  // Inputs plus output.
  std::size_t bytes() const;

 private:
  bool self_attention() const;
  std::size_t d() const { return s_.e / s_.h; }
  const simdattn::Tensor& kv() const { return self_attention() ? query_ : keys_; }
  simdattn::ConstHeadsView heads(const simdattn::Tensor& t) const;
  std::vector<float> checked_rows(const simdattn::Tensor& out) const;
  std::vector<float> naive_rows() const;
  void compare(const std::vector<float>& got, CheckResult& c) const;

  Op op_;
  Shape s_;
  simdattn::Tensor query_, keys_, values_;
  std::unique_ptr<simdattn::MultiHeadAttention> module_;
  simdattn::Tensor out_;
  std::vector<float> expected_;
  std::map<std::tuple<simdattn::Path, int, std::optional<simdattn::Isa>>, CheckResult> checks_;
};

// The workload of (op, s), made when the previous one was for another (op, shape): consecutive
// benchmarks of one shape share it, and the previous inputs are freed before the next ones.
Workload& workload(Op op, const Shape& s);
void release_workload();

}  // namespace bench
