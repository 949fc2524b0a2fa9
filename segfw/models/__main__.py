"""Prints the model zoo, or the timm encoders segfw can use and what each supports.

    python -m segfw.models [--num-classes 21]     # every architecture on every named backbone
    python -m segfw.models --encoders [PATTERN]   # generic encoders: backbone=timm

The zoo's networks are built with their default arguments (those of segfw/conf/model/<name>.yaml) and
random weights; the input size does not change the counts. The encoders are built on PyTorch's
meta device (shapes only: no memory, no arithmetic), except SMP's Mix Transformers, whose
initialization needs real tensors.
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
from dataclasses import dataclass

import timm
import torch

from segfw.errors import ConfigError
from segfw.models.backbones import (
    BACKBONES,
    MIT_ENCODERS,
    SUGGESTED_ENCODERS,
    get_backbone,
    timm_backbone,
)
from segfw.models.builder import ARCHITECTURES
from segfw.models.deeplabv3plus import ATROUS_RATES
from segfw.models.encoders import MAX_DEPTH, build_encoder, output_strides, pyramid_strides
from segfw.models.pspnet import DOWN_SAMPLE_FACTORS
from segfw.models.segnet import UPSAMPLE_LAYERS as SEGNET_LAYERS
from segfw.models.unetpp import UPSAMPLE_LAYERS as UNETPP_LAYERS

# Listed by a bare --encoders: those docs/models.md starts from, the smallest of their families,
# and two that no architecture can use (one input size; one stride), to show why.
DEFAULT_ENCODERS = (
    *SUGGESTED_ENCODERS,
    "mit_b2",
    "resnet18d",
    "convnext_atto",
    "regnetx_002",
    "swin_tiny_patch4_window7_224",
    "vit_small_patch16_224",
)


def parameter_count(architecture: str, backbone: str, num_classes: int) -> int:
    """Parameters of ``architecture`` on ``backbone`` with its default arguments."""
    network = ARCHITECTURES[architecture](get_backbone(backbone), num_classes)
    return sum(p.numel() for p in network.parameters())


def defaults(architecture: str) -> str:
    """The architecture's default arguments, as ``key=value`` pairs."""
    parameters = list(inspect.signature(ARCHITECTURES[architecture]).parameters.values())[2:]
    return " ".join(f"{p.name}={p.default}" for p in parameters) or "-"


@dataclass(frozen=True)
class EncoderReport:
    """What ``--encoders`` says of one encoder.

    Attributes:
        name: the encoder's name (``backbone.encoder``).
        strides: the strides of its levels, from the shallowest.
        parameters: its parameter count at full depth.
        weights: whether pretrained weights are published (``backbone.weights=imagenet``).
        dilations: output stride below 32 -> how it is reached (``timm`` or ``segfw``).
        problem: why no architecture can use it; None if some can.
    """

    name: str
    strides: tuple[int, ...] = ()
    parameters: int = 0
    weights: bool = False
    dilations: dict[int, str] | None = None
    problem: str | None = None

    def supports(self) -> dict[str, str]:
        """Architecture -> the settings it takes on this encoder ("" for all), for those that
        run on it. The rules are the checks ``build_encoder`` and the architectures make at
        construction (``tests/models/test_encoders.py`` keeps the two in step)."""
        if self.problem:
            return {}
        levels = min(MAX_DEPTH, self.strides[-1].bit_length() - 1)
        dilations = self.dilations or {}
        full = levels == MAX_DEPTH
        supported = {
            "deeplabv3plus": _strides([s for s in ATROUS_RATES if s in dilations and full]),
            "unet": "" if full else None,
            "pspnet": _strides([f for f in DOWN_SAMPLE_FACTORS if f in dilations and full]),
            "segnet": _layers([n for n in SEGNET_LAYERS if n <= levels]),
            # UNet++ nests its decoders from the stride-2 level.
            "unetpp": _layers([n for n in UNETPP_LAYERS if n <= levels and self.strides[0] <= 2]),
            "segformer": "" if full else None,
            "upernet": "" if full else None,
        }
        return {name: settings for name, settings in supported.items() if settings is not None}


