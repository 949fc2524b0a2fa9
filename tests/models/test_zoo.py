"""The zoo as a whole: every architecture trains on every named backbone and on a representative
generic encoder of each kind, or refuses it with the reason; configs match the code; values out of
range name what is allowed; train.py runs each architecture."""

from __future__ import annotations

import inspect
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from model_helpers import (
    ENCODERS,
    NARROW,
    SIDE,
    build,
    build_generic,
    check_training_step,
)
from omegaconf import OmegaConf

from helpers import CONF, TINY, TINY_SHAPES, compose_config
from segfw.errors import ConfigError
from segfw.models import ARCHITECTURES, BACKBONES, build_model
from segfw.models.__main__ import report
from segfw.models.backbones import get_backbone
from segfw.models.encoders import build_encoder

ROOT = Path(__file__).resolve().parents[2]
# The seed's five; segformer and upernet on the eleven named backbones run in the slow matrix.
SEED_ARCHITECTURES = ["deeplabv3plus", "unet", "pspnet", "segnet", "unetpp"]
NEW_ARCHITECTURES = [name for name in ARCHITECTURES if name not in SEED_ARCHITECTURES]

# Generic encoder x architecture pairs that must be refused at construction, with why.
REFUSED = {
    ("convnext_atto", "unetpp"): "first level is at stride 4.*model=unet",
    ("mit_b0", "unetpp"): "first level is at stride 4.*model=unet",
    ("mit_b0", "deeplabv3plus"): "cannot be dilated.*attention.*model=upernet or model=segformer",
    ("mit_b0", "pspnet"): "cannot be dilated.*attention.*model=upernet or model=segformer",
}


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_every_architecture_trains_and_predicts_on_every_backbone(name, backbone):
    check_training_step(build(name, backbone))


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_trains_on_each_kind_of_generic_encoder_or_says_why_not(name, encoder):
    arguments = NARROW.get(name, {})
    if (encoder, name) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[encoder, name]):
            build_generic(name, encoder, **arguments)
    else:
        check_training_step(build_generic(name, encoder, **arguments))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", NEW_ARCHITECTURES)
def test_segformer_and_upernet_train_on_every_named_backbone(name, backbone):
    check_training_step(build(name, backbone))


