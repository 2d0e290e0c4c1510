#include "cases.hpp"

#include <sstream>

namespace bench {

const char* op_name(Op op) {
  return op == Op::mha ? "mha" : "sdpa";
}
const char* path_name(simdattn::Path path) {
  return path == simdattn::Path::naive ? "naive" : "optimized";
}

double sdpa_flops(const Shape& s) {
  const double f = 4.0 * s.n * s.lq * s.lk * s.e;
  return s.causal ? f / 2 : f;
}
double projection_flops(const Shape& s) {
  const double e2 = static_cast<double>(s.e) * s.e;
  return 2.0 * s.n * s.lq * e2 * 2 + 2.0 * s.n * s.lk * e2 * 2;
}
double flops(Op op, const Shape& s) {
  return sdpa_flops(s) + (op == Op::mha ? projection_flops(s) : 0.0);
}
double kv_bytes(const Shape& s) {
  return 2.0 * s.n * s.lk * s.e * sizeof(float);
}

std::string benchmark_name(Op op, simdattn::Path path, const Shape& s, int threads) {
  std::ostringstream name;
  name << op_name(op) << '/' << path_name(path) << '/' << s.name << "/N:" << s.n << "/Lq:" << s.lq
       << "/Lk:" << s.lk << "/E:" << s.e << "/H:" << s.h << "/threads:" << threads;
  return name.str();
}

}  // namespace bench
