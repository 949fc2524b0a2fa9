"""The model zoo: every architecture on every backbone trains; dilation, SegNet's unpooling, UNet++'s
deep supervision and pruning do what they promise; parameter counts match the references."""

from __future__ import annotations

import copy
import inspect
import itertools
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torch import nn

from helpers import CONF, TINY, TINY_SHAPES
from segfw.models import ARCHITECTURES, BACKBONES, build_model, get_backbone
from segfw.models.encoders import build_encoder, dilate
from segfw.models.segnet import IndexedMaxPool2d, MaxUnpool
from segfw.models.unetpp import UnetPlusPlus

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 3
# The smallest side every default network takes (UNet: five halvings); a batch of two, because
# BatchNorm in training mode refuses one value per channel (the 1 x 1 maps at stride 32).
SIDE = 32
BATCH = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On these tiny tensors a second OpenMP thread costs more in synchronization than it saves,
    the more so on a busy machine: on the shared 2-core CI box the 55 pairs took 8.6 minutes with
    two threads, 1.6 with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, backbone: str, side: int = SIDE, **arguments) -> nn.Module:
    model = {"name": name, "height": side, "width": side, **arguments}
    return build_model(model, {"name": backbone, "weights": None}, CLASSES)


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_trains_and_predicts_on_every_backbone(name, backbone):
    torch.manual_seed(0)
    network = build(name, backbone)
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    target = torch.randint(0, CLASSES, (BATCH, SIDE, SIDE))

    outputs = network.training_outputs(images)
    loss = sum(w * F.cross_entropy(logits, target) for logits, w in outputs.loss_terms)
    loss.backward()
    assert outputs.logits.shape == (BATCH, CLASSES, SIDE, SIDE)
    assert torch.isfinite(loss) and torch.isfinite(outputs.logits).all()
    no_gradient = [n for n, p in network.named_parameters() if p.grad is None]
    assert not no_gradient, f"no gradient reaches {no_gradient[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in network.parameters())

    network.eval()
    with torch.no_grad():
        prediction = network(images)
    assert prediction.shape == (BATCH, CLASSES, SIDE, SIDE)
    assert torch.isfinite(prediction).all()


# --- dilation ------------------------------------------------------------------------------------


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


def test_deeplab_and_pspnet_dilate_their_encoder_to_the_configured_stride():
    for name, key in (("deeplabv3plus", "output_stride"), ("pspnet", "down_sample_factor")):
        for stride in (8, 16):
            network = build(name, "vgg16", side=64, **{key: stride})
            with torch.no_grad():
                deepest = network.encoder(torch.randn(1, 3, 64, 64))[-1]
            assert deepest.shape[-1] == 64 // stride, (name, stride)


# --- SegNet ----------------------------------------------------------------------------------------


