"""Is the data loader what the model waits for?  Loader throughput against the training step rate.

    python bench/data_loading.py                         # 512 x 384 JPEGs, UNet on MobileNetV2 at 384
    python bench/data_loading.py --size 256 --image-size 320x240 --workers 0 1 2

Writes a ``data=folder`` dataset of JPEGs (textured backgrounds, filled shapes, sensor noise) into
a temporary folder, composes the real train config (``data=folder``, default augmentation: random
scale 0.5..2, crop to ``--size``, flip, colour jitter) and measures, on this machine:

1. loader: images/s out of ``train_dataloader()`` for each ``--workers`` setting (``auto`` is the
   default config), after the workers' start-up and first batch;
2. model: images/s of training steps (forward, backward, optimizer) of segfw's LightningModule on
   one batch held in memory: what the network could consume if data were free;
3. end to end: images/s of ``Trainer.fit`` with the default loader settings, and the share of the
   step time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from segfw.commands.config import build_datamodule, build_module  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=384, help="model.height and model.width")
    parser.add_argument("--image-size", default="512x384", help="JPEG width x height")
    parser.add_argument("--images", type=int, default=96, help="training images written")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", nargs="+", default=["0", "auto"], help="settings to measure")
    parser.add_argument("--loader-batches", type=int, default=12, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def write_jpegs(root: Path, count: int, width: int, height: int) -> None:
    """A folder dataset of ``count`` training JPEGs (and 2 val/test ones) with 4-class masks."""
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", 2), ("test", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            image = np.stack([xs / width * 255, ys / height * 255, (xs + ys) % 97 * 2.6], axis=-1)
            mask = np.zeros((height, width), np.uint8)
            for _ in range(6):
                centre = (int(rng.integers(width)), int(rng.integers(height)))
                axes = (int(rng.integers(10, width // 4)), int(rng.integers(10, height // 4)))
                colour = rng.integers(0, 256, 3).tolist()
                label = int(rng.integers(1, 4))
                cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
                cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, label, -1)
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(
                str(root / "images" / split / f"{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            cv2.imwrite(str(root / "masks" / split / f"{i:05d}.png"), mask)


def config(args: argparse.Namespace, root: Path, output_dir: Path, workers: str):
    overrides = [
        "model=unet",
        "backbone=mobilenetv2",
        "backbone.weights=null",  # the same cost as ImageNet's, and no download: runs offline
        f"model.height={args.size}",
        f"model.width={args.size}",
        "data=folder",
        f"data.root={root}",
        "data.num_classes=4",
        "data.class_names=[background,a,b,c]",
        f"data.batch_size={args.batch}",
        f"data.num_workers={workers}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "segfw" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def loader_rate(cfg, batches: int) -> tuple[float, int]:
    """Images/s out of the training loader, and the number of workers it ran."""
    datamodule = build_datamodule(cfg.data, cfg.model)
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are a one-off cost
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    return batches * batch["image"].shape[0] / seconds, loader.num_workers


def model_rate(cfg, steps: int) -> float:
    """Images/s of training steps on one batch held in memory."""
    datamodule = build_datamodule(cfg.data, cfg.model)
    batch = next(iter(datamodule.train_dataloader()))
    module = build_module(cfg).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    target = batch["mask"].long()
    for step in range(steps + 1):
        if step == 1:  # the first step allocates and tunes kernels
            start = time.perf_counter()
        loss = module.criterion(module(batch["image"]), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch["image"].shape[0] / (time.perf_counter() - start)


class DataWait(pl.Callback):
    """Training images/s, and the share of the time between steps spent fetching the batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.waits: list[float] = []
        self.images = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.ends:  # the gap since the last step ended: fetching this batch
            self.waits.append(now - self.ends[-1])
            self.images += batch["image"].shape[0]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def end_to_end(cfg, steps: int) -> tuple[float, float]:
    """Images/s of Trainer.fit with the default loader, and the share of time spent waiting."""
    wait = DataWait()
    # A bare Trainer: what is measured is the data path, not checkpoints or loggers.
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[wait],
    )
    trainer.fit(build_module(cfg), datamodule=build_datamodule(cfg.data, cfg.model))
    seconds = wait.ends[-1] - wait.ends[0]
    return wait.images / seconds, sum(wait.waits) / seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    width, height = (int(v) for v in args.image_size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="segfw-bench-data-"))
    start = time.perf_counter()
    write_jpegs(work / "data", args.images, width, height)
    print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.1f} s", flush=True)
    loader_batches = min(args.loader_batches, args.images // args.batch - 1)
    results: dict[str, Any] = {  # also the --json record
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} "
        f"CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f} at start",
        "setup": f"{args.images} JPEGs {width}x{height}, UNet on MobileNetV2 at "
        f"{args.size}x{args.size}, batch {args.batch}, default augmentation",
        "loader_images_per_s": {},
    }
    print(results["machine"], "\n" + results["setup"], flush=True)
    for workers in args.workers:
        cfg = config(args, work / "data", work / "run", workers)
        rate, processes = loader_rate(cfg, loader_batches)
        results["loader_images_per_s"][f"{workers} ({processes} worker processes)"] = rate
        print(
            f"loader, num_workers={workers} ({processes} processes): {rate:.1f} images/s",
            flush=True,
        )
    cfg = config(args, work / "data", work / "run", "auto")
    results["model_images_per_s"] = model_rate(cfg, args.steps)
    print(
        f"model training steps on a batch in memory: {results['model_images_per_s']:.2f} images/s"
    )
    rate, waiting = end_to_end(cfg, args.steps)
    results["end_to_end_images_per_s"], results["end_to_end_waiting_share"] = rate, waiting
    print(
        f"Trainer.fit, default loader: {rate:.2f} images/s, {waiting:.1%} of the time fetching batches"
    )
    auto = next(v for k, v in results["loader_images_per_s"].items() if k.startswith("auto"))
    headroom = auto / results["model_images_per_s"]
    results["loader_over_model"] = headroom
    print(
        f"the default loader delivers {headroom:.1f}x the images the model consumes"
        + ("" if headroom > 1 else " -- the model waits for data")
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
