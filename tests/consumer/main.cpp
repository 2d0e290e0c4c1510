// One forward through an installed simdattn: the headers, the static library and its OpenMP
// link dependency all come from find_package(simdattn).
#include <cmath>
#include <cstdio>
#include <simdattn/simdattn.hpp>

int main() {
  const simdattn::MultiHeadAttention attention(64, 4);
  const simdattn::Tensor x = simdattn::Tensor::randn(2, 5, 64, 1);
  const simdattn::Tensor out = attention.forward(x, x, x);
  bool finite = true;
  for (float v : out.values()) finite = finite && std::isfinite(v);
  const bool ok = out.shape_string() == "[2, 5, 64]" && finite;
  std::printf("consumer: simdattn %s, ISA %s, output %s%s\n", simdattn::kVersion,
              simdattn::isa_name(simdattn::active_isa()), out.shape_string().c_str(),
              ok ? "" : " (WRONG)");
  return ok ? 0 : 1;
}
