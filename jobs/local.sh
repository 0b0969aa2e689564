#!/usr/bin/env bash
# Run ftmpi on this machine: jobs/local.sh W CONFIG [--max-restarts N] [--hostfile F] [train args...]
#   W       number of workers (the job has 1+W+N ranks: rank 0 coordinates, ranks 1..W train, and ranks
#           W+1..W+N are the hot spares of executor.spares: N, from CONFIG or --set executor.spares=N)
#   CONFIG  a YAML config (configs/*.yaml)
# A thin wrapper around `python -m ftmpi launch -n W CONFIG ...` (ftmpi/launch/launcher.py), which adds the mpirun
# flags (--with-ft ulfm, error-nonzero-status=false, ob1 over sm/tcp, oversubscribe, one thread per rank),
# reads rank 0's verdict, enforces FTMPI_JOB_TIMEOUT (seconds, default 3600), restarts after losing rank 0
# or a host (--max-restarts; a relaunch reads the --hostfile again and uses every host that answers), and
# turns SIGTERM/SIGUSR1/Ctrl-C into "checkpoint now and stop" (exit 6).
# Environment: PYTHON (the interpreter with ftmpi installed), MPIRUN or FTMPI_MPIRUN, FTMPI_MPIRUN_ARGS,
# FTMPI_NO_ULFM=1, FTMPI_MPI_TRANSPORT=default, FTMPI_PROBE_TIMEOUT (seconds a relaunch waits for a host, 20).
set -u
if [ $# -lt 2 ]; then
  echo "usage: jobs/local.sh W CONFIG [train args...]  (1 + W + N ranks, N = executor.spares)" >&2
  exit 2
fi
case "$1" in ''|*[!0-9]*) echo "jobs/local.sh: W must be a number of workers, got '$1'" >&2; exit 2;; esac
[ "$1" -ge 1 ] || { echo "jobs/local.sh: need at least 1 worker" >&2; exit 2; }
[ -f "$2" ] || { echo "jobs/local.sh: config file '$2' not found" >&2; exit 2; }
W=$1; shift
FTMPI_LAUNCH_NAME=jobs/local.sh exec "${PYTHON:-python3}" -m ftmpi launch -n "$W" "$@"
