"""Encoders: built from a backbone, cut to a depth, dilated to an output stride, checked.

Every function here works on any encoder, VGG and timm's included, because none relies on how an
encoder is written: each watches a dry run of it on a small blank image and acts on what it saw.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from timm.models import FeatureInfo

from segfw.errors import ConfigError
from segfw.models.backbones import LISTING_HINT, MIT_ENCODERS, Backbone

MAX_DEPTH = 5  # SMP's encoders return at most five levels below the input: strides 2 ... 32
# The dry run's input side: a multiple of the deepest stride, so that each feature map's side is
# exactly the input's divided by its stride.
DRY_RUN_SIZE = 64
# SMP's Mix Transformers' levels (timm, which has none of them, describes the others').
MIT_STRIDES = (4, 8, 16, 32)
# The functions by which a network mixes positions with attention, which dilation cannot stretch.
ATTENTION = {F.scaled_dot_product_attention, F.softmax, torch.softmax, torch.Tensor.softmax}

if TYPE_CHECKING:

    class Encoder(nn.Module):
        """What :func:`build_encoder` returns, as the type checker sees it: an ``nn.Module`` (SMP's
        encoder classes, its timm and Mix Transformer ones included, which share no base class)
        whose forward returns the levels, with their channels in ``out_channels``."""

        @property
        def out_channels(self) -> Sequence[int]:
            """The channels of levels 0 to depth, in order (0: a level without features)."""
            ...

else:
    Encoder = nn.Module  # at run time, any module: the encoders' classes share no base


def build_encoder(
    backbone: Backbone,
    depth: int = MAX_DEPTH,
    output_stride: int = 32,
    needed_by: str = "the architecture",
) -> Encoder:
    """SMP's encoder for ``backbone``, randomly initialized, returning levels 0 to ``depth``.

    Level ``i`` has stride ``2**i`` and ``encoder.out_channels[i]`` channels; level 0 is the input
    image itself, except for VGG, whose level 0 is its first block of convolutions. An encoder
    whose first level is at stride 4 (ConvNeXt, Mix Transformer) returns an empty level 1 (0
    channels), as SMP's do. Levels deeper than ``output_stride`` come out at that stride, by
    dilation (:func:`dilate`; for a generic encoder, timm's own ``output_stride`` where the model
    takes one).

    SMP and timm keep parts of the network beyond ``depth`` (ResNet's later layers, MobileNet's
    later blocks, the tail of the Xception block whose middle is the last feature, a
    classifier): those are removed here, so that every parameter left is trained and counted.

    Args:
        backbone: the backbone.
        depth: the deepest level returned.
        output_stride: the stride of the deepest levels; 32 (or ``2**depth``): undilated.
        needed_by: what needs the encoder (e.g. ``"model=pspnet"``), for messages.

    Raises:
        ConfigError: a generic encoder without ``depth`` levels, that cannot be dilated to
            ``output_stride``, or that fails on a blank image; the message says what to choose.
    """
    dilated = output_stride < 2**depth
    if not backbone.generic:
        encoder = smp.encoders.get_encoder(backbone.encoder, weights=None, depth=depth)
        if depth < MAX_DEPTH:  # at full depth every parameter feeds the deepest level
            remove_unused(encoder)
        if dilated:
            dilate(encoder, output_stride)
        return encoder

    strides = pyramid_strides(backbone)
    levels = int(math.log2(strides[-1]))
    if depth > levels:
        raise ConfigError(
            f"{needed_by} needs level {depth} of the encoder (stride {2**depth}), but "
            f"backbone.encoder={backbone.label} returns levels down to stride {strides[-1]} "
            f"only. Choose an encoder with a level at every stride from 2 (or 4) to 32 "
            f"({LISTING_HINT})."
        )
    native = dilated and takes_output_stride(backbone, output_stride)
    encoder = smp.encoders.get_encoder(
        backbone.encoder, weights=None, depth=depth, output_stride=output_stride if native else 32
    )
    try:
        remove_unused(encoder)
    except Exception as error:  # any fault of the model's own forward on a blank image
        raise ConfigError(
            f"backbone.encoder={backbone.label} fails on a blank {DRY_RUN_SIZE} x "
            f"{DRY_RUN_SIZE} image ({type(error).__name__}: {error}): segfw needs an encoder that "
            f"takes any input size divisible by 32 (training crops, sliding windows and exports "
            f"use several). Models built for one input size (ViT, Swin, MaxViT, CoaT) do not; "
            f"choose a convolutional or hierarchical encoder such as convnext_tiny or mit_b0 "
            f"({LISTING_HINT})."
        ) from None
    if dilated and not native:
        try:
            dilate(encoder, output_stride)
        except RuntimeError as error:
            raise ConfigError(
                f"{needed_by} needs the encoder's deepest levels at stride {output_stride}, but "
                f"backbone.encoder={backbone.label} cannot be dilated: the model has no "
                f"output_stride setting of its own, and {error} Choose a convolutional encoder that dilates "
                f"({LISTING_HINT}), or model=upernet or model=segformer, which take the encoder's "
                f"strides as they are."
            ) from None
    return encoder


def pyramid_strides(backbone: Backbone) -> tuple[int, ...]:
    """The strides of a generic encoder's feature levels, from timm's metadata (nothing is built:
    the model is created on the meta device), or SMP's for its Mix Transformers.

    Raises:
        ConfigError: the model cannot return features, or not at strides that double from 1, 2
            or 4 up, the pyramid every segfw architecture reads.
    """
    if backbone.encoder in MIT_ENCODERS:
        return MIT_STRIDES
    name = backbone.label
    try:
        strides = _timm_strides(name)
    except Exception as error:  # timm raises many types for a model without features_only
        raise ConfigError(
            f"backbone.encoder={name} cannot return multi-scale features "
            f"(timm: {type(error).__name__}: {error}). Choose another encoder ({LISTING_HINT})."
        ) from None
    if strides[0] not in (1, 2, 4) or any(
        b != 2 * a for a, b in zip(strides, strides[1:], strict=False)
    ):
        raise ConfigError(
            f"backbone.encoder={name} returns features at strides {list(strides)}, not a pyramid "
            f"whose strides double up to 32 (2, 4, 8, 16, 32 or 4, 8, 16, 32), which every segfw "
            f"architecture reads. Plain vision transformers (ViT, DeiT) keep one stride; choose a "
            f"hierarchical encoder such as convnext_tiny, mit_b0 or efficientnet_b0 "
            f"({LISTING_HINT})."
        )
    return strides


def takes_output_stride(backbone: Backbone, output_stride: int) -> bool:
    """Whether timm builds the generic encoder dilated to ``output_stride`` by itself."""
    if backbone.encoder in MIT_ENCODERS:
        return False
    try:
        strides = _timm_strides(backbone.label, output_stride)
    except Exception:  # an unexpected keyword (TypeError) or an assertion on its value
        return False
    return strides[-1] == output_stride  # a model may accept the keyword and ignore it


@functools.cache
def _timm_strides(name: str, output_stride: int = 32) -> tuple[int, ...]:
    """The strides of a timm model's features, read from a copy built on the meta device (no
    memory, no arithmetic; but a second each for its initialization, hence the cache)."""
    dilation: dict[str, Any] = {} if output_stride == 32 else {"output_stride": output_stride}
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True, **dilation)
    # timm types create_model as returning any nn.Module; with features_only, every model it
    # returns (FeatureListNet, FeatureHookNet, FeatureGetterNet ...) has a FeatureInfo.
    feature_info = cast("FeatureInfo", model.feature_info)
    return tuple(feature_info.reduction())


def output_strides(backbone: Backbone, encoder: nn.Module) -> dict[int, str]:
    """The output strides below 32 that a generic encoder reaches, and how: ``"timm"`` (its own
    ``output_stride``) or ``"segfw"`` (the à-trous routine), as :func:`build_encoder` would.

    Args:
        backbone: the generic backbone.
        encoder: its encoder at full depth, undilated (left untouched: copies are dilated).
    """
    reached = {}
    for stride in (16, 8, 4):
        if takes_output_stride(backbone, stride):
            reached[stride] = "timm"
            continue
        try:
            dilate(copy.deepcopy(encoder), stride)
        except RuntimeError:
            continue
        reached[stride] = "segfw"
    return reached


def mixes_by_attention(encoder: nn.Module) -> bool:
    """Whether the encoder's dry run computes attention (a softmax or scaled dot-product attention):
    a view over all positions, which dilation cannot stretch the way it stretches a kernel."""
    spy = _FunctionSpy(ATTENTION)
    with torch.no_grad(), spy:
        _dry_run(encoder)
    return spy.seen


@dataclass(frozen=True)
class Layer:
    """A Conv2d or MaxPool2d as the dry run saw it.

    Attributes:
        module: the module (the dry run traces only these two kinds).
        in_stride: the network's input size over the size of this module's input.
        out_stride: the same for its output; twice ``in_stride`` where it down-samples.
    """

    module: nn.Conv2d | nn.MaxPool2d
    in_stride: int
    out_stride: int


def trace_layers(encoder: nn.Module) -> list[Layer]:
    """The encoder's Conv2d and MaxPool2d modules in the order its forward runs them."""
    layers: list[Layer] = []

    def record(
        module: nn.Conv2d | nn.MaxPool2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        side_in, side_out = inputs[0].shape[-1], output.shape[-1]
        layers.append(Layer(module, DRY_RUN_SIZE // side_in, DRY_RUN_SIZE // side_out))

    handles = [
        module.register_forward_hook(record)
        for module in encoder.modules()
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d))
    ]
    try:
        with torch.no_grad():
            _dry_run(encoder)
    finally:
        for handle in handles:
            handle.remove()
    return layers


def level_zero_is_image(encoder: nn.Module) -> bool:
    """Whether the encoder's level 0 is its input image, passed through (every encoder but VGG's,
    whose level 0 is its first block of convolutions)."""
    images = _blank_images()
    with torch.no_grad():
        return _dry_run(encoder, images)[0] is images


def dilate(encoder: nn.Module, output_stride: int) -> None:
    """Makes the encoder's deepest levels come out at ``output_stride`` instead of 32, in place.

    The à-trous algorithm (Chen et al., DeepLab v1 and v3), applied to every encoder the same way:
    each Conv2d or MaxPool2d whose input has a stride ``s >= output_stride`` stops down-sampling
    (stride 1), and each such convolution has its dilation multiplied by ``s // output_stride``,
    with the padding that keeps the size ("same"). Each convolution thus sees the same
    neighbourhood of the image as before, so ImageNet weights keep their meaning; the parameters
    do not change, only the strides. Max-pools past the stride (VGG's 2 x 2 ones) become 3 x 3
    pools of stride 1, as DeepLab v1 did with VGG-16.

    Raises:
        RuntimeError: the encoder computes attention, or down-samples with a module other than
            Conv2d and MaxPool2d or with an even-sized convolution, so that the levels do not
            come out at the promised strides afterwards. None of the table's backbones does. The
            message is a clause starting with "it", for callers to build on.
    """
    if mixes_by_attention(encoder):
        raise RuntimeError(
            "it mixes positions by attention, a view that dilation cannot stretch the way it "
            "stretches a convolution's kernel (segfw's à-trous routine, "
            "segfw.models.encoders.dilate, dilates convolutions and poolings)."
        )
    for layer in trace_layers(encoder):
        if layer.in_stride < output_stride:
            continue
        rate = layer.in_stride // output_stride
        module = layer.module
        if isinstance(module, nn.MaxPool2d):
            # DeepLab v1's 3 x 3 window of stride 1, not dilated: PyTorch cannot pad a dilated
            # pooling window beyond half its kernel size.
            module.kernel_size, module.stride, module.padding = 3, 1, 1
        else:
            module.stride = (1, 1)
            if module.kernel_size != (1, 1):  # a 1 x 1 convolution sees one pixel at any rate
                module.dilation = tuple(rate * d for d in module.dilation)
                module.padding = tuple(
                    d * (k - 1) // 2
                    for d, k in zip(module.dilation, module.kernel_size, strict=True)
                )
    try:
        with torch.no_grad():
            sides = [feature.shape[-1] for feature in _dry_run(encoder)]
    except Exception as error:  # e.g. a residual sum of branches no longer the same size
        # (RuntimeError), a model's assertion on its sizes
        raise RuntimeError(
            f"it fails once dilated to output stride {output_stride} ({type(error).__name__}: "
            f"{error}): it down-samples with a module that segfw's à-trous routine "
            f"(segfw.models.encoders.dilate) does not handle (it handles Conv2d and MaxPool2d)."
        ) from None
    # Sides, not strides: an even-sized kernel shrinks a map by a pixel, which the integer
    # division of a stride would hide.
    expected = [DRY_RUN_SIZE // min(2**level, output_stride) for level in range(len(sides))]
    if sides != expected:
        raise RuntimeError(
            f"dilating it to output stride {output_stride} gave levels of {sides} pixels on a "
            f"{DRY_RUN_SIZE}-pixel image, not {expected}: it down-samples with a module that "
            f"segfw's à-trous routine (segfw.models.encoders.dilate) does not handle (it handles "
            f"Conv2d and MaxPool2d with odd-sized windows)."
        )


class Unused(nn.Module):
    """Stands in for an encoder module whose output no returned level depends on.

    The encoder's forward still calls it (timm runs the whole Xception block whose middle is the
    last level, HRNet all its branches); it returns zeros of the shape the module's output had,
    and holds no parameters.

    Args:
        channels: the module's output channels.
        scale: (output side, input side) in the dry run: the module's resizing, either way.
    """

    def __init__(self, channels: int, scale: tuple[int, int]) -> None:
        super().__init__()
        self.channels, self.scale = channels, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        out, into = self.scale
        return x.new_zeros(n, self.channels, height * out // into, width * out // into)


class _FunctionSpy(TorchFunctionMode):
    """Notes whether any of ``functions`` runs inside its ``with`` block."""

    def __init__(self, functions: Collection[object]) -> None:
        super().__init__()
        self.functions, self.seen = functions, False

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: object,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.seen = self.seen or func in self.functions
        return func(*args, **(kwargs or {}))


def _blank_images() -> torch.Tensor:
    return torch.zeros(1, 3, DRY_RUN_SIZE, DRY_RUN_SIZE)


def _dry_run(encoder: nn.Module, images: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The encoder's levels for one blank image, in eval mode: BatchNorm statistics untouched."""
    training = encoder.training
    encoder.eval()
    try:
        return encoder(_blank_images() if images is None else images)
    finally:
        encoder.train(training)


def remove_unused(encoder: nn.Module, levels: Sequence[int] | None = None) -> None:
    """Replaces each outermost module none of whose parameters the levels read depend on.

    Args:
        encoder: the encoder, changed in place.
        levels: the levels the architecture reads; None: all it returns. On an encoder that
            computes its levels in sequence, each level depends on all parameters the shallower
            ones do; on one of parallel branches (HRNet), the deepest alone does not.
    """
    called: set[nn.Module] = set()
    # Module -> Unused's arguments, for modules mapping feature maps to feature maps (not token
    # sequences, nor lists: the encoder itself).
    outputs: dict[nn.Module, tuple[int, tuple[int, int]]] = {}
    # Modules whose output has the shapes of their input (HRNet's stages, on lists of maps).
    shape_keeping: set[nn.Module] = set()

    def record(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
        called.add(module)
        if inputs and _is_map(inputs[0]) and _is_map(output):
            outputs[module] = (output.shape[1], (output.shape[-1], inputs[0].shape[-1]))
        elif inputs and _shapes(inputs[0]) is not None and _shapes(inputs[0]) == _shapes(output):
            shape_keeping.add(module)

    handles = [module.register_forward_hook(record) for module in encoder.modules()]
    # The search differentiates, also when the network is built under torch.no_grad() (e.g.
    # segfw.load in a caller's no_grad block), where every level would come out without a graph.
    with torch.enable_grad():
        try:
            features = _dry_run(encoder)
        finally:
            for handle in handles:
                handle.remove()
        read = [features[i] for i in (range(len(features)) if levels is None else levels)]
        read = [level for level in read if level.requires_grad]
        names, parameters = zip(*encoder.named_parameters(), strict=True)
        # autograd.grad, not backward: the parameters' .grad stay untouched.
        total = torch.stack([level.sum() for level in read]).sum()
        grads = torch.autograd.grad(total, parameters, allow_unused=True)
    used = {name for name, grad in zip(names, grads, strict=True) if grad is not None}
    _replace_unused(encoder, "", used, called, outputs, shape_keeping)


def _is_map(value: object) -> TypeGuard[torch.Tensor]:
    return isinstance(value, torch.Tensor) and value.dim() == 4


def _shapes(value: object) -> list[torch.Size] | None:
    """The shapes of a list or tuple of tensors; None for anything else."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return [v.shape for v in value]
    return None


def _replace_unused(
    parent: nn.Module,
    prefix: str,
    used: set[str],
    called: set[nn.Module],
    outputs: dict[nn.Module, tuple[int, tuple[int, int]]],
    shape_keeping: set[nn.Module],
) -> None:
    for child_name, child in parent.named_children():
        names = {f"{prefix}{child_name}.{name}" for name, _ in child.named_parameters()}
        if not names:
            continue
        # Containers are iterated by their owner's forward, never called: look inside them.
        if names & used or isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            _replace_unused(child, f"{prefix}{child_name}.", used, called, outputs, shape_keeping)
        elif child in outputs:
            setattr(parent, child_name, Unused(*outputs[child]))
        elif child not in called or child in shape_keeping:
            # Never called at this depth (ResNet's later layers, a classifier), or passing on
            # values of the shapes it was given, which nothing reads.
            setattr(parent, child_name, nn.Identity())
        # else: called on something else than one feature map, whose output Unused cannot
        # fake; it stays, and its parameters with it.
