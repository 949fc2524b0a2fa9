"""Exports a checkpoint's network to ONNX or TorchScript, with a metadata file beside it.

``python export.py ckpt_path=PATH format=onnx|torchscript output=DIR`` writes
``<output>/<name>.onnx`` (or ``.pt``) and ``<output>/<name>.onnx.json`` (or ``.pt.json``).

Input contract of the exported model: ``images`` (N, 3, H, W), RGB, values 0..255: uint8 for ONNX
(a graph input has one type, and uint8 is what image decoders give), uint8 or float32 for
TorchScript, as the LightningModule takes them. Normalization by the backbone's mean and std is
inside the model. Output: ``logits`` float32 (N, num_classes, H, W); their argmax over dimension 1
is the class map. The batch size is free; so are H and W (multiples of the network's input
divisor) unless the metadata says otherwise: ONNX has no adaptive pooling, so a network that pools
to fixed grids of bins (PSPNet's pyramid of 1, 2, 3 and 6 bins) gets a fixed input size there, the
trained one.

Every export is checked before it is reported done: the exported model, loaded back by
onnxruntime or ``torch.jit.load``, must give the PyTorch model's logits within ``tolerance`` (times
the logits' magnitude where it exceeds 1) on random images, at the trained size and, where the
size is free, at a second one.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.export import Dim

from segfw.choices import choose
from segfw.errors import ConfigError
from segfw.models import get_backbone
from segfw.training.module import SegmentationModule
from segfw.visualize import checkpoint_palette

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
DYNAMIC_SIZES = ("auto", False)
# aten operators that ONNX can express only with a kernel fixed from the example input's size.
FIXED_GRID_POOLING = ("aten.adaptive_avg_pool2d", "aten.adaptive_max_pool2d")


class Deployable(nn.Module):
    """The network with its input normalization: images (N, 3, H, W), 0..255, uint8 or float ->
    logits (N, C, H, W), as ``SegmentationModule.forward`` computes them, without the training
    parts (loss, metrics) and with only the inference output (no auxiliary or deep-supervision
    heads: ``forward`` of a network in eval mode returns its prediction alone)."""

    def __init__(self, module: SegmentationModule) -> None:
        super().__init__()
        self.net = module.net
        self.register_buffer("mean", module.mean.clone())
        self.register_buffer("std", module.std.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) / self.std)


class FixedSize(nn.Module):
    """A traced network that holds only at the size it was traced at, refusing other sizes
    instead of computing wrong logits (scripted around the trace)."""

    def __init__(self, traced: torch.jit.ScriptModule, height: int, width: int) -> None:
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[2] != self.height or images.shape[3] != self.width:
            raise RuntimeError(
                f"this model takes images of {self.height} x {self.width} (height x width) only; got {images.shape[2]} x {images.shape[3]}"
            )
        return self.traced(images)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Exports ``cfg.ckpt_path`` in ``cfg.format`` into ``cfg.output`` and checks the result.

    Returns:
        The metadata, also written beside the model: file, classes, palette, input contract
        (dtype, layout, trained size, which dimensions are free), normalization, output and the
        differences measured against PyTorch.

    Raises:
        ConfigError: a bad setting or checkpoint, or an exported model that does not reproduce
            the PyTorch logits within ``cfg.tolerance`` (the message says what to change).
    """
    checkpoint = Path(cfg.ckpt_path).expanduser()
    if not checkpoint.is_file():
        raise ConfigError(
            f"ckpt_path={str(checkpoint)!r} is not a file; pass a .ckpt written by train.py."
        )
    choose(SUFFIXES, cfg.format, "format")
    choose(DYNAMIC_SIZES, cfg.dynamic_size, "dynamic_size")
    module = SegmentationModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    hparams = module.hparams
    network = Deployable(module).eval()
    height, width = int(hparams.model["height"]), int(hparams.model["width"])
    divisor = module.net.input_divisor
    output = Path(cfg.output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{cfg.name}{SUFFIXES[cfg.format]}"

    spec = get_backbone(hparams.backbone["name"])
    metadata: dict[str, Any] = {
        "format": cfg.format,
        "file": path.name,
        "architecture": hparams.model["name"],
        "backbone": hparams.backbone["name"],
        "num_classes": hparams.num_classes,
        "class_names": list(hparams.class_names),
        "palette": checkpoint_palette(hparams).tolist(),
        "input": {
            "name": "images",
            # The traced cast to float accepts either; an ONNX graph input has one type.
            "dtype": "uint8" if cfg.format == "onnx" else "uint8 or float32",
            "layout": "NCHW",
            "channels": "RGB",
            "value_range": [0, 255],
            "height": height,
            "width": width,
            "size_multiple_of": divisor,
        },
        "normalization": {
            "mean": list(spec.mean),
            "std": list(spec.std),
            "formula": "(images / 255 - mean) / std, per channel",
            "inside_model": True,
        },
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": "N x num_classes x H x W",
            "meaning": "class scores at the input's size; argmax over dimension 1: class indices",
        },
        "source": {
            "checkpoint": str(checkpoint),
            "torch": torch.__version__,
            "segfw": version("segfw"),
            "python": platform.python_version(),
        },
    }
    example = _random_images(2, height, width, seed=0)
    with torch.no_grad():
        if cfg.format == "onnx":
            dynamic, reason = _export_onnx(network, example, path, divisor, cfg, metadata)
            run = _onnx_runner(path)
        else:
            dynamic, reason = _export_torchscript(network, example, path, cfg, metadata)
            run = _torchscript_runner(path)
        # Batches other than the example's 2, and where free, a size other than the trained one.
        second = (height + divisor, width + 2 * divisor) if dynamic else (height, width)
        sizes = [(1, height, width), (3, *second)]
        checks = verify(network, run, sizes, cfg.tolerance)

    metadata["verification"] = {"tolerance": cfg.tolerance, "checks": checks}
    metadata_path = path.with_name(path.name + ".json")
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    worst = max(c["max_abs_diff"] for c in checks)
    log.info(
        "exported %s (input %s, height and width %s); max |logits - PyTorch| = %.2e; metadata: %s",
        path,
        metadata["input"]["dtype"],
        "free" if dynamic else f"fixed at {height} x {width}",
        worst,
        metadata_path,
    )
    if reason:
        log.info("fixed input size: %s", reason)
    return metadata


