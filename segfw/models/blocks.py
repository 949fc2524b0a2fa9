"""Small building blocks shared by the architectures segfw owns."""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from segfw.errors import ConfigError


class ConvBNReLU(nn.Sequential):
    """Convolution with "same" padding, BatchNorm, ReLU; no bias, since BatchNorm re-centres."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def check_choice(key: str, value: object, allowed: Collection[int], why: str) -> None:
    """Raises a ConfigError unless ``value`` is one of the integers ``allowed``.

    Args:
        key: the argument's name under ``model``.
        value: the value given.
        allowed: the values the architecture supports.
        why: the reason for the limit, for the message.
    """
    # bool is an int in Python: model.x=true must not pass for 1.
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(
            f"model.{key}={value!r} is not supported: {why}. "
            f"Choose one of {', '.join(str(a) for a in allowed)}."
        )
