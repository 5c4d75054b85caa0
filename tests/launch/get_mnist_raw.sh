#!/usr/bin/env bash
# launch/get_mnist.sh on a copy of the verified .gz files in DATA (so it fetches nothing): it
# writes the raw files beside them with the right SHA-256, and rewrites a corrupt raw file from its
# .gz, leaving no temporary file. Exit 77 (skipped) without MNIST.
set -euo pipefail
DATA=$1
SCRIPT=$(dirname "$0")/../../launch/get_mnist.sh
for n in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$DATA/$n.gz" ] || { echo "no $DATA/$n.gz: skipped"; exit 77; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$DATA"/*-ubyte.gz "$work/"
fail() { echo "FAIL: $*"; exit 1; }
bash "$SCRIPT" "$work" > "$work/log" 2>&1 || { cat "$work/log"; fail "get_mnist exited non-zero"; }
want_train=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
[ "$(sha256sum "$work/train-images-idx3-ubyte" | cut -d' ' -f1)" = "$want_train" ] || fail "raw training images missing or wrong"
for n in train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$work/$n" ] || fail "no raw $n"
done
# A corrupt raw file (one byte) is written again from its .gz.
printf 'X' | dd of="$work/train-images-idx3-ubyte" bs=1 seek=1000 conv=notrunc 2>/dev/null
bash "$SCRIPT" "$work" > "$work/log" 2>&1 || { cat "$work/log"; fail "second run exited non-zero"; }
[ "$(sha256sum "$work/train-images-idx3-ubyte" | cut -d' ' -f1)" = "$want_train" ] || fail "a corrupt raw file was kept"
ls -a "$work" | grep -q '\.tmp$' && fail "a temporary file was left behind"
echo "ok"
