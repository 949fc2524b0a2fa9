"""Shared fixtures (helpers the tests import live in helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from helpers import compose_config, tiny


@pytest.fixture
def train_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``train_config(*overrides)``: the train config at tiny size, writing into ``tmp_path``."""

    def make(*overrides: str) -> DictConfig:
        cfg = compose_config("train", tiny(list(overrides)), tmp_path / "run")
        OmegaConf.resolve(cfg)
        return cfg

    return make
