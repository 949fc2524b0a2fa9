"""Builds a network from the ``model`` and ``backbone`` configs: the one entry point to the zoo."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError
from segfw.models.backbones import get_backbone
from segfw.models.base import SegmentationNetwork
from segfw.models.deeplabv3plus import DeepLabV3Plus
from segfw.models.pspnet import PSPNet
from segfw.models.segnet import SegNet
from segfw.models.unet import Unet
from segfw.models.unetpp import UnetPlusPlus
from segfw.models.weights import initialize_encoder

log = logging.getLogger(__name__)

# The table of architectures: config name -> network class(backbone, num_classes, **arguments);
# each argument's default is the seed's, repeated (with its meaning) in conf/model/<name>.yaml.
ARCHITECTURES: dict[str, Callable[..., SegmentationNetwork]] = {
    "deeplabv3plus": DeepLabV3Plus,
    "unet": Unet,
    "pspnet": PSPNet,
    "segnet": SegNet,
    "unetpp": UnetPlusPlus,
}


def build_model(
    model: Mapping[str, Any], backbone: Mapping[str, Any], num_classes: int
) -> SegmentationNetwork:
    """Builds the network that ``model`` and ``backbone`` describe.

    Args:
        model: the ``model`` config: ``name``, ``height``, ``width`` and the architecture's own
            arguments.
        backbone: the ``backbone`` config: ``name`` and ``weights``.
        num_classes: number of output classes.

    Returns:
        The network, its encoder initialized as ``backbone.weights`` says.

    Raises:
        ValueError: unknown architecture, backbone or argument, or an input size the network
            cannot take; the message names the bad value and the valid ones.
    """
    model_args = dict(model)
    name = model_args.pop("name")
    height, width = model_args.pop("height"), model_args.pop("width")
    build = choose(ARCHITECTURES, name, "model.name")
    backbone_args = dict(backbone)
    backbone_name, weights = backbone_args.pop("name"), backbone_args.pop("weights", None)
    if backbone_args:
        raise ConfigError(
            f"Unknown backbone settings {sorted(backbone_args)}; a backbone config takes "
            f"'name' and 'weights'."
        )
    spec = get_backbone(backbone_name)
    check_arguments(build, model_args, "model", skip=2)
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}: a segmentation model needs at least 2.")

    network = build(spec, num_classes, **model_args)
    _check_input_size(name, backbone_name, network.input_divisor, height, width)
    log.info(initialize_encoder(network.encoder, backbone_name, spec, weights))
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