def test_segnet_on_vgg_unpools_every_stage_with_the_encoders_own_indices():
    torch.manual_seed(0)
    network = build("segnet", "vgg16", num_upsample_layers=5)
    unpools = [m for m in network.decoder.modules() if isinstance(m, MaxUnpool)]
    pools = [m for m in network.encoder.modules() if isinstance(m, IndexedMaxPool2d)]
    assert len(unpools) == len(pools) == 5
    assert {id(u.pool) for u in unpools} == {id(p) for p in pools}
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in network.modules())

    # Each unpooled map is non-zero only where the paired pool's input had its window maximum.
    seen = {}  # pool -> its input, unpool -> its output

    def keep(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        seen[module] = inputs[0] if module in pools else output

    hooks = [m.register_forward_hook(keep) for m in pools + unpools]
    with torch.no_grad():
        network(torch.randn(BATCH, 3, SIDE, SIDE))
    for hook in hooks:
        hook.remove()
    for unpool in unpools:
        before_pool = seen[unpool.pool]
        window_max = F.interpolate(F.max_pool2d(before_pool, 2), scale_factor=2)
        placed = seen[unpool] != 0
        assert placed.any()
        assert (before_pool == window_max)[placed].all()


def test_segnet_on_resnet_unpools_at_the_stem_and_learns_the_other_upsamplings():
    network = build("segnet", "resnet50", num_upsample_layers=3)
    # Decoder stages from the deepest: undo layer2's strided conv, the stem's max-pool, its conv.
    ups = [stage[-1] for stage in network.decoder[:3]]
    assert [type(up) for up in ups] == [nn.ConvTranspose2d, MaxUnpool, nn.ConvTranspose2d]
    assert ups[1].pool is network.encoder.maxpool


def test_segnet_with_unpooling_traces_for_export_and_holds_at_another_size():
    network = build("segnet", "resnet50", num_upsample_layers=3).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still what export.py uses
        traced = torch.jit.trace(network, torch.randn(1, 3, SIDE, SIDE), check_trace=False)
        images = torch.randn(2, 3, 48, 64)
        torch.testing.assert_close(traced(images), network(images))


def test_segnet_vgg16_with_the_full_decoder_has_the_papers_parameter_count():
    # SegNet paper (Badrinarayanan et al., 2017, Table 6): 29.5 M parameters.
    count = parameter_count(build("segnet", "vgg16", num_upsample_layers=5))
    assert count == pytest.approx(29.5e6, rel=0.02), count


def test_deeplabv3plus_xception_has_the_keras_references_parameter_count():
    # bonlime/keras-deeplab-v3-plus, Xception backbone, 21 classes: 41,258,213 parameters.
    network = build_model(
        {"name": "deeplabv3plus", "height": 64, "width": 64},
        {"name": "xception", "weights": None},
        num_classes=21,
    )
    assert parameter_count(network) == pytest.approx(41_258_213, rel=0.02)


@pytest.mark.parametrize("layers", [2, 4])
def test_segnet_output_is_full_resolution_at_every_depth(layers):
    network = build("segnet", "mobilenetv2", side=64, num_upsample_layers=layers)
    with torch.no_grad():
        assert network(torch.randn(BATCH, 3, 64, 64)).shape == (BATCH, CLASSES, 64, 64)


# --- UNet++ ----------------------------------------------------------------------------------------


def small_unetpp(**arguments) -> UnetPlusPlus:
    return build("unetpp", "mobilenetv2", filters=[8, 16, 32], **arguments)


def test_unetpp_deep_supervision_trains_every_head_on_the_mean_of_their_losses():
    torch.manual_seed(0)
    network = small_unetpp()
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    outputs = network.training_outputs(images)
    heads = network.head_logits(images)
    assert len(outputs.loss_terms) == len(heads) == 3
    assert [w for _, w in outputs.loss_terms] == pytest.approx([1 / 3] * 3)
    torch.testing.assert_close(outputs.logits, torch.stack(heads).mean(0))
    target = torch.randint(0, CLASSES, (BATCH, SIDE, SIDE))
    sum(w * F.cross_entropy(logits, target) for logits, w in outputs.loss_terms).backward()
    for name, head in network.heads.items():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, name


def test_unetpp_pruned_prediction_is_head_k_of_the_full_network_and_skips_the_rest():
    torch.manual_seed(0)
    full = small_unetpp().eval()
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with torch.no_grad():
        heads = full.head_logits(images)
    for k in (1, 2, 3):
        pruned = small_unetpp(prune_level=k).eval()
        pruned.load_state_dict(full.state_dict())
        ran = []
        hooks = [
            node.register_forward_hook(lambda m, i, o, name=name, ran=ran: ran.append(name))
            for name, node in pruned.nodes.items()
        ]
        with torch.no_grad():
            prediction = pruned(images)
        for hook in hooks:
            hook.remove()
        torch.testing.assert_close(prediction, heads[k - 1])
        assert sorted(ran) == sorted(n for n in pruned.nodes if sum(map(int, n.split("_"))) <= k)


def test_unetpp_without_deep_supervision_has_one_head_on_the_last_column():
    network = small_unetpp(deep_supervision=False)
    assert list(network.heads) == ["3"]
    outputs = network.training_outputs(torch.randn(BATCH, 3, SIDE, SIDE))
    assert len(outputs.loss_terms) == 1 and outputs.loss_terms[0][1] == 1.0


def test_pspnet_auxiliary_head_adds_a_weighted_loss_term_only_when_asked():
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with_aux = build("pspnet", "mobilenetv2", aux_weight=0.4)
    weights = [w for _, w in with_aux.training_outputs(images).loss_terms]
    assert weights == [1.0, 0.4]
    without = build("pspnet", "mobilenetv2", aux_weight=0)
    assert without.aux_head is None
    assert len(without.training_outputs(images).loss_terms) == 1


# --- bad values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("deeplabv3plus", {"output_stride": 4}, r"model.output_stride=4 .*Choose one of: 8, 16"),
        ("pspnet", {"down_sample_factor": 32}, r"down_sample_factor=32 .*Choose one of: 4, 8, 16"),
        ("pspnet", {"aux_weight": -1}, r"model.aux_weight=-1 .*>= 0"),
        ("segnet", {"num_upsample_layers": 6}, r"num_upsample_layers=6 .*Choose one of: 2, 3, 4, 5"),
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


# --- weights ---------------------------------------------------------------------------------------


def test_local_weights_load_into_the_encoder_even_when_the_network_uses_part_of_it(tmp_path):
    # A full ResNet-50 encoder's state dict (as an ImageNet download is) into SegNet's encoder,
    # which stops at stride 4: the later layers' weights are reported unused, the rest loaded.
    full = build_encoder(get_backbone("resnet50"))
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)
    network = build_model(
        {"name": "segnet", "height": 64, "width": 64, "num_upsample_layers": 2},
        {"name": "resnet50", "weights": str(path)},
        CLASSES,
    )
    for key, value in network.encoder.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key])


