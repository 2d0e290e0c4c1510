// Scalar conversions between float and the 16-bit float formats (bfloat16, IEEE half), bit
// exact and independent of the ISA: the safetensors loader and the KV cache's append use them.
// Float to 16 bits rounds to nearest even, keeps NaN a (quiet) NaN and signs, and for half sends
// values beyond its range to infinity and tiny ones to subnormals or zero, as F16C's vcvtps2ph
// with round-to-nearest does.
#pragma once

#include <cstdint>
#include <cstring>

namespace simdattn::detail {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float bf16_to_float(std::uint16_t h) {
  return bits_float(static_cast<std::uint32_t>(h) << 16);
}

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1f) {  // infinity or NaN, payload kept
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // A subnormal half is a normal float: shift the mantissa up to its implicit bit.
    int e = 127 - 15 + 1;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (static_cast<std::uint32_t>(e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return bits_float(bits);
}

inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign and the top payload, quiet
    return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  }
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // ties to even
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (a >= 0x38800000u) {  // a normal half: re-bias the exponent, round 13 bits away
    const std::uint32_t r = a - ((127u - 15u) << 23);
    const std::uint32_t rounded = r + 0xfffu + ((r >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | (rounded >> 13));
  }
  if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
  // A subnormal half: the value in units of 2^-24, rounded to nearest even.
  const std::uint32_t exponent = a >> 23;
  const std::uint32_t mantissa = (a & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - exponent;  // 14..24: from 2^(e-127-23) to units of 2^-24
  const std::uint32_t half_ulp = 1u << (shift - 1);
  const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
  std::uint32_t value = mantissa >> shift;
  if (rest > half_ulp || (rest == half_ulp && (value & 1u) != 0)) ++value;
  return static_cast<std::uint16_t>(sign | value);
}

}  // namespace simdattn::detail
