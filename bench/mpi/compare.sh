#!/usr/bin/env bash
# P ranks x 1 thread against 1 rank x P threads on one machine, interleaved round by round so
# that both see the same machine load: the README's sequence-parallel figures.
#
#   bench/mpi/compare.sh [--ranks=2] [--rounds=3] [bench_mpi arguments...]
#   bench/mpi/compare.sh --rounds=1 --l=32768 --reps=1 --warmup=0   # the README's long case
#
# Each round runs `bench_mpi --baseline` with 1 rank and P threads (the one-process call,
# simdattn::scaled_dot_product_attention), then P ranks with 1 thread each. Prints every
# result line and, at the end, the median call times and their ratio. bench_mpi is taken from
# $SIMDATTN_BUILD_DIR (default build/release). OpenMPI refuses to run as root unless told:
# this script tells it (OMPI_ALLOW_RUN_AS_ROOT), as CI runs as root.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench="${SIMDATTN_BUILD_DIR:-$root/build/release}/bench/bench_mpi"
ranks=2
rounds=3
args=()
for a in "$@"; do
  case "$a" in
    --ranks=*) ranks="${a#--ranks=}" ;;
    --rounds=*) rounds="${a#--rounds=}" ;;
    -h | --help)
      sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the comment above
      exit 0
      ;;
    *) args+=("$a") ;;
  esac
done
[[ -x "$bench" ]] || { echo "compare.sh: $bench not built (cmake --build ... --target bench_mpi)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "compare.sh: $ranks ranks x 1 thread against 1 rank x $ranks threads, $rounds rounds; load: $(cut -d' ' -f1-3 /proc/loadavg)"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for ((i = 1; i <= rounds; ++i)); do
  # One rank of several threads must not be bound to one core (OpenMPI binds 1 or 2 ranks to a
  # core each by default).
  mpirun -np 1 --bind-to none "$bench" --threads="$ranks" --baseline "${args[@]}" | tee -a "$results"
  mpirun -np "$ranks" --oversubscribe "$bench" --threads=1 "${args[@]}" | tee -a "$results"
done
python3 - "$results" "$ranks" <<'PY'
import statistics, sys

rows = [dict(kv.split("=") for kv in line.split()[1:])
        for line in open(sys.argv[1]) if line.startswith("result ")]
ranks = sys.argv[2]
one = [float(r["baseline_ms"]) for r in rows if r["P"] == "1"]
many = [float(r["call_ms"]) for r in rows if r["P"] == ranks]
m1, mp = statistics.median(one), statistics.median(many)
print(f"median call: 1 rank x {ranks} threads (simdattn::scaled_dot_product_attention) "
      f"{m1:.1f} ms; {ranks} ranks x 1 thread {mp:.1f} ms; ratio {mp / m1:.3f}")
PY
