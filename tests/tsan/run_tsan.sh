#!/usr/bin/env bash
# Builds tests/tsan (clang + ThreadSanitizer + LLVM's libomp with its Archer tool) and runs the
# concurrency tests once per ISA this machine runs. Any TSan report fails the run.
# Usage: tests/tsan/run_tsan.sh [build-dir]      (default: build-tsan in the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-tsan}
cxx=${CXX_TSAN:-clang++-14}

cmake -S "$root/tests/tsan" -B "$build" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target tsan_concurrency

# ignore_noninstrumented_modules: libomp itself is not instrumented; Archer (loaded by libomp
# when the program uses TSan) supplies its synchronisation instead. ARCHER_OPTIONS=verbose=1
# makes Archer say that it is active, which the loop below requires. Passive waiting keeps
# libomp's idle threads from spinning on this 2-core machine.
export TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 second_deadlock_stack=1"
export ARCHER_OPTIONS="verbose=1"
export OMP_WAIT_POLICY=passive

isas="sse2"
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx2 && has fma; then isas="avx2 $isas"; fi
if has avx512f && has avx512cd && has avx512dq && has avx512bw; then isas="avx512 $isas"; fi

for isa in $isas; do
  log="$build/tsan-$isa.log"
  echo "== TSan, concurrency tests, SIMDATTN_ISA=$isa"
  if ! SIMDATTN_ISA=$isa "$build/tsan_concurrency" "[concurrency]" >"$log" 2>&1; then
    cat "$log"
    echo "run_tsan.sh: FAILED on $isa (log: $log)" >&2
    exit 1
  fi
  if ! grep -q "Archer detected OpenMP application with TSan" "$log"; then
    cat "$log"
    echo "run_tsan.sh: Archer did not start: OpenMP teams were not checked" >&2
    exit 1
  fi
  tail -n 2 "$log"
done
