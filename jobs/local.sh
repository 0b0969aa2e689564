#!/usr/bin/env bash
# Run ftmpi on this machine: jobs/local.sh W CONFIG [--max-restarts N] [train args...]
#   W       number of workers (the job has W+1 ranks: rank 0 coordinates)
#   CONFIG  a YAML config (configs/*.yaml)
# Adds the mpirun flags this machine needs: --with-ft ulfm (Open MPI 5's fault tolerance: without it one
# dead rank takes the whole job down), --oversubscribe (more ranks than cores), --allow-run-as-root when
# root. FTMPI_MPIRUN_ARGS adds more; FTMPI_NO_ULFM=1 runs without ULFM (then only hangs are survivable).
# A hard wall-clock limit (FTMPI_JOB_TIMEOUT seconds, default 3600) is the last backstop.
set -u
if [ $# -lt 2 ]; then
  echo "usage: jobs/local.sh W CONFIG [train args...]" >&2
  exit 2
fi
W=$1; CONFIG=$2; shift 2
case "$W" in ''|*[!0-9]*) echo "jobs/local.sh: W must be a number of workers, got '$W'" >&2; exit 2;; esac
[ "$W" -ge 1 ] || { echo "jobs/local.sh: need at least 1 worker" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "jobs/local.sh: config file '$CONFIG' not found" >&2; exit 2; }
PY=${PYTHON:-python3}
MPIRUN=${MPIRUN:-mpirun}
# error-nonzero-status=false: a rank that exits non-zero must not make prterun kill the survivors (measured:
# with 3 workers, one os._exit(1) then one SIGKILL made prterun kill rank 0). ftmpi's verdict comes from
# rank 0 instead (see below).
flags=(--oversubscribe --runtime-options error-nonzero-status=false)
[ "$(id -u)" = "0" ] && flags+=(--allow-run-as-root)
# Transport: ob1 over shared memory and TCP. Open MPI's default also probes OFI/UCX, which costs ~1 s of
# MPI_Init per launch here (0.12 s without); ULFM is best supported on ob1. FTMPI_MPI_TRANSPORT=default
# keeps Open MPI's own choice (e.g. for InfiniBand through UCX on a cluster).
[ "${FTMPI_MPI_TRANSPORT:-ob1}" = "default" ] || flags+=(--mca pml ob1 --mca btl self,sm,tcp)
[ "${FTMPI_NO_ULFM:-0}" = "1" ] || flags+=(--with-ft ulfm)
# one BLAS/numba thread per rank: W+1 ranks share the cores
for v in OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS NUMBA_NUM_THREADS; do
  export "$v=${!v:-1}"
  flags+=(-x "$v")
done
for v in $(env | grep -o '^FTMPI_[A-Z_]*' || true); do flags+=(-x "$v"); done
# shellcheck disable=SC2206
extra=(${FTMPI_MPIRUN_ARGS:-})
# Rank 0 writes its verdict here: mpirun's code also counts ranks that died on the way (a worker killed
# or expelled while training went on), so both are reported and ftmpi's verdict is the exit code.
FTMPI_STATUS_FILE=$(mktemp "${TMPDIR:-/tmp}/ftmpi-status.XXXXXX")
export FTMPI_STATUS_FILE
flags+=(-x FTMPI_STATUS_FILE)
trap 'rm -f "$FTMPI_STATUS_FILE"' EXIT

# --max-restarts N: when rank 0 is lost (no verdict) or crashes, relaunch with --resume RUN_DIR from the
# newest valid checkpoint, up to N times. RUN_DIR is --run-dir/--resume, else the config's shared_folder.
max_restarts=0
args=()
run_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --max-restarts) max_restarts=$2; shift 2;;
    --max-restarts=*) max_restarts=${1#*=}; shift;;
    --run-dir|--resume) run_dir=$2; args+=("$1" "$2"); shift 2;;
    *) args+=("$1"); shift;;
  esac
done
case "$max_restarts" in ''|*[!0-9]*) echo "jobs/local.sh: --max-restarts needs a number" >&2; exit 2;; esac

limit=${FTMPI_JOB_TIMEOUT:-3600}
launch() {
  : > "$FTMPI_STATUS_FILE"
  rc=0
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" \
    "$MPIRUN" "${flags[@]}" "${extra[@]}" -n $((W + 1)) "$PY" -m ftmpi train "$CONFIG" "$@" || rc=$?
  verdict=$(cat "$FTMPI_STATUS_FILE" 2>/dev/null || true)
  # 124 (SIGTERM) or 137 (SIGKILL after --kill-after) from timeout means the limit was hit, but mpirun also
  # exits 137 by itself when a rank died of SIGKILL (rank 0 SIGKILLs a hung worker it declared dead):
  # only a launch that lasted the whole limit overran it.
  overran=0
  if { [ "$rc" = "124" ] || [ "$rc" = "137" ]; } && [ $((SECONDS - t0)) -ge "$limit" ]; then overran=1; fi
}

restarts=0
launch "${args[@]}"
while [ "$restarts" -lt "$max_restarts" ] && { [ -z "$verdict" ] || [ "$verdict" = "1" ]; } \
      && [ "$overran" = "0" ]; do
  if [ -z "$run_dir" ]; then
    run_dir=$("$PY" -c "import sys; from ftmpi.config import load_config; print(load_config(sys.argv[1]).run_dir)" "$CONFIG")
  fi
  if ! ls "$run_dir"/ckpt/round-*.h5 >/dev/null 2>&1; then
    echo "jobs/local.sh: no checkpoint in $run_dir/ckpt to resume from" >&2
    break
  fi
  restarts=$((restarts + 1))
  echo "jobs/local.sh: rank 0 lost; restart $restarts of $max_restarts from the newest checkpoint in $run_dir" >&2
  resume_args=()
  skip=0
  for a in "${args[@]}"; do  # --run-dir X / --resume X become --resume RUN_DIR
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$a" in --run-dir|--resume) skip=1; continue;; esac
    resume_args+=("$a")
  done
  launch "${resume_args[@]}" --resume "$run_dir"
done
if [ "$overran" = "1" ]; then
  echo "jobs/local.sh: the job overran FTMPI_JOB_TIMEOUT=${limit}s and was killed" >&2
  exit 124
fi
if [ -n "$verdict" ]; then
  if [ "$rc" != "0" ] && [ "$verdict" != "$rc" ]; then
    echo "jobs/local.sh: mpirun exited $rc; ftmpi's outcome: exit $verdict" >&2
  fi
  exit "$verdict"
fi
# no verdict: rank 0 never finished (the coordinator was lost, or the job failed before it could say)
[ "$rc" = "0" ] && rc=4
echo "jobs/local.sh: rank 0 left no verdict (coordinator lost or failed at start-up); exit $rc" >&2
exit "$rc"
