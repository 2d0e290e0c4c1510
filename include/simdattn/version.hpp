#pragma once

#define SIMDATTN_VERSION_MAJOR 0
#define SIMDATTN_VERSION_MINOR 1
#define SIMDATTN_VERSION_PATCH 0

namespace simdattn {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace simdattn
