"""Test helpers: the real Hydra configs, composed and shrunk to CPU-test size, a tiny folder
dataset, and the smallest Lightning module."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[1] / "segfw" / "conf"

# Small enough for 2 CPU cores, large enough for a five-level encoder (stride 32).
TINY = [
    "model.height=64",
    "model.width=64",
    "backbone=mobilenetv2",
    "backbone.weights=null",  # no network in tests; real datasets default to imagenet
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "+trainer.enable_model_summary=false",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
]
# The embedded dataset's split sizes, for configs that keep data=shapes.
TINY_SHAPES = ["data.sizes.train=32", "data.sizes.val=16", "data.sizes.test=16"]


def tiny(overrides: list[str]) -> list[str]:
    """TINY overrides for ``overrides``; the shapes sizes unless another dataset is chosen."""
    other_data = any(o.startswith("data=") and o != "data=shapes" for o in overrides)
    return TINY + ([] if other_data else TINY_SHAPES) + list(overrides)


def compose_config(
    config_name: str, overrides: list[str], output_dir: Path | None = None
) -> DictConfig:
    """Composes ``segfw/conf/<config_name>.yaml`` with ``overrides``, as the command line would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.output_dir = str(output_dir)
    return cfg


def write_folder_dataset(
    root: Path,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = (48, 64),
    num_classes: int = 3,
) -> Path:
    """Writes a tiny ``data=folder`` dataset: random images, masks of blocky class regions."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    height, width = size
    for split, count in (counts or {"train": 4, "val": 2, "test": 2}).items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mask = rng.integers(0, num_classes, (height // 8, width // 8)).astype(np.uint8)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "images" / split / f"img{i}.png"), image)
            cv2.imwrite(str(root / "masks" / split / f"img{i}.png"), mask)
    return root


def assert_matches_single_process_evaluation(run_dir: Path, output_dir: Path) -> None:
    """A distributed run's validation scores (``run_dir/metrics.json``) equal evaluate.py's on its
    best checkpoint in one process: no image counted twice or missed."""
    import json

    import pytest

    from segfw.commands.evaluate import evaluate

    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = compose_config(
        "evaluate",
        [f"ckpt_path={metrics['best_checkpoint']}", "split=val", "trainer.accelerator=cpu"],
        output_dir,
    )
    single = evaluate(cfg)
    for key in ("val/mIoU", "val/dice", "val/pixel_acc", "val/IoU/background", "val/IoU/square"):
        assert single[key] == pytest.approx(metrics[key], abs=1e-12), key
    assert single["val/loss"] == pytest.approx(metrics["val/loss"], abs=1e-6)


class Regression(pl.LightningModule):
    """The smallest module that logs a loss to the progress bar, as SegmentationModule does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randn(48, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