# The slow matrix: more families (hook-based features, VGG-style level 0, no dilation, models
# built for one input size, plain ViT), each setting that changes what the encoder must offer.
MATRIX_ENCODERS = (
    *ENCODERS,
    "resnet18",
    "vgg11",
    "densenet121",
    "mobilenetv3_large_100",
    "xception41",
    "dla34",
    "hrnet_w18_small",
    "tresnet_m",
    "pvt_v2_b0",
    "convnext_tiny",
    "regnety_016",
    "mit_b1",
    "swin_tiny_patch4_window7_224",
    "vit_small_patch16_224",
)
SETTINGS = [
    ("deeplabv3plus", {"output_stride": 8}),
    ("deeplabv3plus", {"output_stride": 16}),
    ("unet", {}),
    ("pspnet", {"down_sample_factor": 4}),
    ("pspnet", {"down_sample_factor": 8}),
    ("pspnet", {"down_sample_factor": 16}),
    *[("segnet", {"num_upsample_layers": n}) for n in (2, 3, 4, 5)],
    *[("unetpp", {"num_upsample_layers": n}) for n in (1, 3, 5)],
    ("segformer", {}),
    ("upernet", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", MATRIX_ENCODERS)
def test_the_encoder_matrix_trains_where_the_listing_says_and_refuses_elsewhere(encoder):
    """Every setting of every architecture on each encoder: one training step where
    ``python -m segfw.models --encoders`` lists it as supported, a ConfigError elsewhere."""
    start = time.perf_counter()
    supported = report(encoder).supports()
    ran = []
    for name, setting in SETTINGS:
        value = next(iter(setting.values()), None)
        listed = name in supported and (
            value is None or str(value) in _listed_values(supported[name])
        )
        side = 64 if name == "pspnet" else SIDE  # a 4 x 4 map at stride 16 for the 6 x 6 bins
        arguments = {**NARROW.get(name, {}), **setting}
        if listed:
            check_training_step(build_generic(name, encoder, side, **arguments), side)
            ran.append(f"{name}{setting or ''}")
        else:
            with pytest.raises(ConfigError):
                build_generic(name, encoder, side, **arguments)
    print(
        f"{encoder}: {len(ran)} of {len(SETTINGS)} settings in {time.perf_counter() - start:.0f} s"
    )


def _listed_values(settings: str) -> list[str]:
    """The values a listing's settings name: "8,16" -> 8, 16; "2-5" -> 2, 3, 4, 5."""
    if "-" in settings:
        low, high = map(int, settings.split("-"))
        return [str(n) for n in range(low, high + 1)]
    return settings.split(",")


# --- bad values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("deeplabv3plus", {"output_stride": 4}, r"model.output_stride=4 .*Choose one of: 8, 16"),
        ("pspnet", {"down_sample_factor": 32}, r"down_sample_factor=32 .*Choose one of: 4, 8, 16"),
        ("pspnet", {"aux_weight": -1}, r"model.aux_weight=-1 .*>= 0"),
        (
            "segnet",
            {"num_upsample_layers": 6},
            r"num_upsample_layers=6 .*Choose one of: 2, 3, 4, 5",
        ),
        ("segnet", {"num_upsample_layers": True}, r"num_upsample_layers=True .*2, 3, 4, 5"),
        ("unetpp", {"num_upsample_layers": 6}, r"num_upsample_layers=6 .*1, 2, 3, 4, 5"),
        ("unetpp", {"filters": [64, 128]}, r"model.filters=\[64, 128\] .*at least 3 entries"),
        ("unetpp", {"filters": [64, 0, 256]}, r"model.filters=\[64, 0, 256\].*positive"),
        ("unetpp", {"prune_level": 4}, r"model.prune_level=4 .*Choose one of: 1, 2, 3"),
        (
            "unetpp",
            {"prune_level": 1, "deep_supervision": False},
            r"prune_level=1 needs model.deep_supervision=true",
        ),
        ("unetpp", {"deep_supervision": "yes"}, r"model.deep_supervision='yes'.*true or false"),
        ("segformer", {"decoder_channels": 0}, r"model.decoder_channels=0 is not a width.*256"),
        ("upernet", {"decoder_channels": [512]}, r"model.decoder_channels=\[512\] is not a width"),
        ("upernet", {"aux_weight": "yes"}, r"model.aux_weight='yes' .*>= 0"),
    ],
)
def test_values_outside_the_allowed_set_name_what_is_allowed(name, arguments, message):
    with pytest.raises(ValueError, match=message):
        build(name, "mobilenetv2", side=64, **arguments)


@pytest.mark.parametrize(
    ("name", "arguments", "side", "message"),
    [
        (
            "segnet",
            {"num_upsample_layers": 5},
            48,
            r"height=48 is not a multiple of 32.*=32 or .*=64",
        ),
        (
            "pspnet",
            {"down_sample_factor": 16},
            40,
            r"height=40 is not a multiple of 16.*=32 or .*=48",
        ),
        (
            "deeplabv3plus",
            {"output_stride": 8},
            60,
            r"height=60 is not a multiple of 8.*=56 or .*=64",
        ),
    ],
)
def test_input_size_must_divide_by_the_networks_stride(name, arguments, side, message):
    with pytest.raises(ValueError, match=message):
        build(name, "mobilenetv2", side=side, **arguments)


def test_input_size_message_names_a_generic_encoder():
    with pytest.raises(ConfigError, match=r"height=48 .*segformer on convnext_atto requires"):
        build_generic("segformer", "convnext_atto", side=48, **NARROW["segformer"])


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_model_config_holds_the_architectures_arguments_with_their_defaults(name):
    config = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    assert config.pop("name") == name
    assert {"height", "width"} <= set(config)
    config.pop("height"), config.pop("width")
    parameters = list(inspect.signature(ARCHITECTURES[name]).parameters.values())[2:]
    defaults = {p.name: p.default for p in parameters}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert config == defaults


def test_every_backbone_has_its_config():
    for name in BACKBONES:
        assert OmegaConf.load(CONF / "backbone" / f"{name}.yaml").name == name
    timm = OmegaConf.load(CONF / "backbone" / "timm.yaml")
    assert timm.name == "timm" and OmegaConf.is_missing(timm, "encoder")
    assert timm.weights == "imagenet"


