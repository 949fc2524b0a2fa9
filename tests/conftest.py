"""Shared fixtures: the real Hydra configs, composed and shrunk to CPU-test size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"

# Small enough for 2 CPU cores, large enough for a five-level encoder (stride 32).
TINY = [
    "model.height=64",
    "model.width=64",
    "backbone=mobilenetv2",
    "data.sizes.train=32",
    "data.sizes.val=16",
    "data.sizes.test=16",
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


def compose_config(
    config_name: str, overrides: list[str], output_dir: Path | None = None
) -> DictConfig:
    """Composes ``conf/<config_name>.yaml`` with ``overrides``, as the command line would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def train_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``train_config(*overrides)``: the train config at tiny size, writing into ``tmp_path``."""

    def make(*overrides: str) -> DictConfig:
        cfg = compose_config("train", TINY + list(overrides), tmp_path / "run")
        OmegaConf.resolve(cfg)
        return cfg

    return make