def report(name: str) -> EncoderReport:
    """Probes one generic encoder: its levels, size, weights and dilations."""
    try:
        backbone = timm_backbone(name)
        strides = pyramid_strides(backbone)
        # SMP's Mix Transformers draw random numbers with .item() while initializing.
        with torch.device("cpu" if name in MIT_ENCODERS else "meta"):
            encoder = build_encoder(backbone)
            dilations = output_strides(backbone, encoder)
    except ConfigError as error:
        return EncoderReport(name, problem=str(error))
    parameters = sum(p.numel() for p in encoder.parameters())
    return EncoderReport(name, strides, parameters, backbone.imagenet, dilations)


def encoder_names(pattern: str | None) -> list[str]:
    """timm's model names (and SMP's ``mit_b*``) matching ``pattern``; None: the defaults."""
    if pattern is None:
        return list(DEFAULT_ENCODERS)
    return [*timm.list_models(pattern), *fnmatch.filter(MIT_ENCODERS, pattern)]


def print_encoders(pattern: str | None) -> None:
    """One line per encoder: strides, parameters, weights, dilations, architectures."""
    names = encoder_names(pattern)
    if not names:
        print(f"No timm model matches {pattern!r}; patterns are fnmatch-style, e.g. 'convnext*'.")
        return
    print(
        "backbone=timm backbone.encoder=NAME. strides: of its levels; dilates to: output strides "
        "below 32 (timm's own dilation, or segfw's à-trous routine); settings in parentheses: "
        "output_stride (deeplabv3plus), down_sample_factor (pspnet), num_upsample_layers "
        "(segnet, unetpp).",
        flush=True,
    )
    print(f"{'encoder':32} {'strides':14} {'params':>8}  weights  {'dilates to':26} architectures")
    for name in names:
        row = report(name)
        if row.problem:
            print(f"{name:32} {'-':14} {'-':>8}  {'-':7}  {'-':26} none: {row.problem}", flush=True)
            continue
        strides = ",".join(map(str, row.strides))
        dilations = " ".join(f"{s}({how})" for s, how in (row.dilations or {}).items()) or "-"
        architectures = " ".join(
            f"{arch}({settings})" if settings else arch for arch, settings in row.supports().items()
        )
        print(
            f"{name:32} {strides:14} {row.parameters / 1e6:>7.1f}M  "
            f"{'yes' if row.weights else 'no':7}  {dilations:26} {architectures}",
            flush=True,
        )


def print_zoo(num_classes: int) -> None:
    """The parameter count of every architecture on every named backbone, and the defaults."""
    print(f"Parameters (millions) with {num_classes} classes; rows: backbone, columns: model.")
    width = max(map(len, ARCHITECTURES)) + 2
    print(f"{'':13}" + "".join(f"{name:>{width}}" for name in ARCHITECTURES), flush=True)
    for backbone in BACKBONES:
        counts = [parameter_count(a, backbone, num_classes) / 1e6 for a in ARCHITECTURES]
        print(f"{backbone:13}" + "".join(f"{c:>{width}.2f}" for c in counts), flush=True)
    print("\nDefault arguments:")
    for name in ARCHITECTURES:
        print(f"  {name}: {defaults(name)}")


def _strides(values: list[int]) -> str | None:
    return ",".join(map(str, values)) or None


def _layers(values: list[int]) -> str | None:
    return f"{values[0]}-{values[-1]}" if values else None


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m segfw.models",
        description=f"{__doc__.splitlines()[0]} Without --encoders: the parameter count of every "
        f"architecture on every named backbone.",
    )
    parser.add_argument("--num-classes", type=int, default=21, help="output classes (default 21)")
    parser.add_argument(
        "--encoders",
        nargs="?",
        const="",
        metavar="PATTERN",
        help="list the timm encoders (and SMP's mit_b0..mit_b5) matching PATTERN, fnmatch-style "
        "('convnext*', '*efficientnet_b?'), with their strides, parameters, published weights, "
        "dilations and the architectures that run on them. Each is probed (built on the meta "
        "device: about 3 s each on a CPU core). Without PATTERN: a dozen common encoders; '*' probes all "
        "of timm's 1,300 models, which takes over an hour.",
    )
    args = parser.parse_args()
    # Building is weight initialization and dry runs on one small image, where a second thread
    # only adds synchronization: one thread builds the networks about four times faster.
    torch.set_num_threads(1)
    if args.encoders is None:
        print_zoo(args.num_classes)
    else:
        print_encoders(args.encoders or None)


if __name__ == "__main__":
    main()
