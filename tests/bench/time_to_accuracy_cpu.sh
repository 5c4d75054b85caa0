#!/usr/bin/env bash
# bench/time_to_accuracy.py's dptrain side on the CPU (the PyTorch side needs a GPU): two seeds of
# mnist_fast cut to 5 steps give two runs, a summary line and the table; a run that fails (a bad
# config value) is counted as failed, its error line is dptrain's own, and the script exits 1.
# Exit 77 (skipped) without MNIST or python3.
set -euo pipefail
SOURCE=$1 DPTRAIN=$2 DATA=$3
command -v python3 > /dev/null || { echo "no python3: skipped"; exit 77; }
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || { echo "no MNIST in $DATA: skipped"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; cat "$work/log"; exit 1; }
tta() { python3 "$SOURCE/bench/time_to_accuracy.py" --config "$SOURCE/configs/mnist_fast.yaml" --device cpu --pytorch none \
          --dptrain "$DPTRAIN" --data "$DATA" --set "data.dir=$DATA" --set train.max_steps=5 "$@"; }

tta --seeds 2 --out "$work/ok" > "$work/log" 2>&1 || fail "two seeds exited non-zero"
python3 - "$work/log" <<'PY' || fail "the summary is wrong"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
runs = [r for r in rows if not r.get("summary")]
summary = [r for r in rows if r.get("summary")]
assert [r["seed"] for r in runs] == [1, 2], runs
assert all(r["steps"] == 5 and 0 < r["accuracy"] <= 1 and r["train_eval_s"] > 0 for r in runs), runs
assert len(summary) == 1 and summary[0]["runs"] == 2 and summary[0]["failed"] == 0, summary
assert summary[0]["accuracy_min"] <= summary[0]["accuracy_mean"] <= summary[0]["accuracy_max"], summary
PY
grep -qE "^dptrain +cpu +2 " "$work/log" || fail "no table row"

if tta --seeds 1 --out "$work/bad" --set train.batch_size=0 > "$work/log" 2>&1; then fail "a failed run exited 0"; fi
grep -q '"error": "dptrain: error: .*batch_size' "$work/log" || fail "the failed run's error line does not name the key"
grep -qE "^dptrain +cpu +1 +all failed" "$work/log" || fail "the table does not say the run failed"
echo "ok"
