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
cp -r segfw hydra_plugins pyproject.toml README.md "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel "$WORK/src" --no-deps -q -w "$WORK/dist"
WHEEL=$(echo "$WORK"/dist/segfw-*.whl)

# quickstart in seconds: 2 training batches, 1 of each evaluation split.
SHRINK=(experiment=quickstart trainer.max_epochs=1 trainer.limit_train_batches=2
    trainer.limit_val_batches=1 trainer.limit_test_batches=1 trainer.num_sanity_val_steps=0
    data.sizes.train=32 data.sizes.val=8 data.sizes.test=8 worst_cases=2)

# An Optuna sweep of 4 trials, 2 at a time (submitit workers sharing one journal), its first trials
# queued so that each outcome occurs: a good one, a failing one (batch size 0), one thrown off by a
# far too high learning rate that the median pruner stops at its first epoch on val/loss, a good one
# (no warm-up: the quickstart's would keep the learning rate low through the trials' 4 steps).
sweep() {
    mkdir sweep
    python - <<'EOF'
import optuna

from segfw.studies import JOURNAL_FILE, open_storage

storage = open_storage(f"sweep/{JOURNAL_FILE}")
study = optuna.create_study(study_name="segfw", storage=storage, direction="minimize")
for batch_size, lr in ((8, 1e-4), (0, 1e-4), (8, 0.1), (8, 1e-4)):
    study.enqueue_trial({"data.batch_size": batch_size, "optimizer.lr": lr})
EOF
    OMP_NUM_THREADS=1 segfw-train -m experiment=quickstart hparams_search=optuna \
        hydra/launcher=submitit_local hydra.sweep.dir=sweep hydra.sweeper.n_trials=4 \
        hydra.sweeper.n_jobs=2 hydra.sweeper.pruner.n_startup_trials=1 \
        hydra.sweeper.pruner.n_warmup_steps=0 optimized_metric=val/loss \
        hydra.sweeper.direction=minimize "data.batch_size=choice(0,8)" \
        "optimizer.lr=choice(0.0001,0.1)" loss=ce optimizer.weight_decay=0 backbone=mobilenetv2 \
        backbone.weights=null model.height=32 model.width=32 data.sizes.train=16 \
        data.sizes.val=8 data.sizes.test=8 trainer.max_epochs=2 trainer.num_sanity_val_steps=0 \
        scheduler.warmup_steps=0 worst_cases=0
    python - <<'EOF'
import collections

import optuna

from segfw.studies import JOURNAL_FILE, open_storage

study = optuna.load_study(study_name="segfw", storage=open_storage(f"sweep/{JOURNAL_FILE}"))
states = collections.Counter(t.state.name for t in study.trials)
print("optuna", optuna.__version__, "sweep of 4 trials, 2 workers:", dict(states))
assert states == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1}, states
EOF
}

for constraints in constraints.txt constraints-oldest.txt; do
    echo "== wheel with $constraints"
    python3 -m venv "$WORK/venv"
    # The sweep extra with the newest versions only: constraints-oldest.txt holds segfw's core
    # dependencies, and the extra's own lower bounds are not installed together anywhere.
    extra=""
    if [ "$constraints" = constraints.txt ]; then extra="[sweep]"; fi
    "$WORK/venv/bin/pip" install -q -c "$ROOT/$constraints" "$WHEEL$extra"
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
        if [ -n "$extra" ]; then
            sweep
        fi
    )
    rm -rf "$WORK/venv" "$WORK/outside"
done
