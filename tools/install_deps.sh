#!/usr/bin/env bash
# Installs the Debian 12 packages that simdattn's build, tests, benchmark and report need, and
# only those that are missing: nothing is touched (not even `apt-get update`) when all are present.
# Run as root (or with sudo available). Extra package names may be given as arguments.
#
# OpenMPI (libopenmpi-dev, openmpi-bin) serves the optional simdattn_mpi component, its tests
# and bench_mpi; the core library builds without it (-DSIMDATTN_MPI=OFF).
#
# PyTorch (python3-torch) is deliberately not here: only tools/make_golden.py and the optional
# peer benchmark use it, and the committed fixtures make it unnecessary for tests.
set -euo pipefail

for a in "$@"; do
  case "$a" in
    -h | --help)
      sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the comment above
      exit 0
      ;;
    -*)
      echo "install_deps: '$a' is not a package name (see --help)" >&2
      exit 2
      ;;
  esac
done

packages=(g++ cmake make libxsimd-dev catch2 libbenchmark-dev nlohmann-json3-dev python3
          python3-matplotlib libopenmpi-dev openmpi-bin "$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install_deps: all ${#packages[@]} Debian packages already installed"
  exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "install_deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "install_deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