@pytest.mark.parametrize(
    ("experiment", "architecture", "encoder"),
    [
        ("quickstart_segformer", "segformer", "mit_b0"),
        ("quickstart_upernet", "upernet", "convnext_tiny"),
    ],
)
def test_quickstart_experiments_compose_into_the_network_they_name(
    experiment, architecture, encoder
):
    cfg = compose_config("train", [f"experiment={experiment}"])
    assert (cfg.model.name, cfg.backbone.name, cfg.backbone.encoder) == (
        architecture,
        "timm",
        encoder,
    )
    quickstart = compose_config("train", ["experiment=quickstart"])
    for key in ("model.height", "model.width", "trainer.max_epochs", "optimizer.lr", "data.sizes"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(quickstart, key), key
    backbone = {**OmegaConf.to_container(cfg.backbone), "weights": None}
    model = OmegaConf.to_container(cfg.model)
    assert type(build_model(model, backbone, cfg.data.num_classes)).__name__.lower() == architecture


# The blocks that identify each backbone's architecture, and how many its encoder has.
SIGNATURES = {
    "vgg16": ("Conv2d", 13),
    "vgg19": ("Conv2d", 16),
    "resnet50": ("Bottleneck", 16),  # torchvision's post-activation blocks, 3-4-6-3
    "resnet101": ("Bottleneck", 33),
    "resnet152": ("Bottleneck", 50),
    "resnet50v2": ("PreActBottleneck", 16),  # pre-activation (He et al., 2016b)
    "resnet101v2": ("PreActBottleneck", 33),
    "resnet152v2": ("PreActBottleneck", 50),
    "mobilenet": ("DepthwiseSeparableConv", 13),  # v1: no inverted residuals
    "mobilenetv2": ("InvertedResidual", 17),
    "xception": ("XceptionModule", 21),  # aligned Xception-65: 3 entry, 16 middle, 2 exit flow
}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_each_backbone_is_the_architecture_its_name_says(backbone):
    block, count = SIGNATURES[backbone]
    encoder = build_encoder(get_backbone(backbone))
    assert sum(type(m).__name__ == block for m in encoder.modules()) == count


# --- end to end ------------------------------------------------------------------------------------

# One backbone per architecture, chosen to cover the cases the zoo adds: a dilated VGG, a pruned
# timm encoder, the ResNet stem's unpooling.
CLI_PAIRS = [
    ("deeplabv3plus", "vgg16"),
    ("unet", "mobilenet"),
    ("pspnet", "mobilenetv2"),
    ("segnet", "resnet50"),
    ("unetpp", "xception"),
]


def cli_overrides(name: str, backbone: str, run_dir: Path) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("backbone=")] + TINY_SHAPES
    return [
        f"model={name}",
        f"backbone={backbone}",
        "backbone.weights=null",
        *tiny,  # includes model.height=64 and model.width=64
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={run_dir}",
    ]


def run_train(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        # One thread, as in this folder's other tests: a third faster at this size.
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )


# fast_dev_run smoke runs: tests/realuse trains every architecture through train.py with every
# default on, so these backbone pairings run with the slow suite.
@pytest.mark.slow
@pytest.mark.parametrize(("name", "backbone"), CLI_PAIRS)
def test_command_line_trains_each_architecture(tmp_path, name, backbone):
    result = run_train(cli_overrides(name, backbone, tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").model.name == name


@pytest.mark.slow
def test_command_line_trains_every_pair(tmp_path):
    """The coverage claim, pair by pair through train.py: the seed's 55 pairs took about 10
    minutes on 2 cores; with SegFormer and UPerNet there are 77."""
    failures = {}
    start = time.perf_counter()
    for name, backbone in itertools.product(ARCHITECTURES, BACKBONES):
        result = run_train(cli_overrides(name, backbone, tmp_path / f"{name}-{backbone}"))
        if result.returncode:
            failures[f"{name}/{backbone}"] = result.stderr[-1500:]
    print(
        f"{len(ARCHITECTURES) * len(BACKBONES)} command-line runs in {time.perf_counter() - start:.0f} s"
    )
    assert not failures, failures


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "encoder"), [("segformer", "mit_b0"), ("upernet", "convnext_atto")]
)
def test_command_line_trains_on_a_generic_encoder(tmp_path, name, encoder):
    overrides = cli_overrides(name, "timm", tmp_path / "run") + [f"backbone.encoder={encoder}"]
    result = run_train(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").backbone.encoder == encoder
