"""``python evaluate.py ckpt_path=PATH [split=test]``: score a checkpoint, and the scoring that
``train.py`` ends with. Both write ``metrics.json``, ``per_image.csv`` and the worst-case gallery
``worst_cases/<split>.png``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from segfw.choices import choose
from segfw.commands.config import (
    build_datamodule,
    build_evaluation_trainer,
    plain,
    unset_missing_class_facts,
)
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import CONF, log_headline, run_command, write_metrics
from segfw.data import SegmentationDataModule
from segfw.training.module import (
    SegmentationModule,
    data_for_checkpoint,
    load_checkpoint,
)
from segfw.training.review import worst_case_gallery, write_per_image_csv

log = logging.getLogger("segfw")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Scores a checkpoint on one split of its training data, or of ``cfg.data`` if given: the
    data's class count, names and ``ignore_index`` must be the checkpoint's (those it leaves unset
    are taken from the checkpoint).

    With ``inference`` set (``segfw/conf/inference/``), each image is predicted at its own size in that
    mode and scored against its unresized labels; otherwise as validation does while training.

    Returns:
        Flat metrics under ``<split>/``, also written to ``<output_dir>/metrics.json``.
    """
    settings = plain(unset_missing_class_facts(cfg))
    split = choose(("val", "test"), settings["split"], "split")
    inference = settings.get("inference")
    checkpoint = load_checkpoint(settings["ckpt_path"])
    data = settings.get("data")
    if data is not None:
        data = data_for_checkpoint(checkpoint["hyper_parameters"], data, settings["ckpt_path"])
    module = SegmentationModule.from_checkpoint(checkpoint, inference=inference, per_image=True)
    # With an inference mode, images and labels load unresized: scores at the labels' resolution.
    unresized: dict[str, Any] = {} if inference is None else {"eval_mode": "whole"}
    if data is not None:
        datamodule = build_datamodule(data, module.hparams["model"], **unresized)
    else:
        datamodule = SegmentationDataModule(
            **{**checkpoint["datamodule_hyper_parameters"], **unresized}
        )
    output_dir = Path(settings["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_evaluation_trainer(cfg)
    metrics, _ = score(trainer, module, datamodule, (split,), output_dir, settings["worst_cases"])
    if inference is not None:
        metrics["inference"] = inference
    metrics["checkpoint"] = settings["ckpt_path"]
    write_metrics(metrics, output_dir / "metrics.json")
    log_headline(metrics, output_dir / "metrics.json")
    return metrics


def score(
    trainer: pl.Trainer,
    module: SegmentationModule,
    datamodule: SegmentationDataModule,
    stages: tuple[str, ...],
    output_dir: Path,
    worst_cases: int,
    ckpt_path: str | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Scores ``module`` (built with ``per_image=True``) on each stage of ``stages``; writes each
    image's scores to ``<output_dir>/per_image.csv`` and the ``worst_cases`` lowest-scoring images
    of each stage to ``<output_dir>/worst_cases/<stage>.png`` (on the first process).

    ``ckpt_path``: the checkpoint ``module``'s weights come from, loaded again by Lightning. On
    SLURM, Lightning given none loads the run dir's newest ``hpc_ckpt_<n>.ckpt`` over them (a
    requeued run's would be a state from the middle of training).

    Returns:
        The stages' metrics, flat (``val/mIoU``, ``val/IoU/<class>`` ...), and each stage's worst
        cases (``segfw.training.review.worst_cases``; none but on the first process). A stage
        whose loader yields nothing (``trainer.limit_val_batches=0``) has neither.
    """
    metrics: dict[str, Any] = {}
    tables = {}
    for stage in stages:
        run = trainer.validate if stage == "val" else trainer.test
        results = run(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        if not results or stage not in module.per_image_results:
            log.warning("no %s figures: the %s loader yielded no batch", stage, stage)
            continue
        metrics |= {k: float(v) for k, v in results[0].items()}
        tables[stage] = module.per_image_results[stage]
    cases: dict[str, list[dict[str, Any]]] = {}
    if trainer.is_global_zero and tables:
        path = output_dir / "per_image.csv"
        write_per_image_csv(path, tables, datamodule, module.hparams["class_names"])
        log.info("per-image scores written to %s", path)
        for stage, (indices, counts) in tables.items():
            if worst_cases:
                picture = output_dir / "worst_cases" / f"{stage}.png"
                # Drawn at the precision the stage was scored at (bf16-mixed: under autocast).
                plugin = trainer.precision_plugin
                context = plugin.val_step_context if stage == "val" else plugin.test_step_context
                cases[stage] = worst_case_gallery(
                    module, datamodule, stage, indices, counts, worst_cases, picture, context
                )
                log.info("the lowest-scoring %s images drawn in %s", stage, picture)
    return metrics, cases


def main() -> None:
    """The command line of ``segfw-evaluate`` and ``evaluate.py``: Hydra's, on the package's configs,
    with an override of a key that is not in the config named beside the valid keys."""
    exit_on_unknown_keys("evaluate", sys.argv[1:])
    _hydra_main()


# The Hydra job is named after this module (``evaluate``): the run dir's log is ``evaluate.log``.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    run_command(evaluate, cfg)
