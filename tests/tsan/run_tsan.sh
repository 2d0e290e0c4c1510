#!/usr/bin/env bash
# Builds tests/tsan (clang + ThreadSanitizer + LLVM's libomp with its Archer tool) and runs the
# concurrency tests once per ISA of the registry that this machine runs. Any TSan report fails
# the run.
# Usage: tests/tsan/run_tsan.sh [build-dir]      (default: build-tsan in the repository root)
set -euo pipefail
case "${1:-}" in
  -h | --help)
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the comment above
    exit 0
    ;;
esac
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

# Every ISA of the library's registry (include/simdattn/isa_list.hpp, the one list of them);
# the program exits 77 for one that this build or CPU cannot run.
isas=$(sed -n 's/^#define SIMDATTN_ISA_LIST(X)//p' "$root/include/simdattn/isa_list.hpp" |
  grep -o 'X([a-z0-9_]*)' | sed 's/^X(\(.*\))$/\1/')
ran=0
for isa in $isas; do
  log="$build/tsan-$isa.log"
  echo "== TSan, concurrency tests, SIMDATTN_ISA=$isa"
  rc=0
  SIMDATTN_ISA=$isa "$build/tsan_concurrency" "[concurrency]" >"$log" 2>&1 || rc=$?
  if ((rc == 77)); then
    echo "skipped: this build or CPU cannot run $isa"
    continue
  fi
  if ((rc != 0)); then
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
  ran=$((ran + 1))
done
if ((ran == 0)); then
  echo "run_tsan.sh: no ISA of $isas ran" >&2
  exit 1
fi
