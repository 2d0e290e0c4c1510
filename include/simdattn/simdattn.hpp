// simdattn: multi-head attention on the CPU. The one header a user needs.
//
// Errors, everywhere: a bad argument throws std::invalid_argument naming it and the values,
// before anything the caller owns is written. Running out of memory throws std::bad_alloc:
// inputs, modules and caches stay as they were (a module's setters and reset_parameters change
// nothing; over a KvCache the append is taken back, kv_cache.hpp), while the call's outputs (out,
// lse, attention weights, gradients) are unspecified, since memory can run out after some
// threads have written their rows.
#pragma once

#include "simdattn/attention.hpp"
#include "simdattn/dispatch.hpp"
#include "simdattn/kv_cache.hpp"
#include "simdattn/multi_head_attention.hpp"
#include "simdattn/safetensors.hpp"
#include "simdattn/training.hpp"
#include "simdattn/types.hpp"
#include "simdattn/version.hpp"
