#!/usr/bin/env bash
# Run a small grid of training jobs one after another, then write a report and the curves:
#   jobs/sweep.sh OUT_DIR [CONFIG]            (CONFIG defaults to configs/fashion_mnist.yaml)
# The grid is workers x comm_period x quantize, plus one run per fault set. Environment variables change it:
#   SWEEP_WORKERS="2 4"          worker counts
#   SWEEP_PERIODS="1 10"         executor.comm_period values
#   SWEEP_QUANT="0 8"            executor.quantize bits (0 = off)
#   SWEEP_FAULTS="kill:2@40%"    one extra run per word; a word is one or more faults joined by commas;
#                                R@P% means P% of the run's rounds; SWEEP_FAULTS="" adds no fault run
#   SWEEP_FAULT_WORKERS=4        workers of the fault runs (default: the largest of SWEEP_WORKERS); they use
#                                the config's own comm_period and quantize
#   SWEEP_SET="model.n_iterations=200 data.partition=label-skew"   --set overrides for every run
# Each run writes OUT_DIR/<name>/ (name like w4-p10-q8, or w4-kill2at24) and its console output goes to
# OUT_DIR/<name>/job.log; a run that fails is reported and the sweep goes on. At the end:
# OUT_DIR/report.md, OUT_DIR/report.csv, OUT_DIR/curves.png (and classes.png when a fault run exists).
# Exit code: 0 if every run succeeded, 1 if any failed, 2 on bad usage.
set -u
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: jobs/sweep.sh OUT_DIR [CONFIG]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
CONFIG=${2:-$ROOT/configs/fashion_mnist.yaml}
[ -f "$CONFIG" ] || { echo "sweep: config file '$CONFIG' not found" >&2; exit 2; }
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
PY=${PYTHON:-python3}
WORKERS=${SWEEP_WORKERS-2 4}
PERIODS=${SWEEP_PERIODS-1 10}
QUANT=${SWEEP_QUANT-0 8}
FAULTS=${SWEEP_FAULTS-kill:2@40%}
read -ra SETS <<< "${SWEEP_SET:-}"
for v in $WORKERS ${SWEEP_FAULT_WORKERS:-} $PERIODS $QUANT; do
  case "$v" in ''|*[!0-9]*) echo "sweep: expected whole numbers in SWEEP_WORKERS/PERIODS/QUANT, got '$v'" >&2
                            exit 2;; esac
done
FAULT_W=${SWEEP_FAULT_WORKERS:-$(printf '%s\n' $WORKERS | sort -n | tail -1)}
if [ -n "$FAULTS" ] && [ -z "$FAULT_W" ]; then
  echo "sweep: SWEEP_FAULTS is set but there is no worker count (set SWEEP_WORKERS or SWEEP_FAULT_WORKERS)" >&2
  exit 2
fi
trap 'echo "sweep: interrupted" >&2; exit 130' INT TERM

set_args=()
for s in "${SETS[@]}"; do set_args+=(--set "$s"); done

# Rounds of a run with the config's own comm_period (and the SWEEP_SET overrides): for R@P% faults.
rounds=$("$PY" - "$CONFIG" "${SETS[@]}" <<'EOF'
import math, sys
from ftmpi.config import load_config
c = load_config(sys.argv[1], sys.argv[2:])
print(math.ceil(c.model.n_iterations / c.executor.comm_period))
EOF
) || { echo "sweep: cannot read $CONFIG with overrides '${SWEEP_SET:-}' (see above)" >&2; exit 2; }

names=(); args=(); fault_dirs=()  # one entry per run: its name and its extra train arguments (one string, split later)
for w in $WORKERS; do
  for p in $PERIODS; do
    for q in $QUANT; do
      names+=("w$w-p$p-q$q"); args+=("$w --set executor.comm_period=$p --set executor.quantize=$q")
    done
  done
done
for word in $FAULTS; do
  injects=""; label=""
  IFS=, read -ra specs <<< "$word"
  for spec in "${specs[@]}"; do
    if [[ $spec =~ ^(.+)@([0-9]+)%(:.*)?$ ]]; then
      spec="${BASH_REMATCH[1]}@$(( rounds * BASH_REMATCH[2] / 100 ))${BASH_REMATCH[3]}"
    fi
    injects+=" --inject $spec"
    label+="-$(echo "$spec" | sed -e 's/:\([0-9]*\)@/\1at/' -e 's/[^A-Za-z0-9.]/_/g')"
  done
  names+=("w$FAULT_W$label"); args+=("$FAULT_W$injects"); fault_dirs+=("$OUT/w$FAULT_W$label")
done

n=${#names[@]}
echo "sweep: $n runs of $CONFIG into $OUT (${rounds} rounds at the config's comm_period)"
failed=()
for i in "${!names[@]}"; do
  name=${names[$i]}
  read -ra a <<< "${args[$i]}"
  dir=$OUT/$name
  rm -rf -- "$dir" && mkdir -p "$dir"
  start=$SECONDS
  rc=0
  (cd "$ROOT" && bash jobs/local.sh "${a[0]}" "$CONFIG" --run-dir "$dir" "${a[@]:1}" "${set_args[@]}") \
    > "$dir/job.log" 2>&1 || rc=$?
  if [ "$rc" = "0" ]; then
    echo "sweep: [$((i + 1))/$n] $name ok ($((SECONDS - start)) s)"
  else
    failed+=("$name")
    echo "sweep: [$((i + 1))/$n] $name FAILED with exit $rc ($((SECONDS - start)) s); last lines of $dir/job.log:" >&2
    tail -n 3 "$dir/job.log" | sed 's/^/    /' >&2
  fi
done

"$PY" -m ftmpi report "$OUT" --markdown --csv "$OUT/report.csv" > "$OUT/report.md" \
  || echo "sweep: the report failed" >&2
"$PY" -m ftmpi report "$OUT"
"$PY" -m ftmpi plot "$OUT"/*/ -o "$OUT/curves.png" || echo "sweep: the curves plot failed" >&2
if [ ${#fault_dirs[@]} -gt 0 ]; then
  "$PY" -m ftmpi plot "${fault_dirs[@]}" --per-class dead -o "$OUT/classes.png" \
    || echo "sweep: the per-class plot failed" >&2
fi
echo "sweep: wrote $OUT/report.md, report.csv and curves.png"
if [ ${#failed[@]} -gt 0 ]; then
  echo "sweep: ${#failed[@]} of $n runs failed: ${failed[*]}" >&2
  exit 1
fi
exit 0
