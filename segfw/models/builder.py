"""Builds a network from the ``model`` and ``backbone`` configs: the one entry point to the zoo."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError
from segfw.models.backbones import backbone_spec
from segfw.models.base import SegmentationNetwork
from segfw.models.deeplabv3plus import DeepLabV3Plus
from segfw.models.pspnet import PSPNet
from segfw.models.segformer import SegFormer
from segfw.models.segnet import SegNet
from segfw.models.unet import Unet
from segfw.models.unetpp import UnetPlusPlus
from segfw.models.upernet import UPerNet
from segfw.models.weights import initialize_encoder

log = logging.getLogger(__name__)

# The table of architectures: config name -> network class(backbone, num_classes, **arguments);
# each argument's default is the seed's (the paper's, for the last two), repeated (with its
# meaning) in segfw/conf/model/<name>.yaml.
ARCHITECTURES: dict[str, Callable[..., SegmentationNetwork]] = {
    "deeplabv3plus": DeepLabV3Plus,
    "unet": Unet,
    "pspnet": PSPNet,
    "segnet": SegNet,
    "unetpp": UnetPlusPlus,
    "segformer": SegFormer,
    "upernet": UPerNet,
}


def build_model(
    model: Mapping[str, Any], backbone: Mapping[str, Any], num_classes: int
) -> SegmentationNetwork:
    """Builds the network that ``model`` and ``backbone`` describe.

    Args:
        model: the ``model`` config: ``name``, ``height``, ``width`` and the architecture's own
            arguments.
        backbone: the ``backbone`` config: ``name``, ``weights``, and for ``name: timm`` the
            ``encoder``.
        num_classes: number of output classes.

    Returns:
        The network, its encoder initialized as ``backbone.weights`` says.

    Raises:
        ConfigError: unknown architecture, backbone or argument, an encoder that cannot serve
            the architecture, or an input size the network cannot take; the message names the
            bad value and the valid ones.
    """
    model_args = dict(model)
    name = model_args.pop("name")
    height, width = model_args.pop("height"), model_args.pop("width")
    build = choose(ARCHITECTURES, name, "model.name")
    spec = backbone_spec(backbone)
    label = spec.label if spec.generic else backbone["name"]
    check_arguments(build, model_args, "model", skip=2, also=("name", "height", "width"))
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}: a segmentation model needs at least 2.")

    network = build(spec, num_classes, **model_args)
    _check_input_size(name, label, network.input_divisor, height, width)
    weights = backbone.get("weights")
    description = initialize_encoder(network.encoder, label, spec, weights)
    # Random weights are no news here: training announces them itself, and evaluate, predict and
    # export rebuild a checkpoint's network this way before loading its trained weights.
    log.log(logging.DEBUG if weights is None else logging.INFO, description)
    return network


def _check_input_size(name: str, backbone: str, divisor: int, height: int, width: int) -> None:
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % divisor:
            lower = max(divisor, value // divisor * divisor)
            upper = lower + divisor if value > lower else lower
            raise ConfigError(
                f"model.{key}={value} is not a multiple of {divisor}, which {name} on {backbone} "
                f"requires. Use model.{key}={lower} or model.{key}={upper}."
            )
