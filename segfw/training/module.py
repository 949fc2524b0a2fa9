"""The LightningModule: network, loss, optimization and metrics for one segmentation task."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

from segfw.errors import ConfigError, NonFiniteLossError
from segfw.inference.modes import Inference, build_inference
from segfw.models import backbone_spec, build_model
from segfw.training.losses import build_loss
from segfw.training.metrics import StageMetrics, scores_from_confusion
from segfw.training.optim import build_optimizer, build_scheduler

STAGES = ("train", "val", "test")


class SegmentationModule(pl.LightningModule):
    """Trains and evaluates a segmentation network.

    Every argument is a plain value (a config section as a dict), saved as a hyperparameter, so
    ``SegmentationModule.load_from_checkpoint(path)`` (or :meth:`from_checkpoint`) rebuilds the
    module without Hydra.

    Batches hold ``image`` as uint8 (N, 3, H, W), ``mask`` as uint8 (N, H, W) and ``index`` (N,),
    the images' dataset indices; the module normalizes with the backbone's statistics on its own
    device.

    Evaluation (validation and test) scores each split with one confusion matrix, and the loss as
    the mean over images of each image's loss, so that neither depends on how images were batched
    or spread over processes.

    Args:
        model: the ``model`` config (``name``, ``height``, ``width``, architecture arguments).
        backbone: the ``backbone`` config (``name``, ``weights``, ...).
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
        inference: evaluate with an inference mode (``segfw/conf/inference/``: whole image, sliding
            window, test-time augmentation; see ``segfw.inference.modes``), each image at its own
            size, instead of one forward pass per batch. Batches must then hold unpadded images.
        per_image: also count each evaluated image's own scores (``per_image_results``).
    """

    # Buffers (register_buffer): the input statistics.
    mean: torch.Tensor
    std: torch.Tensor

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
        inference: Mapping[str, Any] | None = None,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(model, backbone, num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        spec = backbone_spec(backbone)
        # Inputs arrive as 0..255; fold the 1/255 into the statistics.
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, False)
        self.criterion = build_loss(loss or {"name": "ce"}, num_classes, ignore_index)
        self.inference: Inference | None = None
        if inference is not None:
            height, width = int(model["height"]), int(model["width"])
            self.inference = build_inference(inference, height, width, self.net.input_divisor)
        # One set of metrics per stage. ModuleDict keys must not shadow nn.Module attributes
        # (a key "train" would collide with Module.train).
        stages = STAGES if train_metrics else STAGES[1:]
        self.metrics = nn.ModuleDict(
            {
                _key(s): StageMetrics(num_classes, ignore_index, per_image and s != "train")
                for s in stages
            }
        )
        # Each stage's matrix of its latest epoch, for callbacks that draw it (segfw.callbacks).
        self.last_confusion: dict[str, torch.Tensor] = {}
        # Each stage's per-image (dataset indices, counts) of its latest epoch, with per_image.
        self.per_image_results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # This process's count of non-finite losses, kept on the device and read only every log
        # interval, so the check costs no host synchronization per step. Not a buffer: DDP would
        # overwrite every rank's count with rank 0's at each forward pass.
        self.nonfinite_losses = torch.zeros((), dtype=torch.long)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | dict[str, Any],
        map_location: str | torch.device = "cpu",
        **overrides: Any,
    ) -> SegmentationModule:
        """The module of a checkpoint written by ``train.py``, in eval mode.

        Args:
            checkpoint: the ``.ckpt`` file, or its contents (:func:`load_checkpoint`).
            map_location: where to put the weights.
            **overrides: constructor arguments to change (e.g. ``inference``, ``per_image``).

        Raises:
            ConfigError: not a file, or not a segfw checkpoint.
        """
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint, map_location)
        module = cls(**{**checkpoint["hyper_parameters"], **overrides})
        module.load_state_dict(checkpoint["state_dict"])
        return module.to(map_location).eval()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) images -> the float input the backbone was trained on, in the
        network's dtype (bfloat16 under ``trainer.precision=bf16-true``)."""
        # Reorder while the tensor is still uint8: a quarter of the bytes of the float copy.
        images = images.contiguous(memory_format=self.memory_format)
        # Normalized in float32, then cast: the batch stays uint8 up to here, so no precision
        # plugin converts it, and a half-precision network needs its input in its own dtype.
        return ((images.float() - self.mean.float()) / self.std.float()).to(self.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for uint8 images (N, 3, H, W) of any size.

        An image whose sides are not multiples of the network's input divisor is padded at the
        bottom and right (with black, as training pads its crops) and the logits are cropped
        back: the padding depends on the image alone, never on what it is batched with.
        """
        height, width = images.shape[-2:]
        divisor = self.net.input_divisor
        pad_bottom, pad_right = -height % divisor, -width % divisor
        if pad_bottom or pad_right:
            images = F.pad(images, (0, pad_right, 0, pad_bottom))
        return self.net(self.normalize(images))[..., :height, :width]

    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images (N, 3, H, W) of one size as evaluation computes them: one forward
        pass, or the module's inference mode."""
        return self(images) if self.inference is None else self.inference(self, images)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        target = batch["mask"].long()
        outputs = self.net.training_outputs(self.normalize(batch["image"]))
        # The loss in float32 whatever the network's dtype: its sums run over every pixel.
        loss = sum(w * self.criterion(logits.float(), target) for logits, w in outputs.loss_terms)
        nonfinite = (~torch.isfinite(loss.detach())).long()
        self.nonfinite_losses = self.nonfinite_losses.to(loss.device) + nonfinite
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        if _key("train") in self.metrics:
            self._metrics("train").update(outputs.logits.detach().argmax(1), target)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Read the device-side count every log interval and before each epoch's validation and
        # checkpoint, so that no checkpoint is ever written from a diverged model. An interval of
        # 0 (step logging off) leaves the epoch's end.
        last_of_epoch = batch_idx + 1 == self.trainer.num_training_batches
        interval = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set at run time
        if last_of_epoch or (interval and self.global_step % interval == 0):
            self._stop_if_diverged()

    def _stop_if_diverged(self) -> None:
        # Summed over the processes, which all check at the same steps: a loss that diverged on
        # one rank stops every rank there, together, with the same message (a rank stopping on
        # its own would leave the others waiting in their next collective).
        local = self.nonfinite_losses.clone()  # the all-reduce writes into its argument
        count = int(self.trainer.strategy.reduce(local, reduce_op="sum").item())
        if not count:
            return
        callback = self.trainer.checkpoint_callback
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        directory = Path(dirpath) if dirpath else None
        if directory is not None and any(directory.glob("*.ckpt")):
            kept = f"The checkpoints written before it are kept untouched in {directory}."
        else:
            kept = "No checkpoint had been written yet."
        raise NonFiniteLossError(
            f"Training stopped: the loss became NaN or infinite ({count} step(s) up to global "
            f"step {self.global_step}, epoch {self.current_epoch}). {kept} Try a lower "
            f"optimizer.lr, trainer.gradient_clip_val=1.0, or trainer.precision=32-true, and "
            f"check the data."
        )

    def on_train_epoch_end(self) -> None:
        if _key("train") in self.metrics:
            self._log_scores("train")

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        target = batch["mask"].long()
        images = batch["image"]
        logits = self.evaluation_logits(images).float()
        # Each image's own loss: a batch's mean would weigh images by how they were batched.
        losses = torch.stack(
            [self.criterion(logits[i : i + 1], target[i : i + 1]) for i in range(len(target))]
        )
        self._metrics(stage).update(logits.argmax(1), target, losses, batch["index"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _log_scores(self, stage: str) -> None:
        # The states are summed across processes; every rank then logs the same numbers.
        confusion, loss, per_image = self._metrics(stage).results()
        self.last_confusion[stage] = confusion
        scores = scores_from_confusion(confusion, self.hparams["class_names"])
        if not math.isnan(loss):
            scores["loss"] = loss
        if per_image is not None:
            self.per_image_results[stage] = per_image
        self.log_dict({f"{stage}/{name}": value for name, value in scores.items()})

    def _metrics(self, stage: str) -> StageMetrics:
        return cast(StageMetrics, self.metrics[_key(stage)])

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(1)

    def configure_model(self) -> None:
        if self.hparams["compile"]:
            # Module.compile() compiles in place: parameter names, and so checkpoints, stay the same.
            self.net.compile()

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = build_optimizer(
            self.hparams["optimizer"] or {"name": "adamw"}, self.parameters()
        )
        # The run's length, asked for at its first step past the warm-up: asking now would make
        # Lightning set up the training data before a resumed run's state is restored.
        scheduler = build_scheduler(
            self.hparams["scheduler"] or {"name": "constant"},
            optimizer,
            lambda: int(self.trainer.estimated_stepping_batches),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The checkpoint holds trained weights: rebuilding the module from it must not fetch the
        # initial backbone weights again (which would fail offline and be overwritten anyway);
        # and what evaluated it last (an inference mode, per-image counts) is no part of it.
        hparams = checkpoint["hyper_parameters"]
        checkpoint["hyper_parameters"] = {
            **hparams,
            "backbone": {**hparams["backbone"], "weights": None},
            "inference": None,
            "per_image": False,
        }


def _key(stage: str) -> str:
    return f"{stage}_stage"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The contents of a checkpoint written by ``train.py``.

    Raises:
        ConfigError: ``path`` is not a file, or not a segfw checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a file; pass a .ckpt written by train.py."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a file that is no checkpoint
        raise ConfigError(
            f"ckpt_path={str(path)!r} cannot be read as a checkpoint: {type(error).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    if not isinstance(checkpoint, dict) or not {"hyper_parameters", "state_dict"} <= set(
        checkpoint
    ):
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a checkpoint written by train.py (it holds no "
            f"hyper_parameters and state_dict)."
        )
    return checkpoint


# The data facts a checkpoint's outputs and scores depend on: what each output channel means, and
# which mask value is left out of the loss and the metrics.
DATA_FACTS = ("num_classes", "class_names", "ignore_index")


def data_for_checkpoint(
    hparams: Mapping[str, Any],
    data: Mapping[str, Any],
    ckpt_path: str | Path,
    resuming: bool = False,
) -> dict[str, Any]:
    """``data`` (a ``data`` section) settled for the checkpoint it will be scored or predicted
    with: ``num_classes``, ``class_names`` and ``ignore_index`` left unset (``None``) become the
    checkpoint's; those given must be the checkpoint's.

    A network trained on other classes would be scored under the wrong names, or fail on labels
    beyond its outputs; the one check of ``evaluate.py``, ``predict.py`` and ``segfw.evaluate``.

    Args:
        hparams: the checkpoint's hyperparameters (``checkpoint["hyper_parameters"]``).
        data: the data section; ``format`` names it in the message.
        ckpt_path: the checkpoint's path, for the message.
        resuming: training will resume the checkpoint (``train.py ckpt_path=...``): the message
            offers starting a new run from its encoder, not leaving the data out.

    Raises:
        ConfigError: a fact differs from the checkpoint's; one line naming both values and the fix.
    """
    trained: dict[str, Any] = {
        "num_classes": int(hparams["num_classes"]),
        "class_names": list(hparams["class_names"]),
        "ignore_index": int(hparams.get("ignore_index", 255)),
    }
    settled = dict(data)
    if settled.get("num_classes") is None:
        names = settled.get("class_names")
        settled["num_classes"] = trained["num_classes"] if names is None else len(names)
    # The checkpoint's names name its classes only: not a count of the data's own.
    if settled.get("class_names") is None and settled["num_classes"] == trained["num_classes"]:
        settled["class_names"] = trained["class_names"]
    if settled.get("ignore_index") is None:
        settled["ignore_index"] = trained["ignore_index"]
    names = settled.get("class_names")
    given: dict[str, Any] = {
        "num_classes": int(settled["num_classes"]),
        "class_names": None if names is None else list(names),
        "ignore_index": int(settled["ignore_index"]),
    }
    if given == trained:
        return settled
    name = f"data={data.get('format', '...')}"
    differences = []
    if (
        given["num_classes"] != trained["num_classes"]
        or given["class_names"] != trained["class_names"]
    ):
        differences.append(
            f"was trained on {trained['num_classes']} classes ({_listing(trained['class_names'])}) "
            f"but {name} has {given['num_classes']}"
            + ("" if names is None else f" ({_listing(given['class_names'])})")
        )
    if given["ignore_index"] != trained["ignore_index"]:
        differences.append(
            f"was trained with ignore_index={trained['ignore_index']} but {name} has "
            f"ignore_index={given['ignore_index']}"
        )
    fix = " ".join(
        f"data.{key}={_override(trained[key])}" for key in DATA_FACTS if given[key] != trained[key]
    )
    if resuming:
        other = (
            f"resume it on the data it was trained on, or start a new run from its encoder "
            f"(backbone.weights={ckpt_path}, no ckpt_path)"
        )
    else:
        other = "pick the data it was trained on (leave data out)"
    raise ConfigError(
        f"Checkpoint {str(ckpt_path)!r} {' and '.join(differences)}: {other}, or, if these masks "
        f"hold its classes, set {fix}."
    )


def _listing(names: Sequence[str], shown: int = 8) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _override(value: Any) -> str:
    return f"[{','.join(value)}]" if isinstance(value, list) else str(value)
