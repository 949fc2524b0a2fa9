"""Encoders: built from the backbone table, cut to a depth, dilated to an output stride.

Every function here works on any encoder of the table, VGG included, because none relies on how an
encoder is written: each watches a dry run of it on a small blank image and acts on what it saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segfw.models.backbones import Backbone

MAX_DEPTH = 5  # SMP's encoders return at most five levels below the input: strides 2 ... 32
# The dry run's input side: a multiple of the deepest stride, so that each feature map's side is
# exactly the input's divided by its stride.
DRY_RUN_SIZE = 64


def build_encoder(backbone: Backbone, depth: int = MAX_DEPTH) -> nn.Module:
    """SMP's encoder for ``backbone``, randomly initialized, returning levels 0 to ``depth``.

    Level ``i`` has stride ``2**i`` and ``encoder.out_channels[i]`` channels; level 0 is the input
    image itself, except for VGG, whose level 0 is its first block of convolutions.

    SMP and timm keep parts of the network beyond ``depth`` (ResNet's later layers, MobileNet's
    later blocks, the tail of the Xception block whose middle is the last feature): those are
    removed here, so that every parameter left is trained and counted.
    """
    encoder = smp.encoders.get_encoder(backbone.encoder, weights=None, depth=depth)
    if depth < MAX_DEPTH:  # at full depth every parameter feeds the deepest level
        _remove_unused(encoder)
    return encoder


@dataclass(frozen=True)
class Layer:
    """A Conv2d or MaxPool2d as the dry run saw it.

    Attributes:
        module: the module.
        in_stride: the network's input size over the size of this module's input.
        out_stride: the same for its output; twice ``in_stride`` where it down-samples.
    """

    module: nn.Module
    in_stride: int
    out_stride: int


def trace_layers(encoder: nn.Module) -> list[Layer]:
    """The encoder's Conv2d and MaxPool2d modules in the order its forward runs them."""
    layers: list[Layer] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
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


def feature_strides(encoder: nn.Module) -> list[int]:
    """The stride of each level the encoder returns (its input's size over the level's size)."""
    with torch.no_grad():
        features = _dry_run(encoder)
    return [DRY_RUN_SIZE // feature.shape[-1] for feature in features]


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
        RuntimeError: the encoder down-samples with a module other than Conv2d and MaxPool2d, or
            with an even-sized convolution, so that the levels do not come out at the promised
            strides afterwards. None of the table's backbones does.
    """
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
    strides = feature_strides(encoder)
    expected = [min(2**level, output_stride) for level in range(len(strides))]
    if strides != expected:
        raise RuntimeError(
            f"Dilating {type(encoder).__name__} to output stride {output_stride} gave levels at "
            f"strides {strides}, not {expected}: it down-samples with a module that segfw's "
            f"à-trous routine (segfw.models.encoders.dilate) does not handle."
        )


class Unused(nn.Module):
    """Stands in for an encoder module whose output no returned level depends on.

    The encoder's forward still calls it (timm runs the whole Xception block whose middle is the
    last level); it returns zeros of the shape the module's output had, and holds no parameters.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.channels, self.stride = channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        return x.new_zeros(n, self.channels, height // self.stride, width // self.stride)


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


def _remove_unused(encoder: nn.Module) -> None:
    """Replaces each outermost module none of whose parameters the returned levels depend on."""
    outputs: dict[nn.Module, tuple[int, int]] = {}  # module -> (channels, stride) of its output

    def record(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
        # Modules that take or return lists (the encoder itself) hold used parameters.
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            outputs[module] = (output.shape[1], inputs[0].shape[-1] // output.shape[-1])

    handles = [module.register_forward_hook(record) for module in encoder.modules()]
    try:
        levels = [level for level in _dry_run(encoder) if level.requires_grad]
    finally:
        for handle in handles:
            handle.remove()
    names, parameters = zip(*encoder.named_parameters(), strict=True)
    # autograd.grad, not backward: the parameters' .grad stay untouched.
    grads = torch.autograd.grad(sum(level.sum() for level in levels), parameters, allow_unused=True)
    used = {name for name, grad in zip(names, grads, strict=True) if grad is not None}
    _replace_unused(encoder, "", used, outputs)


def _replace_unused(
    parent: nn.Module, prefix: str, used: set[str], outputs: dict[nn.Module, tuple[int, int]]
) -> None:
    for child_name, child in parent.named_children():
        names = {f"{prefix}{child_name}.{name}" for name, _ in child.named_parameters()}
        if not names:
            continue
        if names & used:
            _replace_unused(child, f"{prefix}{child_name}.", used, outputs)
        elif child in outputs:
            setattr(parent, child_name, Unused(*outputs[child]))
        else:  # never called at this depth (ResNet's later layers): only its parameters go
            setattr(parent, child_name, nn.Identity())
