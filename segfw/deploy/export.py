"""Exports a checkpoint's network to ONNX or TorchScript, with a metadata file beside it.

``python export.py ckpt_path=PATH format=onnx|torchscript output=DIR`` writes
``<output>/<name>.onnx`` (or ``.pt``) and ``<output>/<name>.onnx.json`` (or ``.pt.json``).

Input contract of the exported model: ``images`` (N, 3, H, W), RGB, values 0..255: uint8 for ONNX
(a graph input has one type, and uint8 is what image decoders give), uint8 or float32 for
TorchScript, as the LightningModule takes them. Normalization by the backbone's mean and std is
inside the model. Output: ``logits`` float32 (N, num_classes, H, W); their argmax over dimension 1
is the class map. The batch size is free; so are H and W (multiples of the network's input
divisor) unless the metadata says otherwise: ONNX has no adaptive pooling, so a network that pools
to fixed grids of bins (the pyramid of 1, 2, 3 and 6 bins of PSPNet and of UPerNet's pyramid
pooling module) gets a fixed input size there, the trained one.

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
from torch import nn
from torch.export import Dim

from segfw.choices import choose
from segfw.errors import ConfigError, ExportError
from segfw.models import backbone_spec
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

    mean: torch.Tensor
    std: torch.Tensor

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


def export(
    module: SegmentationModule,
    format: str,
    output: str | Path,
    name: str = "model",
    dynamic_size: str | bool = "auto",
    opset: int | None = None,
    tolerance: float = 1e-4,
    source: str | None = None,
) -> dict[str, Any]:
    """Exports a trained module's network in ``format`` into ``output`` and checks the result.

    Args:
        module: the trained module (``SegmentationModule.from_checkpoint``).
        format: ``onnx`` or ``torchscript``.
        output: the folder for the model and its metadata.
        name: the file name without suffix.
        dynamic_size: ``auto``: free height and width where the graph allows; ``False``: the
            trained size only.
        opset: the ONNX opset; ``None``: the exporter's default.
        tolerance: accepted max |logits - PyTorch's| / max(1, max |logits|).
        source: the checkpoint's path, for the metadata.

    Returns:
        The metadata, also written beside the model: file, classes, palette, input contract
        (dtype, layout, trained size, which dimensions are free), normalization, output and the
        differences measured against PyTorch.

    Raises:
        ConfigError: a bad setting.
        ExportError: the exporter fails, or the exported model does not reproduce the PyTorch
            logits within ``tolerance`` (the message says what to change).
    """
    choose(SUFFIXES, format, "format")
    choose(DYNAMIC_SIZES, dynamic_size, "dynamic_size")
    if format == "onnx":
        _require("onnx", "onnxscript", "onnxruntime")
    hparams = module.hparams
    network = Deployable(module).eval()
    height, width = int(hparams["model"]["height"]), int(hparams["model"]["width"])
    divisor = module.net.input_divisor
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}{SUFFIXES[format]}"
    example = _random_images(2, height, width, seed=0)
    with torch.no_grad():
        if format == "onnx":
            program, reason = _onnx_program(network, example, divisor, dynamic_size)
            metadata = _save_onnx(
                program, example, path, opset, _metadata(module, format, path.name, reason, source)
            )
            run = _onnx_runner(path)
        else:
            scripted, reason = _torchscript_program(network, example, dynamic_size)
            metadata = _metadata(module, format, path.name, reason, source)
            torch.jit.save(scripted, str(path), _extra_files={"segfw.json": json.dumps(metadata)})
            run = _torchscript_runner(path)
        # Batches other than the example's 2, and where free, a size other than the trained one.
        second = (height + divisor, width + 2 * divisor) if reason is None else (height, width)
        checks = verify(network, run, [(1, height, width), (3, *second)], tolerance)

    metadata = {**metadata, "verification": {"tolerance": tolerance, "checks": checks}}
    metadata_path = path.with_name(path.name + ".json")
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    worst = max(c["max_abs_diff"] for c in checks)
    log.info(
        "exported %s (input %s, height and width %s); max |logits - PyTorch| = %.2e; metadata: %s",
        path,
        metadata["input"]["dtype"],
        "free" if reason is None else f"fixed at {height} x {width}",
        worst,
        metadata_path,
    )
    if reason:
        log.info("fixed input size: %s", reason)
    return metadata


def _metadata(
    module: SegmentationModule, format: str, file: str, reason: str | None, source: str | None
) -> dict[str, Any]:
    """What a user of the exported file needs to know, written beside it and inside it."""
    hparams = module.hparams
    spec = backbone_spec(hparams["backbone"])
    dynamic = reason is None
    return {
        "format": format,
        "file": file,
        "architecture": hparams["model"]["name"],
        "backbone": hparams["backbone"]["name"],
        "num_classes": hparams["num_classes"],
        "class_names": list(hparams["class_names"]),
        "palette": checkpoint_palette(hparams).tolist(),
        "input": {
            "name": "images",
            # The traced cast to float accepts either; an ONNX graph input has one type.
            "dtype": "uint8" if format == "onnx" else "uint8 or float32",
            "layout": "NCHW",
            "channels": "RGB",
            "value_range": [0, 255],
            "height": int(hparams["model"]["height"]),
            "width": int(hparams["model"]["width"]),
            "size_multiple_of": module.net.input_divisor,
            "dynamic": {"batch": True, "height": dynamic, "width": dynamic},
            "fixed_size_reason": reason,
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
            "checkpoint": source,
            "torch": torch.__version__,
            "segfw": version("segfw"),
            "python": platform.python_version(),
        },
    }


def _onnx_program(
    network: Deployable, example: torch.Tensor, divisor: int, dynamic_size: str | bool
) -> tuple[torch.export.ExportedProgram, str | None]:
    """The exported program to convert to ONNX, and why its input size is fixed (None: free)."""
    batch = {0: Dim("batch", min=1)}
    # Multiples of the divisor, so that the network's own shape checks hold for every size.
    free = batch | {
        2: divisor * Dim("height_blocks", min=1),
        3: divisor * Dim("width_blocks", min=1),
    }

    def trace(dynamic: bool) -> torch.export.ExportedProgram:
        shapes = {"images": free if dynamic else batch}
        try:
            return torch.export.export(network, (example,), dynamic_shapes=shapes, strict=False)
        except Exception as error:  # torch.export raises many types
            raise ExportError(
                f"torch.export could not trace the network: {type(error).__name__}: "
                f"{str(error).splitlines()[0]}"
            ) from error

    if dynamic_size is False:
        return trace(False), "dynamic_size=false"
    program = trace(True)
    pooled = _fixed_grid_pooling(program)
    if not pooled:
        return program, None
    reason = (
        f"the network pools to fixed grids of bins ({pooled}); ONNX has no adaptive "
        f"pooling, so the exporter derives the pooling kernels from the example's size and "
        f"the graph holds at that size only (at others it pools wrongly or fails)"
    )
    return trace(False), reason


def _save_onnx(
    program: torch.export.ExportedProgram,
    example: torch.Tensor,
    path: Path,
    opset: int | None,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Writes the ONNX file with ``metadata`` inside; returns the metadata with the opset."""
    # The exporter's optimizer logs every pass it applies at INFO, hundreds of lines per model.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    onnx_program = torch.onnx.export(
        program,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if onnx_program is None:  # the exporter returns None only when it was asked not to trace
        raise ExportError("torch.onnx.export returned no program.")
    # The metadata travels inside the file as well (onnxruntime: get_modelmeta().custom_metadata_map).
    onnx_program.model.metadata_props["segfw"] = json.dumps(metadata)
    onnx_program.save(path, external_data=False)
    opset_used = onnx_program.model.opset_imports[""]
    return {**metadata, "source": {**metadata["source"], "onnx_opset": opset_used}}


