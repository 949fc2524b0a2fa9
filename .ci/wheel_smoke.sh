#!/usr/bin/env bash
# segfw as a user installs it (issue 20): the wheel built from this clone, installed into a fresh
# venv once with the newest versions CI tests (constraints.txt) and once with the oldest that
# pyproject.toml allows (constraints-oldest.txt), `pip check` clean; then, from a directory outside
# the clone, a shrunk quickstart through the console script and through segfw.train, and
# segfw.load(...).predict on the checkpoint. 5 min 31 s of CPU in all (16 min wall on a shared 2-core
# machine at load 14, 2026-12-01), mostly the two venv installs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Built from a copy of what the wheel is made of: in the checkout setuptools would reuse
# segfw.egg-info/SOURCES.txt (the editable install's) and build/, which can hold files the build
# config alone would leave out, or modules deleted since.
mkdir "$WORK/src"
cp -r segfw pyproject.toml README.md "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel "$WORK/src" --no-deps -q -w "$WORK/dist"
WHEEL=$(echo "$WORK"/dist/segfw-*.whl)

# quickstart in seconds: 2 training batches, 1 of each evaluation split (trainer/default.yaml has no
# limit_*_batches keys, hence the +).
SHRINK=(experiment=quickstart trainer.max_epochs=1 +trainer.limit_train_batches=2
    +trainer.limit_val_batches=1 +trainer.limit_test_batches=1 trainer.num_sanity_val_steps=0
    data.sizes.train=32 data.sizes.val=8 data.sizes.test=8 worst_cases=2)

for constraints in constraints.txt constraints-oldest.txt; do
    echo "== wheel with $constraints"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q -c "$ROOT/$constraints" "$WHEEL"
    "$WORK/venv/bin/pip" check
    "$WORK/venv/bin/pip" list --format=freeze 2>/dev/null | grep -iE \
        '^(torch|torchvision|pytorch-lightning|hydra-core|omegaconf|segmentation.models.pytorch|timm|torchmetrics|albumentations|opencv-python-headless|numpy|pillow|rich|tensorboard|wandb|matplotlib)=='
    mkdir "$WORK/outside"
    (
        cd "$WORK/outside"
        export PATH="$WORK/venv/bin:$PATH"
        segfw-train "${SHRINK[@]}" hydra.run.dir=cli
        test -f cli/checkpoints/last.ckpt -a -f cli/metrics.json -a -f cli/train.log
        python - "${SHRINK[@]}" <<'EOF'
import sys

import numpy as np

import segfw

metrics = segfw.train(sys.argv[1:], output_dir="api")
print("segfw.train: test/mIoU", round(metrics["test/mIoU"], 4))
image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
mask = segfw.load("cli/checkpoints/last.ckpt").predict(image)
assert mask.shape == (50, 70) and mask.max() < 4, (mask.shape, mask.max())
print("segfw.load(...).predict: mask", mask.shape, "classes", sorted(np.unique(mask).tolist()))
EOF
    )
    rm -rf "$WORK/venv" "$WORK/outside"
done
