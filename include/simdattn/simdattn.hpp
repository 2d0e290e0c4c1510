// simdattn: multi-head attention on the CPU. The one header a user needs.
#pragma once

#include "simdattn/attention.hpp"
#include "simdattn/dispatch.hpp"
#include "simdattn/kv_cache.hpp"
#include "simdattn/multi_head_attention.hpp"
#include "simdattn/safetensors.hpp"
#include "simdattn/training.hpp"
#include "simdattn/types.hpp"
#include "simdattn/version.hpp"