def _torchscript_program(
    network: Deployable, example: torch.Tensor, dynamic_size: str | bool
) -> tuple[torch.jit.ScriptModule, str | None]:
    """The TorchScript module, and why its input size is fixed (None: free)."""
    # A trace records the operators the example runs through; check_trace is off because
    # ``verify`` compares the saved model with PyTorch at two sizes instead.
    traced = torch.jit.trace(network, example, check_trace=False)
    if dynamic_size is not False:
        return traced, None
    fixed = torch.jit.script(FixedSize(traced, example.shape[2], example.shape[3]))
    return fixed, "dynamic_size=false"


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
        ExportError: the exported model fails, or differs by more than allowed.
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
            raise ExportError(
                f"The exported model fails on images of {shape}: {error} {advice}"
            ) from None
        difference = float(np.abs(got - expected).max())
        scale = float(np.abs(expected).max())
        checks.append(
            {"input_shape": list(images.shape), "max_abs_diff": difference, "max_abs_logit": scale}
        )
        if not difference <= tolerance * max(1.0, scale):
            raise ExportError(
                f"The exported model differs from PyTorch by up to {difference:.3g} on images of "
                f"{shape} (logits up to {scale:.3g}), above tolerance={tolerance} x "
                f"max(1, {scale:.3g}). {advice}"
            )
    return checks


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
