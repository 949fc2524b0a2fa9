"""Prints the model zoo: the parameter count of every architecture on every backbone.

    python -m segfw.models [--num-classes 21]

Each network is built with its default arguments (those of conf/model/<name>.yaml) and random
weights; the input size does not change the counts.
"""

from __future__ import annotations

import argparse
import inspect

import torch

from segfw.models.backbones import BACKBONES, get_backbone
from segfw.models.builder import ARCHITECTURES


def parameter_count(architecture: str, backbone: str, num_classes: int) -> int:
    """Parameters of ``architecture`` on ``backbone`` with its default arguments."""
    network = ARCHITECTURES[architecture](get_backbone(backbone), num_classes)
    return sum(p.numel() for p in network.parameters())


def defaults(architecture: str) -> str:
    """The architecture's default arguments, as ``key=value`` pairs."""
    parameters = list(inspect.signature(ARCHITECTURES[architecture]).parameters.values())[2:]
    return " ".join(f"{p.name}={p.default}" for p in parameters) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=21, help="output classes (default 21)")
    args = parser.parse_args()
    # Building is weight initialization and dry runs on one small image, where a second thread
    # only adds synchronization: one thread builds the 55 networks about four times faster.
    torch.set_num_threads(1)

    print(f"Parameters (millions) with {args.num_classes} classes; rows: backbone, columns: model.")
    width = max(map(len, ARCHITECTURES)) + 2
    print(f"{'':13}" + "".join(f"{name:>{width}}" for name in ARCHITECTURES), flush=True)
    for backbone in BACKBONES:
        counts = [parameter_count(a, backbone, args.num_classes) / 1e6 for a in ARCHITECTURES]
        print(f"{backbone:13}" + "".join(f"{c:>{width}.2f}" for c in counts), flush=True)
    print("\nDefault arguments:")
    for name in ARCHITECTURES:
        print(f"  {name}: {defaults(name)}")


if __name__ == "__main__":
    main()
