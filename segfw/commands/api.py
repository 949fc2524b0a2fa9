"""``segfw.train`` and ``segfw.evaluate``: the commands from Python, composing the same configs.

    import segfw
    metrics = segfw.train(["experiment=quickstart", "trainer.max_epochs=1"], output_dir="runs/a")
    scores = segfw.evaluate("runs/a/checkpoints/last.ckpt", split="test")

Overrides are written as on the command line. Errors are raised as exceptions (``segfw.errors``),
not turned into exit codes. The configs are the package's own (``segfw/conf/``), in a clone and in an installed wheel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from segfw.commands.evaluate import evaluate as evaluate_command
from segfw.commands.overrides import check_overrides
from segfw.commands.run import CONF
from segfw.commands.train import train as train_command
from segfw.errors import ConfigError


def train(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> dict[str, Any]:
    """Trains as ``python train.py <overrides>`` does; returns the metrics of ``metrics.json``.

    Args:
        overrides: command-line overrides, e.g. ``["model=unetpp", "optimizer.lr=3e-3"]``.
        output_dir: the run dir; ``None``: ``hydra.run.dir`` (``logs/runs/<date>_<time>``).
    """
    return train_command(_compose("train", overrides, output_dir))


def evaluate(
    ckpt_path: str | Path,
    split: str = "test",
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Scores a checkpoint as ``python evaluate.py`` does; returns the metrics.

    Args:
        ckpt_path: a ``.ckpt`` written by training.
        split: ``val`` or ``test``.
        overrides: more overrides, e.g. ``["inference=slide"]``.
        output_dir: where ``metrics.json``, ``per_image.csv`` and ``worst_cases/`` go; ``None``:
            ``hydra.run.dir``.
    """
    arguments = [f"ckpt_path={ckpt_path}", f"split={split}", *overrides]
    return evaluate_command(_compose("evaluate", arguments, output_dir))


def _compose(name: str, overrides: Sequence[str], output_dir: str | Path | None) -> DictConfig:
    try:
        check_overrides(CONF, name, overrides)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name=name):
            cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        # A caller from Python catches segfw.errors, whatever layer found the fault.
        raise ConfigError(f"{name} overrides {list(overrides)}: {error}") from None
    # The config's ${hydra:...} values (the run dir) read Hydra's state, as under @hydra.main.
    HydraConfig.instance().set_config(cfg)
    directory = Path(output_dir) if output_dir is not None else Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        cfg.output_dir = str(directory)
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg
