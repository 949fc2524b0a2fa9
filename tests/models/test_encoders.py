"""Encoders: named backbones and timm ones by name; dilation equal to torchvision's and timm's own;
what an encoder cannot do is refused at construction with the reason and a choice; the listing."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from model_helpers import NARROW, build_generic
from torch import nn

from segfw.errors import ConfigError
from segfw.models import BACKBONES, backbone_spec, get_backbone
from segfw.models.__main__ import print_encoders, report
from segfw.models.backbones import timm_backbone
from segfw.models.encoders import Unused, build_encoder, dilate, remove_unused
from segfw.training.module import SegmentationModule

# --- named backbones ---------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_dilated_encoders_come_out_at_the_promised_stride_with_the_same_weights(backbone):
    plain = build_encoder(get_backbone(backbone))
    for stride in (4, 8, 16):
        encoder = copy.deepcopy(plain)
        dilate(encoder, stride)
        assert {k: v.shape for k, v in encoder.state_dict().items()} == {
            k: v.shape for k, v in plain.state_dict().items()
        }
        encoder.eval()
        with torch.no_grad():
            sides = [f.shape[-1] for f in encoder(torch.randn(1, 3, 64, 64))]
        assert sides == [64 // min(2**level, stride) for level in range(6)], (stride, sides)


@pytest.mark.parametrize(
    ("backbone", "reference"),
    [
        # torchvision's own dilated ResNet (the FCN/DeepLab models' backbone).
        ("resnet50", lambda: torchvision.models.resnet50(replace_stride_with_dilation=[0, 1, 1])),
        # timm's native output stride (DeepLab's dilated Xception-65).
        ("xception", lambda: timm.create_model("xception65", features_only=True, output_stride=8)),
    ],
)
def test_dilation_computes_what_the_libraries_own_dilated_encoders_compute(backbone, reference):
    torch.manual_seed(0)
    ours = build_encoder(get_backbone(backbone))
    dilate(ours, 8)
    theirs = reference()
    state = {k.removeprefix("model."): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=False)
    assert not set(state) - set(theirs.state_dict())  # every weight of ours has its place there
    ours.eval()
    theirs.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deepest = ours(images)[-1]
        if isinstance(theirs, torchvision.models.ResNet):
            expected = nn.Sequential(*list(theirs.children())[:-2])(images)
        else:
            expected = theirs(images)[-1]
    assert deepest.shape[-1] == 8
    torch.testing.assert_close(deepest, expected)


# --- generic encoders ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["efficientnet_b0", "regnetx_002"])
@pytest.mark.parametrize("stride", [8, 16])
def test_segfw_dilation_of_a_generic_encoder_computes_what_timms_output_stride_computes(
    encoder, stride
):
    """segfw's à-trous routine on a timm encoder (its fallback for models timm does not dilate)
    against timm's own output_stride (what build_encoder uses where the model offers it), the
    same weights copied in: every level equal."""
    torch.manual_seed(0)
    backbone = timm_backbone(encoder)
    ours = build_encoder(backbone)
    dilate(ours, stride)
    theirs = build_encoder(backbone, output_stride=stride)
    assert theirs.model.feature_info.reduction()[-1] == stride  # timm dilated this one itself
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for level, (mine, timms) in enumerate(zip(ours(images), theirs(images), strict=True)):
            assert mine.shape[-1] == 64 // min(2**level, stride)
            torch.testing.assert_close(mine, timms, msg=f"level {level}")


def test_generic_encoders_take_their_input_statistics_from_timm():
    for name in ("convnext_atto", "vit_small_patch16_224", "convnext_tiny.fb_in1k"):
        config = timm.models.get_pretrained_cfg(name)
        backbone = timm_backbone(name)
        assert (backbone.mean, backbone.std) == (tuple(config.mean), tuple(config.std))
        assert backbone.imagenet and backbone.generic
    assert timm_backbone("vit_small_patch16_224").mean == (0.5, 0.5, 0.5)  # not ImageNet's
    assert not timm_backbone("resnetv2_152").imagenet  # timm publishes no weights for it
    # The LightningModule normalizes with them.
    module = SegmentationModule(
        model={"name": "segformer", "height": 32, "width": 32, **NARROW["segformer"]},
        backbone={"name": "timm", "encoder": "mit_b0", "weights": None},
        num_classes=3,
        class_names=["a", "b", "c"],
    )
    assert module.mean.flatten().tolist() == pytest.approx([v * 255 for v in (0.485, 0.456, 0.406)])


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        (
            {"name": "timm", "encoder": "convnext_tny"},
            r"backbone.encoder='convnext_tny' is not supported: timm has no such model "
            r"\(python -m segfw.models --encoders 'PATTERN'.*Choose one of: convnext_tiny",
        ),
        (
            {"name": "timm", "encoder": "convnext_tiny.no_such_tag"},
            r"convnext_tiny.no_such_tag.*no such weights.*convnext_tiny.fb_in1k",
        ),
        ({"name": "timm"}, r"backbone=timm needs backbone.encoder.*convnext_tiny"),
        ({"name": "timm", "encoder": None}, r"backbone=timm needs backbone.encoder"),
        ({"name": "timm", "encoder": "mit_b0", "pretrained": True}, r"backbone.pretrained"),
        (
            {"name": "resnet50", "encoder": "resnet50"},
            r"backbone has no setting backbone.encoder; it takes backbone.name, backbone.weights",
        ),
        ({"name": "convnext"}, r"Unknown backbone.name='convnext'.*xception, timm"),
    ],
)
def test_bad_backbone_settings_name_the_value_and_the_choices(backbone, message):
    with pytest.raises(ConfigError, match=message):
        backbone_spec(backbone)


@pytest.mark.parametrize(
    ("name", "encoder", "arguments", "message"),
    [
        # A plain ViT: one stride, no pyramid.
        ("unet", "vit_small_patch16_224", {}, r"strides \[16, 16, 16\], not a pyramid.*convnext"),
        # Built for 224 x 224 inputs only.
        ("unet", "swin_tiny_patch4_window7_224", {}, r"fails on a blank 64 x 64 image.*any input"),
        # ConvNeXt down-samples with 2 x 2 convolutions: timm dilates to 8 and 16, not to 4.
        (
            "pspnet",
            "convnext_atto",
            {"down_sample_factor": 4},
            r"model.down_sample_factor=4 needs .*stride 4, but backbone.encoder=convnext_atto "
            r"cannot be dilated: .*odd-sized windows.*model=upernet",
        ),
        # ResNet-D shortcuts average-pool: timm dilates to 8 and 16, segfw cannot to 4.
        (
            "pspnet",
            "resnet18d",
            {"down_sample_factor": 4},
            r"resnet18d cannot be dilated: .*does not handle",
        ),
    ],
)
def test_what_an_encoder_cannot_serve_is_refused_with_why_and_what_to_choose(
    name, encoder, arguments, message
):
    with pytest.raises(ConfigError, match=message):
        build_generic(name, encoder, side=64, **{**NARROW.get(name, {}), **arguments})


def test_a_generic_encoder_is_cut_to_the_depth_an_architecture_reads():
    shallow = build_generic("segnet", "efficientnet_b0", num_upsample_layers=2)
    full = build_encoder(timm_backbone("efficientnet_b0"))
    encoder_parameters = sum(p.numel() for p in shallow.encoder.parameters())
    assert encoder_parameters < sum(p.numel() for p in full.parameters()) / 10
    assert len(shallow.encoder.out_channels) == 3


class _ParallelBranches(nn.Module):
    """An encoder whose unread branch lives in nested ModuleLists that its forward iterates but
    never calls, as HRNet's fuse layers (hrnet_w18_small, segnet: the slow matrix)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fuse = nn.ModuleList([nn.ModuleList([nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)])])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        level1 = self.stem(x)
        fused = level1
        for layers in self.fuse:
            for layer in layers:
                fused = layer(fused)
        return [x, level1, fused]


def test_removing_unused_modules_keeps_the_containers_a_forward_iterates():
    encoder = _ParallelBranches()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(images)[1]
    remove_unused(encoder, levels=[1])
    assert isinstance(encoder.fuse, nn.ModuleList) and isinstance(encoder.fuse[0], nn.ModuleList)
    assert all(isinstance(layer, Unused) for layer in encoder.fuse[0])
    assert not list(encoder.fuse.parameters())
    with torch.no_grad():
        levels = encoder(images)
    torch.testing.assert_close(levels[1], expected)
    assert levels[2].shape == (1, 4, 32, 32) and not levels[2].any()


# --- the listing ---------------------------------------------------------------------------------


def test_encoder_listing_states_strides_size_dilations_and_architectures(capsys):
    print_encoders("convnext_atto")
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(lines) == {"convnext_atto"}
    line = lines["convnext_atto"]
    for fact in ("4,8,16,32", "3.4M", "yes", "16(timm) 8(timm)", "pspnet(8,16)", "segnet(2-5)"):
        assert fact in line, fact
    assert "unetpp" not in line and "4(" not in line


def test_encoder_listing_agrees_with_construction_on_a_mix_transformer():
    supports = report("mit_b0").supports()
    assert supports == {"unet": "", "segnet": "2-5", "segformer": "", "upernet": ""}
    for name in ("deeplabv3plus", "pspnet", "unetpp"):  # what it leaves out is refused
        with pytest.raises(ConfigError):
            build_generic(name, "mit_b0", **NARROW.get(name, {}))


def test_encoder_listing_says_why_an_encoder_serves_nothing(capsys):
    print_encoders("vit_small_patch16_224")
    assert "none: backbone.encoder=vit_small_patch16_224 returns features at strides" in (
        capsys.readouterr().out
    )
