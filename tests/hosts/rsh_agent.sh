#!/usr/bin/env bash
# An rsh agent for mpirun (--mca plm_rsh_agent THIS) that simulates several hosts on one machine: it skips
# leading options, takes the host, and runs the command there, i.e. here in a UTS namespace named after it.
# A host listed in $FTMPI_TEST_DOWN_HOSTS (comma-separated) is down: the agent fails like ssh would.
while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done
host=$1; shift
# So is a host named on a line of the file $FTMPI_TEST_DOWN_FILE, read at each call: a test takes a host down
# and brings it back by editing that file while the launcher runs.
down=${FTMPI_TEST_DOWN_HOSTS:-}
if [ -n "${FTMPI_TEST_DOWN_FILE:-}" ] && [ -f "$FTMPI_TEST_DOWN_FILE" ]; then
  down="$down,$(tr -s ' \n' ',,' < "$FTMPI_TEST_DOWN_FILE")"
fi
case ",$down," in *",$host,"*) echo "ssh: connect to host $host: No route to host" >&2; exit 255;; esac
# A hard limit on every daemon it starts (the launcher's own limit plus a margin): a watchdog outside the
# daemon's signal path SIGKILLs it if it is still there (timeout(1) in the path forwards mpirun's SIGTERM at
# a node loss to the surviving host's ranks, measured: they took it for a preemption).
limit=$(( ${FTMPI_JOB_TIMEOUT:-300} + 30 ))
me=$$
( exec >/dev/null 2>&1 </dev/null; sleep "$limit"; kill -KILL "$me" ) &
# A host listed in $FTMPI_TEST_BLIND_HOSTS does not see the folder $FTMPI_TEST_BLIND_DIR: it runs in a mount
# namespace of its own too, with an empty tmpfs mounted over that folder (a dataset on rank 0's host only).
case ",${FTMPI_TEST_BLIND_HOSTS:-}," in
  *",$host,"*) exec unshare --uts --mount bash -c \
      "mount -t tmpfs -o size=1m ftmpi-blind '${FTMPI_TEST_BLIND_DIR:?}' || exit 97; hostname $host; $*";;
esac
exec unshare --uts bash -c "hostname $host; $*"
