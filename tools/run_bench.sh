#!/usr/bin/env bash
# The README's first command: installs missing Debian packages, builds bench_attention (Release),
# runs its default naive-vs-optimized comparison (under 3 minutes on 2 cores) and turns the JSON
# into a markdown table and PNG plots.
#
#   tools/run_bench.sh [--peers] [--update-readme] [bench_attention flags...]
#
#   --peers          also time PyTorch on the grid cases (tools/peers_torch.py; needs Debian's
#                    python3-torch, and takes minutes) and add its columns to the report.
#   --update-readme  rewrite the README's results section (and bench/results/gflops_vs_L.png)
#                    from this run.
#   Other arguments go to bench_attention, e.g. --set=grid, --isa=avx2,
#   --benchmark_filter='^sdpa/', --benchmark_min_time=0.2 (see bench_attention --help).
#
# Build directory: build/release under the repository (shared with tools/run_tests.sh), or
# $SIMDATTN_BUILD_DIR. Parallel jobs: all cores, or $SIMDATTN_JOBS. Results: out/ (gitignored),
# or $SIMDATTN_OUT_DIR. Exits with bench_attention's status: 1 if an output check failed.
# To keep timing runs on a shared machine from overlapping, name a lock file in
# $SIMDATTN_BENCH_LOCK: the benchmark and PyTorch runs then hold it (flock), and say so when they
# wait for it. No lock is taken otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SIMDATTN_BUILD_DIR:-$root/build/release}"
jobs="${SIMDATTN_JOBS:-$(nproc)}"
out="${SIMDATTN_OUT_DIR:-$root/out}"
# Debian's matplotlib and torch belong to the system interpreter, whatever python3 is first on PATH.
python=/usr/bin/python3

peers=0
readme=0
args=()
for a in "$@"; do
  case "$a" in
    -h | --help)
      sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the comment above
      exit 0
      ;;
    --peers) peers=1 ;;
    --update-readme) readme=1 ;;
    *) args+=("$a") ;;
  esac
done

bash "$root/tools/install_deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMDATTN_WERROR=ON
cmake --build "$build" -j "$jobs" --target bench_attention

mkdir -p "$out"
json="$out/bench-$(date +%Y%m%d-%H%M%S).json"
commit="$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
command="tools/run_bench.sh${*:+ $*}"
# Runs "$@", holding $SIMDATTN_BENCH_LOCK if it names a lock file.
locked() {
  local lock="${SIMDATTN_BENCH_LOCK:-}"
  if [[ -z "$lock" ]]; then
    "$@"
    return
  fi
  if ! flock -n "$lock" true; then
    echo "run_bench: waiting for the lock $lock (SIMDATTN_BENCH_LOCK), held by another run" >&2
  fi
  flock "$lock" "$@"
}

rc=0
locked "$build/bench/bench_attention" --benchmark_out="$json" \
  --benchmark_out_format=json --benchmark_context=commit="$commit" "${args[@]}" || rc=$?
if [[ ! -s "$json" ]]; then
  echo "run_bench: bench_attention wrote no results (exit status $rc)" >&2
  exit "$((rc == 0 ? 1 : rc))"
fi
ln -sf "$(basename "$json")" "$out/bench.json"

report=("$python" "$root/tools/report.py" "$json" --out-dir "$out/report" --command "$command")
if ((peers)); then
  if "$python" -c 'import torch' 2>/dev/null; then
    locked "$python" "$root/tools/peers_torch.py" --out "$out/peers.json"
    report+=(--peers "$out/peers.json")
  else
    "$python" "$root/tools/peers_torch.py" || true  # says how to install PyTorch
  fi
fi
if ((readme)); then
  report+=(--readme "$root/README.md")
fi
"${report[@]}"
echo "run_bench: benchmark JSON in $json (also $out/bench.json)"
echo "run_bench: table in $out/report/report.md, plots in $out/report/*.png"
if ((rc != 0)); then
  echo "run_bench: bench_attention exited with status $rc (see ERROR lines above)" >&2
fi
exit "$rc"
