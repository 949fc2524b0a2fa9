"""Optimizers and learning-rate schedules, built from the ``optimizer`` and ``scheduler`` configs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

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


SCHEDULES: dict[str, Callable[..., float]] = {
    "poly": _poly,
    "cosine": _cosine,
    "constant": _constant,
}


def build_scheduler(
    config: dict, optimizer: torch.optim.Optimizer, total_steps: int | Callable[[], int]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: linear warm-up over ``warmup_steps``, then the decay ``name``.

    Args:
        config: ``name`` (poly, cosine, constant), ``warmup_steps`` and the decay's own keys
            (``power``, ``min_lr_ratio``).
        optimizer: the optimizer whose learning rate it scales.
        total_steps: optimizer steps in the whole run, or a function that tells them, asked
            once, at the first step past the warm-up (the Trainer knows them only once it has
            set up the training data, which must happen after a resumed run's state is restored).
    """
    args = dict(config)
    decay = choose(SCHEDULES, args.pop("name", None), "scheduler.name")
    warmup = int(args.pop("warmup_steps", 0))
    check_arguments(decay, args, "scheduler", skip=1)
    if warmup < 0:
        raise ConfigError(f"scheduler.warmup_steps={warmup} must be >= 0.")
    known: list[int] = [] if callable(total_steps) else [_checked(total_steps)]
    ask = total_steps if callable(total_steps) else None

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step == warmup:  # the decay's start, whatever the run's length
            return decay(0.0, **args)
        if not known and ask is not None:
            known.append(_checked(ask()))
        span = max(1, known[0] - warmup)
        return decay(min(1.0, (step - warmup) / span), **args)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _checked(total_steps: int) -> int:
    if total_steps < 1:
        raise ConfigError(f"The run must have optimizer steps (got {total_steps}).")
    return int(total_steps)
