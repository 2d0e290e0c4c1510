#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14; ASan + UBSan + coverage on the library too, see
# instrument.cmake) and runs each for a bounded time from the committed seed corpus, then runs
# each committed corpus once more as a regression check (ctest). New inputs go to a scratch
# corpus under the build directory, never into the repository; a failing input is written
# there as crash-*/timeout-* and printed, with the command that reproduces it.
# fuzz_attention picks, per input, one of the ISAs this machine runs (the library's registry).
# Usage: tests/fuzz/run_fuzz.sh [build-dir] [seconds-per-target]   (defaults: build-fuzz, 60)
# SIMDATTN_FUZZ_SEED=N fixes libFuzzer's random seed (CI does, so that its short run repeats the
# inputs that a longer local run with the same seed has covered); unset, every run explores anew.
set -euo pipefail
case "${1:-}" in
  -h | --help)
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the comment above
    exit 0
    ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-fuzz}
seconds=${2:-60}
cxx=${CXX_FUZZ:-clang++-14}

cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSIMDATTN_BUILD_FUZZ=ON -DSIMDATTN_BUILD_TESTS=OFF -DSIMDATTN_BUILD_BENCH=OFF \
  -DSIMDATTN_BUILD_TOOLS=OFF -DSIMDATTN_WERROR=OFF >/dev/null
cmake --build "$build" -j2 --target fuzz_attention fuzz_safetensors fuzz_kv_cache \
  fuzz_backward fuzz_variants

# Passive waiting keeps libomp's idle threads from spinning on a 2-core machine.
export OMP_WAIT_POLICY=passive

# fuzz TARGET CORPUS SECONDS [extra libFuzzer flags]
fuzz() {
  local target=$1 corpus=$2 secs=$3
  shift 3
  local work="$build/fuzz-work/$target${SIMDATTN_ISA:+-$SIMDATTN_ISA}"
  mkdir -p "$work/corpus"
  echo "== $target${SIMDATTN_ISA:+ (SIMDATTN_ISA=$SIMDATTN_ISA)}: ${secs} s"
  if ! "$build/tests/fuzz/$target" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$work/" ${SIMDATTN_FUZZ_SEED:+-seed="$SIMDATTN_FUZZ_SEED"} \
      "$@" "$work/corpus" \
      "$root/tests/fuzz/corpus/$corpus" >"$work/log" 2>&1; then
    grep -vE '^ *#[0-9]+ |^(INFO|MS|0x|Base64|artifact_prefix)' "$work/log" | tail -n 40
    echo "run_fuzz.sh: $target found a failing input (see above); reproduce with:" >&2
    ls "$work"/crash-* "$work"/timeout-* "$work"/leak-* "$work"/oom-* 2>/dev/null |
      sed "s|^|  ${SIMDATTN_ISA:+SIMDATTN_ISA=$SIMDATTN_ISA }$build/tests/fuzz/$target |" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$work/log" | tr '\n' ' '
  echo
}

fuzz fuzz_attention attention "$seconds"
fuzz fuzz_safetensors safetensors "$seconds" -dict="$root/tests/fuzz/safetensors.dict"
fuzz fuzz_kv_cache kv_cache "$seconds"
fuzz fuzz_backward backward "$seconds"
fuzz fuzz_variants variants "$seconds"

echo "== committed corpora, once each (regression inputs)"
ctest --test-dir "$build/tests/fuzz" --output-on-failure
