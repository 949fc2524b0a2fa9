"""Encoder initialization: ImageNet weights from the hub, a local file, or random."""

from __future__ import annotations

import logging
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segfw.errors import ConfigError
from segfw.models.backbones import Backbone
from segfw.models.unet import upgrade_legacy_keys

log = logging.getLogger(__name__)
# Where the encoder's entries sit in a training checkpoint, and in a network's state dict.
ENCODER_PREFIXES = ("net.encoder.", "encoder.")


def initialize_encoder(
    encoder: nn.Module, backbone_name: str, backbone: Backbone, weights: str | None
) -> str:
    """Loads ``weights`` into an encoder that was built with random initialization.

    Args:
        encoder: the network's encoder, as built with ``weights=None``.
        backbone_name: segfw's name of the backbone (a generic encoder's timm name), for
            messages.
        backbone: the backbone.
        weights: ``"imagenet"``, ``None`` (keep the random initialization) or a local file path
            holding a state dict of the encoder.

    Returns:
        A one-line description of what was loaded, for the run log.

    Raises:
        ValueError: the weights cannot be had or do not fit the encoder; the message says what to
            do instead.
    """
    if weights is None:
        return f"backbone {backbone_name}: random initialization (backbone.weights=null)"
    if weights == "imagenet":
        state = _imagenet_state(backbone_name, backbone)
        source = f"ImageNet weights of {backbone.encoder}"
    else:
        state = _local_state(Path(weights), backbone_name)
        source = f"weights from {weights}"
    advice = f"Save the state dict of the same encoder ({backbone.encoder}), or set backbone.weights=null."
    # Tensors of the right names but other shapes (another size of the same family) would make
    # load_state_dict raise on the first one; all of them are named here instead.
    current = encoder.state_dict()
    misshapen = [k for k, v in state.items() if k in current and current[k].shape != v.shape]
    if misshapen:
        raise ConfigError(
            f"{source} do not fit backbone {backbone_name}: {len(misshapen)} of their tensors "
            f"have other shapes than the encoder's (first: {', '.join(misshapen[:5])}). {advice}"
        )
    # nn.Module's own method: SMP's ResNet and VGG encoders override it and return nothing.
    missing, unexpected = nn.Module.load_state_dict(encoder, state, strict=False)
    if missing:
        raise ConfigError(
            f"{source} do not fit backbone {backbone_name}: {len(missing)} encoder parameters are "
            f"missing from them (first: {', '.join(missing[:5])}). {advice}"
        )
    note = f"; ignored {len(unexpected)} keys the encoder has no use for" if unexpected else ""
    return f"backbone {backbone_name}: loaded {source}{note}"


def _imagenet_state(backbone_name: str, backbone: Backbone) -> dict[str, torch.Tensor]:
    if not backbone.imagenet:
        raise ConfigError(
            f"No ImageNet weights have been released for backbone {backbone_name} "
            f"({backbone.encoder}). Set backbone.weights=null to train it from random "
            f"initialization, or backbone.weights=/path/to/encoder.pth for weights of your own."
        )
    # SMP takes True for a timm model's weights (those of its tag), a name for its own encoders'.
    weights = True if backbone.encoder.startswith("tu-") else "imagenet"
    try:
        return smp.encoders.get_encoder(backbone.encoder, weights=weights).state_dict()
    except Exception as error:  # the hubs raise many types (URLError, httpx, HF errors)
        raise ConfigError(
            f"Could not fetch ImageNet weights for backbone {backbone_name} ({backbone.encoder}): "
            f"{type(error).__name__}: {error}. Offline? Set backbone.weights=null to train from "
            f"random initialization, or download the weights on a connected machine, save "
            f"`smp.encoders.get_encoder('{backbone.encoder}', weights={weights!r}).state_dict()` "
            f"with torch.save, and pass backbone.weights=/path/to/that.pth."
        ) from error


def _local_state(path: Path, backbone_name: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(
            f"backbone.weights={str(path)!r} is neither 'imagenet', null, nor an existing file."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"Could not read backbone weights {path}: {type(error).__name__}: {error}. "
            f"Expected a file written by torch.save(encoder.state_dict(), path)."
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(
            f"Backbone weights {path} hold a {type(state).__name__}, not a state dict; save "
            f"them with torch.save(encoder.state_dict(), path)."
        )
    # Accept the state dict of a whole network (segfw's or SMP's) or a training checkpoint too:
    # keep its encoder's entries. A checkpoint of segfw's UNet from before one layout held its
    # encoder under "net.net.encoder.".
    state = upgrade_legacy_keys(state, "net.")
    for prefix in ENCODER_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            break
    log.debug("read %d tensors for backbone %s from %s", len(state), backbone_name, path)
    return state