def _export_onnx(
    network: Deployable,
    example: torch.Tensor,
    path: Path,
    divisor: int,
    cfg: DictConfig,
    metadata: dict[str, Any],
) -> tuple[bool, str | None]:
    """Writes the ONNX file; returns whether height and width are free, and why not if not."""
    _require("onnx", "onnxscript", "onnxruntime")
    # The exporter's optimizer logs every pass it applies at INFO, hundreds of lines per model.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = {0: Dim("batch", min=1)}
    # Multiples of the divisor, so that the network's own shape checks hold for every size.
    free = batch | {
        2: divisor * Dim("height_blocks", min=1),
        3: divisor * Dim("width_blocks", min=1),
    }

    def trace(dynamic: bool) -> torch.export.ExportedProgram:
        shapes = {"images": free if dynamic else batch}
        return torch.export.export(network, (example,), dynamic_shapes=shapes, strict=False)

    if cfg.dynamic_size is False:
        program, reason = trace(False), "dynamic_size=false"
    else:
        program, reason = trace(True), None
        pooled = _fixed_grid_pooling(program)
        if pooled:
            reason = (
                f"the network pools to fixed grids of bins ({pooled}); ONNX has no adaptive "
                f"pooling, so the exporter derives the pooling kernels from the example's size and "
                f"the graph holds at that size only (at others it pools wrongly or fails)"
            )
            program = trace(False)
    dynamic = reason is None
    _record_size(metadata, dynamic, reason)
    onnx_program = torch.onnx.export(
        program,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        opset_version=cfg.opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    # The metadata travels inside the file as well (onnxruntime: get_modelmeta().custom_metadata_map).
    onnx_program.model.metadata_props["segfw"] = json.dumps(metadata)
    onnx_program.save(path, external_data=False)
    metadata["source"]["onnx_opset"] = onnx_program.model.opset_imports[""]
    return dynamic, reason


def _export_torchscript(
    network: Deployable,
    example: torch.Tensor,
    path: Path,
    cfg: DictConfig,
    metadata: dict[str, Any],
) -> tuple[bool, str | None]:
    """Writes the TorchScript file; returns whether height and width are free, and why not."""
    # A trace records the operators the example runs through; check_trace is off because
    # ``verify`` compares the saved model with PyTorch at two sizes instead.
    traced = torch.jit.trace(network, example, check_trace=False)
    dynamic = cfg.dynamic_size is not False
    reason = None if dynamic else "dynamic_size=false"
    if not dynamic:
        traced = torch.jit.script(FixedSize(traced, example.shape[2], example.shape[3]))
    _record_size(metadata, dynamic, reason)
    torch.jit.save(traced, str(path), _extra_files={"segfw.json": json.dumps(metadata)})
    return dynamic, reason


def verify(
    network: nn.Module,
    run: Callable[[torch.Tensor], np.ndarray],
    sizes: list[tuple[int, int, int]],
    tolerance: float,
) -> list[dict[str, Any]]:
    """Compares the exported model's logits with PyTorch's on random images of each (batch,
    height, width) in ``sizes``: the trained size first, then the free sizes to check.

    The difference allowed is ``tolerance`` times the largest logit magnitude, at least 1: float32
    results of two runtimes differ by rounding in proportion to the values (a trained network's
    logits reach tens), and a graph that computes something else differs by far more.

    Returns:
        Each check's input shape, largest absolute difference and largest logit magnitude.

    Raises:
        ConfigError: the exported model fails, or differs by more than allowed.
    """
    checks = []
    for seed, (batch, height, width) in enumerate(sizes, start=1):
        images = _random_images(batch, height, width, seed)
        expected = network(images).numpy()
        shape = f"{batch} x 3 x {height} x {width}"
        advice = (
            "Check the exporter's warnings above."
            if seed == 1
            else "The graph does not hold at sizes other than the trained one: export with "
            "dynamic_size=false, which fixes the input size."
        )
        try:
            got = run(images)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ConfigError(
                f"The exported model fails on images of {shape}: {error} {advice}"
            ) from None
        difference = float(np.abs(got - expected).max())
        scale = float(np.abs(expected).max())
        checks.append(
            {"input_shape": list(images.shape), "max_abs_diff": difference, "max_abs_logit": scale}
        )
        if not difference <= tolerance * max(1.0, scale):
            raise ConfigError(
                f"The exported model differs from PyTorch by up to {difference:.3g} on images of "
                f"{shape} (logits up to {scale:.3g}), above tolerance={tolerance} x "
                f"max(1, {scale:.3g}). {advice}"
            )
    return checks


def _record_size(metadata: dict[str, Any], dynamic: bool, reason: str | None) -> None:
    metadata["input"]["dynamic"] = {"batch": True, "height": dynamic, "width": dynamic}
    metadata["input"]["fixed_size_reason"] = reason


def _require(*modules: str) -> None:
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(
                f"format=onnx needs the {name} package: pip install -e '.[export]'."
            ) from None


def _fixed_grid_pooling(program: torch.export.ExportedProgram) -> str:
    """The adaptive poolings of ``program`` to grids other than 1 x 1, as "2x2, 3x3", or ""."""
    grids = []
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(FIXED_GRID_POOLING):
            grid = [int(v) for v in node.args[1]]
            if grid != [1, 1]:
                grids.append("x".join(map(str, grid)))
    return ", ".join(dict.fromkeys(grids))


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(["logits"], {"images": images.numpy()})[0]


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda images: loaded(images).numpy()


def _random_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)
