"""Inference speed on this machine's CPU: eager PyTorch against the exported model (ONNX Runtime,
TorchScript), same network, weights, batch and threads.

    python bench/export_speed.py                                  # UNet on MobileNetV2, 256 px
    python bench/export_speed.py --model deeplabv3plus --backbone resnet50 --size 512 --batch 1

Exports a randomly initialized network with ``segfw.deploy.export`` (random weights cost the same time
as trained ones), then times forward passes of each runtime in rounds that alternate the
runtimes, so that drifting machine load hits them alike, and reports the median images/s of the
rounds. Eager PyTorch runs the LightningModule's forward under ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import onnxruntime  # noqa: E402
import torch  # noqa: E402

from segfw.deploy.export import export  # noqa: E402
from segfw.training.module import SegmentationModule  # noqa: E402

RUNTIMES = ("pytorch", "onnxruntime", "torchscript")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=5, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all runtimes")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="intra-op threads, all runtimes",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(
        model={"name": args.model, "height": args.size, "width": args.size},
        backbone={"name": args.backbone, "weights": None},
        num_classes=args.classes,
        class_names=[f"class{i}" for i in range(args.classes)],
    ).eval()


def runners(
    module: SegmentationModule, directory: Path, threads: int
) -> dict[str, Callable[[torch.Tensor], object]]:
    for fmt in ("onnx", "torchscript"):
        export(module, fmt, directory)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still shipped
        scripted = torch.jit.load(str(directory / "model.pt"))

    def pytorch(images: torch.Tensor) -> object:
        with torch.inference_mode():
            return module(images)

    def ort(images: torch.Tensor) -> object:
        return session.run(["logits"], {"images": images.numpy()})

    def torchscript(images: torch.Tensor) -> object:
        with torch.inference_mode():
            return scripted(images)

    return {"pytorch": pytorch, "onnxruntime": ort, "torchscript": torchscript}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="segfw-export-bench-") as temporary:
        # The runtimes hold their models in memory: the files can go once they are loaded.
        directory = Path(temporary)
        module = build(args)
        run = runners(module, directory, args.threads)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    for name in RUNTIMES:  # warm-up: first-call allocations, TorchScript's profiling runs
        for _ in range(3):
            run[name](images)
    rates: dict[str, list[float]] = {name: [] for name in RUNTIMES}
    for _ in range(args.rounds):
        for name in RUNTIMES:
            start = time.perf_counter()
            for _ in range(args.iterations):
                run[name](images)
            rates[name].append(args.iterations * args.batch / (time.perf_counter() - start))
    results = {
        "setting": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "cpu": _cpu_name(),
            "load_average": os.getloadavg()[0],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "images_per_s": {name: statistics.median(r) for name, r in rates.items()},
    }
    eager = results["images_per_s"]["pytorch"]
    print(
        f"{args.model} on {args.backbone}, {args.size} x {args.size}, batch {args.batch}, ", end=""
    )
    print(f"{args.threads} threads, load average {results['setting']['load_average']:.1f}")
    print(f"{'runtime':<12} {'images/s':>9} {'vs eager':>9}")
    for name, rate in results["images_per_s"].items():
        print(f"{name:<12} {rate:9.2f} {rate / eager:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