def test_a_whole_networks_state_dict_gives_its_encoder_to_another_architecture(tmp_path):
    unet = build("unet", "mobilenetv2")  # its encoder's keys are under net.encoder.
    path = tmp_path / "unet.pth"
    torch.save(unet.state_dict(), path)
    deeplab = build_model(
        {"name": "deeplabv3plus", "height": 64, "width": 64},
        {"name": "mobilenetv2", "weights": str(path)},
        CLASSES,
    )
    for key, value in deeplab.encoder.state_dict().items():
        torch.testing.assert_close(value, unet.encoder.state_dict()[key])


def test_resnet152v2_imagenet_weights_are_refused_with_what_to_do():
    with pytest.raises(
        ValueError, match=r"No ImageNet weights .*resnet152v2.*backbone.weights=null"
    ):
        build_model(
            {"name": "unet", "height": 64, "width": 64},
            {"name": "resnet152v2", "weights": "imagenet"},
            CLASSES,
        )


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
        "++trainer.fast_dev_run=true",
        f"hydra.run.dir={run_dir}",
    ]


def run_train(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=ROOT,
        # One thread, as in this file's other tests: a third faster at this size.
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize(("name", "backbone"), CLI_PAIRS)
def test_command_line_trains_each_architecture(tmp_path, name, backbone):
    result = run_train(cli_overrides(name, backbone, tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").model.name == name


@pytest.mark.slow
def test_command_line_trains_all_55_pairs(tmp_path):
    """The issue's coverage claim, pair by pair through train.py (about 10 minutes on 2 cores)."""
    failures = {}
    start = time.perf_counter()
    for name, backbone in itertools.product(ARCHITECTURES, BACKBONES):
        result = run_train(cli_overrides(name, backbone, tmp_path / f"{name}-{backbone}"))
        if result.returncode:
            failures[f"{name}/{backbone}"] = result.stderr[-1500:]
    print(f"55 command-line runs in {time.perf_counter() - start:.0f} s")
    assert not failures, failures
