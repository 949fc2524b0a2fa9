"""DDP on two CPU processes (gloo): one run dir, identical weights on both ranks, and validation
metrics synchronized across them, equal to a single-process evaluation of the saved checkpoint,
on splits whose sizes are odd: every image is scored once, none twice."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import assert_matches_single_process_evaluation, tiny
from segfw.commands.train import train
from segfw.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# torch's SyncBatchNorm has no CPU kernel: on CPU processes, batch norm stays per process.
DDP_CPU = ["trainer=ddp", "trainer.devices=2", "trainer.sync_batchnorm=false"]
# Splits of odd size: Lightning's DistributedSampler would score one image twice in each.
ODD_SPLITS = ["data.sizes.val=15", "data.sizes.test=13"]


def _run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # One intra-op thread per process: two processes share the two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp")
    result = _run(
        [
            sys.executable,
            "train.py",
            *tiny([*DDP_CPU, *ODD_SPLITS]),
            f"hydra.run.dir={run_dir}",
            # Each rank writes its weights after fitting; the checkpoint holds rank 0's only.
            "+callbacks.rank_weights._target_=tests.ddp_helpers.SaveRankWeights",
            f"+callbacks.rank_weights.directory={run_dir / 'ranks'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_both_ranks_end_with_identical_weights(ddp_run):
    rank0 = torch.load(ddp_run / "ranks" / "rank0.pt")
    rank1 = torch.load(ddp_run / "ranks" / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name, weight in rank0.items():
        assert torch.equal(weight, rank1[name]), name


def test_one_run_dir_with_files_written_once(ddp_run):
    # Lightning relaunched rank 1 into the same run dir, with its own log file and no .hydra copy.
    assert (ddp_run / "train.log").is_file() and (ddp_run / "train_ddp_process_1.log").is_file()
    checkpoints = sorted(p.name for p in (ddp_run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints
    assert OmegaConf.load(ddp_run / "config.yaml").trainer.strategy == "ddp"
    steps = torch.load(ddp_run / "checkpoints" / "last.ckpt", map_location="cpu")["global_step"]
    # 32 training images, 8 per batch, split over 2 processes: 2 steps, each on both halves.
    assert steps == 2


def test_validation_metrics_equal_a_single_process_evaluation(ddp_run, tmp_path):
    assert_matches_single_process_evaluation(ddp_run, tmp_path)


def test_each_image_is_scored_once_over_both_processes(ddp_run):
    with open(ddp_run / "per_image.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for split, size in (("val", 15), ("test", 13)):
        indices = [int(row["index"]) for row in rows if row["split"] == split]
        assert sorted(indices) == list(range(size)), split


def test_sync_batchnorm_on_cpu_processes_is_refused(train_config):
    cfg = train_config("trainer=ddp", "trainer.devices=2")
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs GPUs"):
        train(cfg)


def test_ddp_that_lightning_would_relaunch_inside_a_sweep_is_refused(tmp_path):
    result = _run([sys.executable, "train.py", "-m", *tiny(DDP_CPU), f"hydra.sweep.dir={tmp_path}"])
    assert "re-run the whole sweep in every rank" in result.stderr + result.stdout
    assert not list(tmp_path.glob("*/checkpoints"))


def _torchrun(run_dir_override: str):
    """train.py in two CPU processes started by torchrun, as on a cluster node."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return _run([*launcher, "train.py", *tiny([*DDP_CPU, *ODD_SPLITS]), run_dir_override])


@pytest.mark.slow
def test_torchrun_ranks_in_different_run_dirs_are_refused(tmp_path):
    result = _torchrun(f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}")
    assert result.returncode != 0
    assert "write into different run dirs" in result.stderr + result.stdout


@pytest.mark.slow
def test_torchrun_matches_the_lightning_launched_run(ddp_run, tmp_path):
    result = _torchrun(f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((tmp_path / "metrics.json").read_text())
    lightnings = json.loads((ddp_run / "metrics.json").read_text())
    assert ours["val/mIoU"] == lightnings["val/mIoU"]
    # Rank 1 logs into the run dir, as Lightning's relaunched process does, not into the cwd.
    assert (tmp_path / "train_ddp_process_1.log").is_file()
    assert not (ROOT / "train_ddp_process_1.log").exists()
    # docs/scaling.md's layout, the relaunch's: rank 0's lines in train.log, rank 1's in its own
    # file only, and .hydra/ from rank 0 (rank 1 would have written its own job name there).
    logs = ["train.log", "train_ddp_process_1.log"]
    assert sorted(p.name for p in tmp_path.glob("*.log")) == logs
    assert sorted(p.name for p in ddp_run.glob("*.log")) == logs
    rank1 = (tmp_path / "train_ddp_process_1.log").read_text()
    assert "starts from random weights" in rank1 and "metrics written" not in rank1
    assert "metrics written" in (tmp_path / "train.log").read_text()
    assert OmegaConf.load(tmp_path / ".hydra" / "hydra.yaml").hydra.job.name == "train"


def test_a_loss_diverging_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    # Four steps an epoch; rank 1's loss alone becomes NaN at global step 1. Before: rank 1
    # stopped by itself (DDP overwrote the other ranks' divergence counts with rank 0's), and rank 0
    # died in its next broadcast, "Connection closed by peer", exit -9 (on NCCL: a hang).
    result = _run(
        [
            sys.executable,
            "train.py",
            *tiny([*DDP_CPU, "data.batch_size=4", "trainer.max_epochs=2"]),
            f"hydra.run.dir={tmp_path}",
            "+callbacks.nan._target_=tests.ddp_helpers.NanLossAt",
            "+callbacks.nan.step=1",
        ]
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    stopped = "Training stopped: the loss became NaN or infinite (1 step(s) up to global step 2,"
    assert output.count(stopped) == 2, output[-3000:]  # each rank, after the same step
    assert "Connection closed by peer" not in output
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))
