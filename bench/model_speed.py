"""CPU inference speed and size of the architecture x encoder pairs docs/models.md recommends.

    python bench/model_speed.py                       # all pairs, 512 x 512, batch 1, 2 threads
    python bench/model_speed.py --size 256 --only segformer

Each network is built with random weights (they cost the same time as trained ones) and its
paper's arguments (segfw/conf/model/<name>.yaml), in eval mode, and timed on eager PyTorch under
``torch.inference_mode``, NCHW float32 input: the LightningModule's forward without the
normalization. The pairs are timed in rounds that alternate them, so that drifting load on a
shared machine hits them alike; the table gives the median of the rounds' milliseconds per image,
and the fastest and slowest round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
from torch import nn  # noqa: E402

from segfw.models import build_model  # noqa: E402

CLASSES = 150  # ADE20K's, the benchmark the papers' counts refer to
# label -> (model arguments beyond the config's defaults, backbone config)
PAIRS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "unet / mobilenetv2": ({"name": "unet"}, {"name": "mobilenetv2"}),
    "deeplabv3plus / resnet50 (os 16)": (
        {"name": "deeplabv3plus", "output_stride": 16},
        {"name": "resnet50"},
    ),
    "unet / efficientnet_b0": ({"name": "unet"}, {"name": "timm", "encoder": "efficientnet_b0"}),
    "deeplabv3plus / efficientnet_b0 (os 16)": (
        {"name": "deeplabv3plus", "output_stride": 16},
        {"name": "timm", "encoder": "efficientnet_b0"},
    ),
    "segformer / mit_b0": ({"name": "segformer"}, {"name": "timm", "encoder": "mit_b0"}),
    "segformer / mit_b2": (
        {"name": "segformer", "decoder_channels": 768},
        {"name": "timm", "encoder": "mit_b2"},
    ),
    "upernet / convnext_tiny": ({"name": "upernet"}, {"name": "timm", "encoder": "convnext_tiny"}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all pairs")
    parser.add_argument("--iterations", type=int, default=2, help="timed batches per round")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--only", help="time only the pairs whose label contains this")
    return parser.parse_args(argv)


def build(model: dict[str, Any], backbone: dict[str, Any], size: int) -> nn.Module:
    torch.manual_seed(0)
    config = {"height": size, "width": size, **model}
    return build_model(config, {**backbone, "weights": None}, CLASSES).eval()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = {k: v for k, v in PAIRS.items() if not args.only or args.only in k}
    networks = {label: build(*pair, args.size) for label, pair in pairs.items()}
    images = torch.randn(args.batch, 3, args.size, args.size)
    times: dict[str, list[float]] = {label: [] for label in networks}
    with torch.inference_mode():
        for network in networks.values():  # warm-up: oneDNN picks its kernels on first use
            network(images)
        for _ in range(args.rounds):
            for label, network in networks.items():
                start = time.perf_counter()
                for _ in range(args.iterations):
                    network(images)
                elapsed = time.perf_counter() - start
                times[label].append(1000 * elapsed / (args.iterations * args.batch))
    load = os.getloadavg()
    print(
        f"{args.size} x {args.size}, batch {args.batch}, {args.threads} threads, {CLASSES} "
        f"classes, torch {torch.__version__}; {args.rounds} rounds of {args.iterations} batches; "
        f"load average after: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}\n"
    )
    print("| architecture / encoder | parameters | ms / image (median) | rounds' range |")
    print("|---|---:|---:|---:|")
    for label, network in networks.items():
        count = sum(p.numel() for p in network.parameters()) / 1e6
        median = statistics.median(times[label])
        low, high = min(times[label]), max(times[label])
        print(f"| {label} | {count:.1f} M | {median:.0f} | {low:.0f} to {high:.0f} |")


if __name__ == "__main__":
    main()
