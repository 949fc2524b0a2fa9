"""The LightningModule: network, loss, optimization and metrics for one segmentation task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from segfw.errors import NonFiniteLossError
from segfw.models import build_model, get_backbone
from segfw.training.losses import build_loss
from segfw.training.metrics import ConfusionMatrix, scores_from_confusion
from segfw.training.optim import build_optimizer, build_scheduler

STAGES = ("train", "val", "test")


class SegmentationModule(pl.LightningModule):
    """Trains and evaluates a segmentation network.

    Every argument is a plain value (a config section as a dict), saved as a hyperparameter, so
    ``SegmentationModule.load_from_checkpoint(path)`` rebuilds the module without Hydra.

    Batches hold ``image`` as uint8 (N, 3, H, W) and ``mask`` as uint8 (N, H, W); the module
    normalizes with the backbone's statistics on its own device.

    Args:
        model: the ``model`` config (``name``, ``height``, ``width``, architecture arguments).
        backbone: the ``backbone`` config (``name``, ``weights``).
        num_classes: number of classes.
        class_names: one name per class, for the per-class metric keys.
        ignore_index: mask value left out of the loss and the metrics.
        loss: the ``loss`` config (``name`` and its settings).
        optimizer: the ``optimizer`` config (``name``, ``lr``, ``weight_decay`` ...).
        scheduler: the ``scheduler`` config (``name``, ``warmup_steps`` ...).
        palette: one RGB colour per class, for visualizations.
        train_metrics: also accumulate mIoU etc. on the training batches (costs an argmax and a
            scatter per step).
        channels_last: run the network in NHWC memory layout: faster convolutions on CPUs (oneDNN)
            and on GPU tensor cores; the weights saved are the same either way.
        compile: compile the network with ``torch.compile`` when training starts (slow first
            steps, faster ones after; the state dict keys stay unchanged).
    """

    def __init__(
        self,
        model: dict[str, Any],
        backbone: dict[str, Any],
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        loss: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        train_metrics: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(model, backbone, num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        spec = get_backbone(backbone["name"])
        # Inputs arrive as 0..255; fold the 1/255 into the statistics.
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, False)
        self.criterion = build_loss(loss or {"name": "ce"}, num_classes, ignore_index)
        metric_stages = STAGES if train_metrics else STAGES[1:]
        self.confusion = nn.ModuleDict(
            {stage: ConfusionMatrix(num_classes, ignore_index) for stage in metric_stages}
        )
        # Each stage's matrix of its latest epoch, for callbacks that draw it (segfw.training.callbacks).
        self.last_confusion: dict[str, torch.Tensor] = {}
        # Set by evaluate to score with an inference mode (segfw.inference.modes: sliding window,
        # test-time augmentation) at the labels' resolution; None: one forward pass per batch.
        self.inference: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
        # Count of non-finite losses, kept on the device and read only every log interval, so the
        # check costs no host synchronization per step.
        self.register_buffer("nonfinite_losses", torch.zeros((), dtype=torch.long), False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) images -> the float input the backbone was trained on."""
        # Reorder while the tensor is still uint8: a quarter of the bytes of the float copy.
        images = images.contiguous(memory_format=self.memory_format)
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for uint8 images (N, 3, H, W)."""
        return self.net(self.normalize(images))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        target = batch["mask"].long()
        outputs = self.net.training_outputs(self.normalize(batch["image"]))
        loss = sum(w * self.criterion(logits, target) for logits, w in outputs.loss_terms)
        self.nonfinite_losses += (~torch.isfinite(loss.detach())).long()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        if "train" in self.confusion:
            self.confusion["train"].update(outputs.logits.detach().argmax(1), target)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Read the device-side count every log interval and before each epoch's validation and
        # checkpoint, so that no checkpoint is ever written from a diverged model.
        last_of_epoch = batch_idx + 1 == self.trainer.num_training_batches
        if last_of_epoch or self.global_step % self.trainer.log_every_n_steps == 0:
            self._stop_if_diverged()

    def _stop_if_diverged(self) -> None:
        count = int(self.nonfinite_losses.item())
        if count:
            directory = (
                self.trainer.checkpoint_callback.dirpath
                if self.trainer.checkpoint_callback
                else None
            )
            raise NonFiniteLossError(
                f"Training stopped: the loss became NaN or infinite ({count} step(s) up to global "
                f"step {self.global_step}, epoch {self.current_epoch}). The checkpoints written "
                f"before it are kept untouched in {directory}. Try a lower optimizer.lr, "
                f"trainer.gradient_clip_val=1.0, or trainer.precision=32-true, and check the data."
            )

    def on_train_epoch_end(self) -> None:
        if "train" in self.confusion:
            self._log_scores("train")

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        target = batch["mask"].long()
        images = batch["image"]
        logits = self(images) if self.inference is None else self.inference(self, images)
        self.log(f"{stage}/loss", self.criterion(logits, target), on_epoch=True, sync_dist=True)
        self.confusion[stage].update(logits.argmax(1), target)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, stage: str) -> None:
        # compute() sums the matrices across processes; every rank then logs the same numbers.
        confusion = self.confusion[stage].compute()
        self.confusion[stage].reset()
        self.last_confusion[stage] = confusion
        scores = scores_from_confusion(confusion, self.hparams.class_names)
        self.log_dict({f"{stage}/{key}": value for key, value in scores.items()})

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(1)

    def configure_model(self) -> None:
        if self.hparams.compile:
            # Module.compile() compiles in place: parameter names, and so checkpoints, stay the same.
            self.net.compile()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.hparams.optimizer or {"name": "adamw"}, self.parameters())
        scheduler = build_scheduler(
            self.hparams.scheduler or {"name": "constant"},
            optimizer,
            int(self.trainer.estimated_stepping_batches),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The checkpoint holds trained weights: rebuilding the module from it must not fetch the
        # initial backbone weights again (which would fail offline and be overwritten anyway).
        hparams = checkpoint["hyper_parameters"]
        checkpoint["hyper_parameters"] = {
            **hparams,
            "backbone": {**hparams["backbone"], "weights": None},
        }
