"""Optimizers and learning-rate schedules, built from the ``optimizer`` and ``scheduler`` configs."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def build_optimizer(config: dict, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of ``config`` (``name``, ``lr``, ``weight_decay`` and its own keys).

    Weight decay goes to weight matrices and kernels only: decaying biases and normalization
    scales hurts accuracy and buys nothing (as in nanoGPT and timm).
    """
    args = dict(config)
    optimizer_class = choose(OPTIMIZERS, args.pop("name", None), "optimizer.name")
    check_arguments(optimizer_class, args, "optimizer", skip=1)
    weight_decay = args.pop("weight_decay", 0.0)
    trainable = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return optimizer_class(groups, **args)


def _poly(progress: float, power: float = 0.9, min_lr_ratio: float = 0.0) -> float:
    return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress) ** power


def _cosine(progress: float, min_lr_ratio: float = 0.0) -> float:
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _constant(progress: float) -> float:
    return 1.0


SCHEDULES = {"poly": _poly, "cosine": _cosine, "constant": _constant}


def build_scheduler(
    config: dict, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: linear warm-up over ``warmup_steps``, then the decay ``name``.

    Args:
        config: ``name`` (poly, cosine, constant), ``warmup_steps`` and the decay's own keys
            (``power``, ``min_lr_ratio``).
        optimizer: the optimizer whose learning rate it scales.
        total_steps: optimizer steps in the whole run.
    """
    args = dict(config)
    decay = choose(SCHEDULES, args.pop("name", None), "scheduler.name")
    warmup = int(args.pop("warmup_steps", 0))
    check_arguments(decay, args, "scheduler", skip=1)
    if warmup < 0 or total_steps < 1:
        raise ConfigError(
            f"scheduler.warmup_steps={warmup} must be >= 0 and the run must have optimizer steps "
            f"(got {total_steps})."
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total_steps - warmup)
        return decay(min(1.0, (step - warmup) / span), **args)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
