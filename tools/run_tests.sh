#!/usr/bin/env bash
# The README's test command: installs missing Debian packages, builds Release with warnings as
# errors, and runs every test (the Catch2 suite once per ISA this machine runs, and the demo).
#
# Build directory: build/release under the repository, or $SIMDATTN_BUILD_DIR.
# Parallel jobs: all cores, or $SIMDATTN_JOBS. It takes no arguments.
set -euo pipefail

if (($# > 0)); then
  case "$1" in
    -h | --help)
      sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the comment above
      exit 0
      ;;
    *)
      echo "run_tests: unexpected argument '$1'; it takes none (see --help)" >&2
      exit 2
      ;;
  esac
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SIMDATTN_BUILD_DIR:-$root/build/release}"
jobs="${SIMDATTN_JOBS:-$(nproc)}"

bash "$root/tools/install_deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMDATTN_WERROR=ON
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure
