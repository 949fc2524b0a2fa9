"""Lightning callbacks for reviewing runs: validation pictures, the best checkpoint in every logger,
and a progress bar that does not stall the GPU."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from segfw.errors import ConfigError
from segfw.lightning_compat import logging_step
from segfw.training.module import SegmentationModule
from segfw.training.review import gallery, predict_items
from segfw.visualize import (
    checkpoint_palette,
    confusion_figure,
    error_map,
    sample_strip,
    shrink,
)

log = logging.getLogger(__name__)


class ValidationSamples(pl.Callback):
    """Draws a fixed set of validation samples and the epoch's confusion matrix, for TensorBoard
    (images) and wandb (images with toggleable ground-truth and prediction masks).

    The samples are spread evenly over the validation split and stay the same every epoch, so the
    dashboards show how the predictions on each change. The cost is a forward pass over
    ``num_samples`` images at the end of a validation epoch, batched and padded as validation
    does (so images of any size work, and the pictures show what validation scored); nothing
    happens per step, during the sanity check, outside ``fit``, or when no TensorBoard or wandb
    logger is attached.

    Works with :class:`segfw.training.module.SegmentationModule`: it reads the ``class_names``,
    ``palette`` and ``ignore_index`` hyperparameters and the ``last_confusion`` matrices.

    TensorBoard tags: ``val/samples/<dataset index>`` (image | ground truth | prediction, masks in
    the class palette, ignored pixels in :data:`segfw.visualize.IGNORE_COLOR`) and
    ``val/confusion_matrix``; wandb keys: ``val/samples`` and ``val/confusion_matrix``.

    Args:
        num_samples: validation samples shown (0: only the confusion matrix).
        every_n_epochs: draw after every n-th validation epoch (counting from 1, like
            ``check_val_every_n_epoch``).
        max_size: longest side, in pixels, of each panel; larger samples are scaled down, which
            keeps event files and wandb media small.
        confusion_matrix: also draw the validation confusion matrix.
    """

    def __init__(
        self,
        num_samples: int = 8,
        every_n_epochs: int = 1,
        max_size: int = 256,
        confusion_matrix: bool = True,
    ) -> None:
        if num_samples < 0 or every_n_epochs < 1 or max_size < 8:
            raise ConfigError(
                f"callbacks.validation_samples: num_samples={num_samples} must be >= 0, "
                f"every_n_epochs={every_n_epochs} >= 1 and max_size={max_size} >= 8."
            )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.max_size = max_size
        self.confusion_matrix = confusion_matrix
        self._samples: dict[str, Any] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end runs after the module has computed the epoch's confusion matrix.
        if (
            trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or not trainer.is_global_zero
            or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        if not loggers:
            return
        start = time.perf_counter()
        hparams = pl_module.hparams
        palette = checkpoint_palette(hparams)
        samples = self._fixed_samples(trainer) if self.num_samples else None
        if samples is not None:
            # Documented to work with SegmentationModule (above); Lightning types the hook wider.
            module = cast(SegmentationModule, pl_module)
            samples["prediction"] = self._predict(trainer, module, samples)
        figure = None
        confusion = getattr(pl_module, "last_confusion", {}).get("val")
        if self.confusion_matrix and confusion is not None:
            title = f"val confusion matrix, epoch {trainer.current_epoch} (% of each true class)"
            figure = confusion_figure(confusion.cpu().numpy(), hparams["class_names"], title)
        # The step Lightning logs this validation's scalars at (as its LearningRateMonitor does),
        # so that pictures and curves line up.
        step = logging_step(trainer)
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                self._to_tensorboard(logger, step, samples, palette, figure)
            else:
                self._to_wandb(logger, step, samples, hparams, figure)
        log.debug("validation pictures drawn and logged in %.3f s", time.perf_counter() - start)

    def _fixed_samples(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """The fixed validation samples, read once: ``items`` (the dataset's samples, each at its
        own size), the dataset ``index`` and ``name`` of each, and the validation ``loader``;
        ``None`` without validation data."""
        if self._samples is None:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            if loader is None or len(loader.dataset) == 0:
                return None
            dataset = loader.dataset
            count = min(self.num_samples, len(dataset))
            indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
            source = getattr(dataset, "source", None)
            self._samples = {
                "items": [dataset[int(i)] for i in indices],
                "index": [int(i) for i in indices],
                "name": [source.name(int(i)) if source else str(i) for i in indices],
                "loader": loader,
            }
        return dict(self._samples)

    @staticmethod
    def _predict(
        trainer: pl.Trainer, pl_module: SegmentationModule, samples: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Class indices (H, W) uint8 on the CPU of each sample, at its own size.

        The samples are batched and padded as validation batches them (at most the evaluation
        batch size, images of one padded size together), so that the pictures show the
        predictions validation scored, at the precision it ran at.
        """
        loader = samples["loader"]
        batch_size = getattr(loader.batch_sampler, "batch_size", None) or 1
        return predict_items(
            pl_module,
            samples["items"],
            batch_size,
            loader.collate_fn,
            trainer.precision_plugin.val_step_context,
        )

    def _panels(self, samples: dict[str, Any], k: int) -> tuple[np.ndarray, ...]:
        """Sample ``k``'s image, ground truth and prediction as numpy, at most max_size."""
        item = samples["items"][k]
        return (
            shrink(item["image"].permute(1, 2, 0).numpy(), self.max_size, nearest=False),
            shrink(item["mask"].numpy(), self.max_size, nearest=True),
            shrink(samples["prediction"][k].numpy(), self.max_size, nearest=True),
        )

    def _to_tensorboard(
        self,
        logger: TensorBoardLogger,
        step: int,
        samples: dict[str, Any] | None,
        palette: np.ndarray,
        figure: np.ndarray | None,
    ) -> None:
        writer = logger.experiment
        if samples is not None:
            digits = len(str(max(samples["index"])))
            for k, index in enumerate(samples["index"]):
                image, target, prediction = self._panels(samples, k)
                strip = sample_strip(image, target, prediction, palette)
                # Zero-padded so that TensorBoard's alphabetical order is the dataset order.
                writer.add_image(f"val/samples/{index:0{digits}d}", strip, step, dataformats="HWC")
        if figure is not None:
            writer.add_image("val/confusion_matrix", figure, step, dataformats="HWC")

    def _to_wandb(
        self,
        logger: WandbLogger,
        step: int,
        samples: dict[str, Any] | None,
        hparams: Any,
        figure: np.ndarray | None,
    ) -> None:
        import wandb

        labels = dict(enumerate(hparams["class_names"]))
        labels[hparams["ignore_index"]] = "ignored"
        media: dict[str, Any] = {}
        if samples is not None:
            images = []
            for k, (index, name) in enumerate(zip(samples["index"], samples["name"], strict=True)):
                image, target, prediction = self._panels(samples, k)
                masks = {
                    "ground_truth": {"mask_data": target, "class_labels": labels},
                    "prediction": {"mask_data": prediction, "class_labels": labels},
                }
                images.append(wandb.Image(image, caption=f"#{index} {name}", masks=masks))
            media["val/samples"] = images
        if figure is not None:
            media["val/confusion_matrix"] = wandb.Image(figure)
        if media:
            logger.log_metrics(media, step=step)


class LogBestCheckpoint(pl.Callback):
    """When training ends, records the best checkpoint in every logger: as a ``model`` artifact
    (aliases ``best``, ``latest``) and summary values in wandb, and its path, monitored metric and
    score in the others (TensorBoard: a ``best_checkpoint`` text card; CSV and others: their
    hyperparameters, ``hparams["yaml"]``).

    The wandb artifact is named ``model-<run id>``: a resumed run adds a new version of it.
    """

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.best_model_path:
            return
        path = Path(checkpoint.best_model_path).absolute()
        score = checkpoint.best_model_score
        facts = {
            "best_checkpoint": str(path),
            "best_checkpoint_monitor": checkpoint.monitor,
            "best_checkpoint_score": None if score is None else float(score),
        }
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _wandb_artifact(logger, path, facts)
            elif isinstance(logger, TensorBoardLogger):
                # Its hparams["yaml"] is written once, at the start: a text card shows the path.
                text = f"`{path}`  \n{checkpoint.monitor} = {facts['best_checkpoint_score']}"
                logger.experiment.add_text("best_checkpoint", text, trainer.global_step)
            else:
                logger.log_hyperparams(facts)


def _wandb_artifact(logger: WandbLogger, path: Path, facts: dict[str, Any]) -> None:
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=facts)
    # The file is copied to wandb's staging area ("mutable" policy), so an offline run can be
    # synced after the run dir's checkpoints were replaced or deleted.
    artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact, aliases=["best", "latest"])
    run.summary.update(facts)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, reading the metrics it shows only every
    ``trainer.log_every_n_steps`` optimizer steps.

    Lightning's bar converts the progress-bar metrics (``train/loss``) to Python numbers after
    every batch: on a GPU, a host-device synchronization per step that stalls the pipeline. The
    loggers read them every ``log_every_n_steps`` anyway; the bar now reads them as often (once
    per epoch when ``log_every_n_steps=0`` turns step logging off).

    Args:
        refresh_rate: redraws per second (0 hides the bar).
        leave: keep each epoch's finished bar on the terminal.
    """

    def __init__(self, refresh_rate: int = 10, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._shown: dict[str, Any] | None = None
        self._read_at_step = 0
        self._read_in_epoch = -1

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        interval = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set at run time
        if interval:
            recent = trainer.global_step - self._read_at_step < interval
        else:
            # Step logging off: the bar reads what it shows once per training epoch.
            recent = trainer.current_epoch == self._read_in_epoch
        if trainer.training and self._shown is not None and recent:
            return self._shown
        self._read_at_step, self._read_in_epoch = trainer.global_step, trainer.current_epoch
        self._shown = super().get_metrics(trainer, pl_module)
        return self._shown


def log_worst_cases(
    loggers: Sequence[Logger],
    stage: str,
    cases: Sequence[dict[str, Any]],
    palette: np.ndarray,
    hparams: Mapping[str, Any],
    step: int = 0,
) -> None:
    """The lowest-scoring images of a split (``segfw.training.review.worst_cases``) into each
    TensorBoard logger (IMAGES, tag ``<stage>/worst_cases``: one picture, a row per image) and
    each wandb logger (a ``<stage>/worst_cases`` Table: rank, dataset index, file, mIoU, the image
    with its ground-truth and predicted masks under the class names, and the error map), so that
    they can be sorted and filtered there."""
    ignore_index = hparams["ignore_index"]
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            picture = gallery(cases, palette, ignore_index)
            logger.experiment.add_image(f"{stage}/worst_cases", picture, step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            import wandb

            labels = dict(enumerate(hparams["class_names"]))
            labels[ignore_index] = "ignored"
            table = wandb.Table(columns=["rank", "index", "file", "mIoU", "image", "error_map"])
            for rank, case in enumerate(cases, start=1):
                masks = {
                    "ground_truth": {"mask_data": case["target"], "class_labels": labels},
                    "prediction": {"mask_data": case["prediction"], "class_labels": labels},
                }
                table.add_data(
                    rank,
                    case["index"],
                    case["name"],
                    case["mIoU"],
                    wandb.Image(case["image"], masks=masks),
                    wandb.Image(error_map(case["target"], case["prediction"], ignore_index)),
                )
            media: dict[str, Any] = {f"{stage}/worst_cases": table}
            logger.log_metrics(media, step=step)
