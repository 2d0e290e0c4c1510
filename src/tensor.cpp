#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "random.hpp"
#include "simdattn/types.hpp"
#include "validate.hpp"

namespace simdattn {

float tutorial_scale(std::size_t embed_size) {
  if (embed_size == 0) detail::fail("tutorial_scale", "embed_size must be > 0, got 0");
  return 1.0f / std::sqrt(static_cast<float>(embed_size));
}

Tensor::Tensor(std::size_t n, std::size_t l, std::size_t e)
    : n_(n), l_(l), e_(e), data_(detail::checked_mul("Tensor", "n * l * e", n, l, e), 0.0f) {}

Tensor::Tensor(std::size_t n, std::size_t l, std::size_t e, std::vector<float> data)
    : n_(n), l_(l), e_(e), data_(std::move(data)) {
  const std::size_t want = detail::checked_mul("Tensor", "n * l * e", n, l, e);
  if (data_.size() != want) {
    detail::fail("Tensor", "data has " + std::to_string(data_.size()) + " elements, shape " +
                               detail::shape_string(n, l, e) + " needs " + std::to_string(want));
  }
}

Tensor Tensor::randn(std::size_t n, std::size_t l, std::size_t e, std::uint64_t seed) {
  Tensor t(n, l, e);
  detail::Random rng(seed);
  for (float& x : t.data_) x = static_cast<float>(rng.normal());
  return t;
}

Tensor::Tensor(Tensor&& other) noexcept
    : n_(std::exchange(other.n_, 0)),
      l_(std::exchange(other.l_, 0)),
      e_(std::exchange(other.e_, 0)),
      data_(std::exchange(other.data_, {})) {}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    n_ = std::exchange(other.n_, 0);
    l_ = std::exchange(other.l_, 0);
    e_ = std::exchange(other.e_, 0);
    data_ = std::exchange(other.data_, {});
  }
  return *this;
}

void Tensor::out_of_range(std::size_t b, std::size_t i, std::size_t k) const {
  throw std::out_of_range("simdattn::Tensor::at: index [" + std::to_string(b) + ", " +
                          std::to_string(i) + ", " + std::to_string(k) + "] is outside " +
                          shape_string());
}

std::string Tensor::shape_string() const {
  return detail::shape_string(n_, l_, e_);
}

}  // namespace simdattn
