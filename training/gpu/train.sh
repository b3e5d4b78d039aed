#!/usr/bin/env bash
# Train a package on a GPU machine that has JAX and no TensorFlow (Keras 3's JAX backend): the
# `.keras` files it writes load in the node's TensorFlow unchanged. Run from the checkout's
# root; WHEELS is a folder made by `training/gpu/wheels.sh` ("-" when the packages are there);
# COMMAND is `train` (from scratch) or `finetune` (further from a package's weights).
#
#   training/gpu/train.sh WHEELS OUT COMMAND [its lacuna-train arguments but --out...]
#
# e.g. training/gpu/train.sh .whl "$OUT" train --version 0.15.0 --base-filters 24 --epochs 60
#      training/gpu/train.sh .whl "$OUT" finetune --model models/default --version 0.15.0 \
#        --epochs 40 --loss crop-tversky+ce
#
# The package trains in WORK (default: a new temporary folder), with its checkpoints and logs;
# OUT receives only what calibration and evaluation elsewhere need: manifest.json,
# MODEL_CARD.md, both networks and primary-epochs.csv (the loss per epoch). A network over
# SPLIT_MB megabytes (default 15; 0: never) is cut into NAME.part-aa, -ab... for transports
# that limit a file's size: `cat NAME.part-* > NAME` joins it, and the manifest's sha256 checks
# the join (`lacuna model verify`).
set -euo pipefail
usage="usage: train.sh WHEELS OUT train|finetune [lacuna-train arguments...]"
wheels=${1:?$usage}
out=${2:?$usage}
command=${3:?$usage}
case $command in train | finetune) ;; *) echo "$usage" >&2; exit 2 ;; esac
shift 3
work=${WORK:-$(mktemp -d)}
split_mb=${SPLIT_MB:-15}
if [ "$wheels" != "-" ]; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
python3 -c 'import jax; print("JAX", jax.__version__, "devices", jax.devices())'
# No pipe after it: if the process dies hard, the subject-rendering workers it spawned can
# outlive it, and a pipe they hold open would keep this script waiting until its time ran out.
python3 -c 'import sys; from training.cli import main; sys.exit(main())' \
  "$command" --out "$work/package" "$@"
mkdir -p "$out"
cp "$work/package/manifest.json" "$work/package/MODEL_CARD.md" "$out/"
cp "$work/package/logs/primary/epochs.csv" "$out/primary-epochs.csv"
for file in "$work/package"/*.keras; do
  if [ "$split_mb" != 0 ] && [ "$(stat -c %s "$file")" -gt $((split_mb * 1000000)) ]; then
    split -b "${split_mb}MB" "$file" "$out/$(basename "$file").part-"
  else
    cp "$file" "$out/"
  fi
done
ls -l "$out"
