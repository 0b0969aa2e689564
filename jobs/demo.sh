#!/usr/bin/env bash
# The main job: install, then train logistic regression on real Fashion-MNIST with 4 workers and kill
# worker 2 (SIGKILL) at 40% of the rounds. Training goes on with 3 workers; worker 2's most
# representative points are handed to the survivors. Falls back to the synthetic config without the data.
set -eu
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source jobs/setup.sh test
CONFIG=configs/fashion_mnist.yaml
if ! python -c "from ftmpi.config import load_config; from ftmpi.storage.data import load_dataset; c=load_config('$CONFIG'); load_dataset(c.data, 0)" 2>/dev/null; then
  echo "demo: Fashion-MNIST not found (see above); running the synthetic config instead" >&2
  CONFIG=configs/smoke.yaml
fi
ROUNDS=$(python -c "from ftmpi.config import load_config; c=load_config('$CONFIG'); import math; print(math.ceil(c.model.n_iterations / c.executor.comm_period))")
KILL_AT=$(( ROUNDS * 2 / 5 ))
RUN_DIR=${RUN_DIR:-runs/demo}
echo "demo: 4 workers on $CONFIG, worker 2 is SIGKILLed at round $KILL_AT of $ROUNDS; outputs in $RUN_DIR"
rc=0
# --overwrite: the demo's run dir is the demo's own, and running it again starts it over (a run dir holding an
# earlier run's checkpoints is otherwise refused, never wiped)
jobs/local.sh 4 "$CONFIG" --run-dir "$RUN_DIR" --overwrite --inject "kill:2@$KILL_AT" "$@" || rc=$?
python -m ftmpi report "$RUN_DIR" 2>/dev/null || cat "$RUN_DIR/summary.json"
exit $rc
