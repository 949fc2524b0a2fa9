"""UNet: its parts held directly (``net.encoder.*`` as in every architecture), computing exactly
what ``smp.Unet`` computes; checkpoints of the earlier nested layout still load."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from model_helpers import BATCH, CLASSES, SIDE, build, build_generic

from segfw.training.module import SegmentationModule

# The layout segfw's Unet had when it nested smp.Unet as ``net``, inside a SegmentationModule.
LEGACY = {"net.encoder.": "net.net.encoder.", "net.decoder.": "net.net.decoder."}
LEGACY_HEAD = ("net.head.", "net.net.segmentation_head.0.")


def legacy_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SegmentationModule's state dict of today's Unet, in the nested layout."""

    def old(key: str) -> str:
        for new, legacy in (*LEGACY.items(), LEGACY_HEAD):
            if key.startswith(new):
                return legacy + key.removeprefix(new)
        return key

    return {old(key): value for key, value in state.items()}


@pytest.mark.parametrize("backbone", ["mobilenetv2", "vgg16"])
def test_unet_computes_what_smp_unet_computes_with_its_parameters(backbone):
    """The same random initialization, parameter count and logits as smp.Unet, whose weights
    load into it from the nested layout (VGG: with the center block smp.Unet adds)."""
    encoder = {"mobilenetv2": "mobilenet_v2", "vgg16": "vgg16"}[backbone]
    torch.manual_seed(0)
    theirs = smp.Unet(encoder, encoder_weights=None, classes=CLASSES).eval()
    torch.manual_seed(0)
    ours = build("unet", backbone).eval()
    assert [
        k for k in ours.state_dict() if not k.startswith(("encoder.", "decoder.", "head."))
    ] == []
    state = {f"net.{key}": value for key, value in theirs.state_dict().items()}
    assert ours.load_state_dict(state).missing_keys == []
    for key, value in theirs.state_dict().items():  # the same draws: seeded alike, identical
        torch.testing.assert_close(
            ours.state_dict()[key.replace("segmentation_head.0.", "head.")], value
        )
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=0)


def test_a_checkpoint_in_the_nested_layout_loads_into_todays_module():
    def module(seed: int) -> SegmentationModule:
        torch.manual_seed(seed)
        return SegmentationModule(
            model={"name": "unet", "height": SIDE, "width": SIDE},
            backbone={"name": "mobilenetv2", "weights": None},
            num_classes=CLASSES,
            class_names=["a", "b", "c"],
        ).eval()

    written = module(seed=0)
    old = legacy_layout(written.state_dict())
    assert any(key.startswith("net.net.encoder.") for key in old)
    assert any(key.startswith("net.net.segmentation_head.0.") for key in old)
    loaded = module(seed=1)
    loaded.load_state_dict(old)  # strict: every key finds its place
    images = torch.randint(0, 256, (BATCH, 3, SIDE, SIDE), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), written(images), rtol=0, atol=0)


def test_unet_on_a_stride_4_encoder_upsamples_across_the_missing_level():
    network = build_generic("unet", "convnext_atto")
    # Blocks from the deepest; the fourth (stride 4 -> 2) has no skip, the fifth the image's none.
    skips = [
        b.conv1[0].in_channels - w
        for b, w in zip(network.decoder.blocks, [320, 256, 128, 64, 32], strict=True)
    ]
    assert skips == [160, 80, 40, 0, 0]
