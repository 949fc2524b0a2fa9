"""segfw versus a hand-written PyTorch loop: same model, batch, image size and data, one run.

    python bench/train_overhead.py                    # CPU, UNet on MobileNetV2, 64 px, batch 16
    python bench/train_overhead.py --device cuda --precision 16-mixed --size 512 --batch 8

Measures, each variant in a fresh process (so peak memory is its own), alternating the variants
over ``--repeats`` rounds so that drifting machine load hits them alike:

- training step time of (a) a hand-written loop and (b) segfw's LightningModule + Trainer with the
  default callbacks and logger, and the ratio b/a;
- DataLoader throughput (images/s) against the training step rate (images/s);
- evaluation throughput of segfw's ``Trainer.validate`` against a hand-written loop doing the same
  work (forward, loss, confusion matrix) and against a bare ``model(x).argmax(1)`` loop;
- peak memory of each (host RSS on CPU, allocated device memory on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose as hydra_compose  # noqa: E402
from hydra import initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from segfw.commands.config import (  # noqa: E402
    build_datamodule,
    build_evaluation_trainer,
    build_module,
    build_trainer,
)
from segfw.training.optim import build_optimizer, build_scheduler  # noqa: E402

# Timed evaluation passes over the validation set in each variant.
EVAL_PASSES = 3
VARIANTS = ("hand_train", "segfw_train", "loader", "bare_eval", "hand_eval", "segfw_eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument(
        "--eval-images", type=int, default=2560, help="validation images of each evaluation pass"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of all variants")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", help="Lightning precision string")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra train-config override for both sides, e.g. model.decoder_channels=[128,64,32,16,16]",
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    """The train-config overrides that both sides share."""
    total = (args.warmup + args.steps + 1) * args.batch
    return [
        f"model={args.model}",
        f"backbone={args.backbone}",
        f"model.height={args.size}",
        f"model.width={args.size}",
        "data=shapes",
        f"data.sizes.train={total}",
        f"data.sizes.val={args.eval_images}",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=0",
        f"channels_last={args.channels_last}",
        f"compile={args.compile}",
        *args.override,
    ]


def compose(args: argparse.Namespace, output_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "segfw" / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides(args))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    output_dir = Path(tempfile.mkdtemp(prefix="segfw-bench-"))
    cfg = compose(args, output_dir)
    datamodule = build_datamodule(cfg.data, cfg.model)
    datamodule.setup("fit")
    device = torch.device(args.device)
    module = build_module(cfg)
    memory_format = module.memory_format  # channels_last from the config, as segfw runs it
    if args.compile and args.variant.startswith("hand"):
        module.net.compile()  # segfw compiles through its own `compile` option
    images = args.steps * args.batch

    if args.variant == "loader":
        loader = datamodule.train_dataloader()
        iterator = iter(loader)
        for _ in range(args.warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(iterator)
        seconds = time.perf_counter() - start
        return {"images_per_s": images / seconds}

    if args.variant == "segfw_train":
        timer = StepTimer(args.warmup, args.warmup + args.steps, args.device)
        trainer = build_trainer(cfg)
        trainer.callbacks.append(timer)  # type: ignore[attr-defined]  # set at init, not declared
        trainer.fit(module, datamodule=datamodule)
        seconds = timer.seconds
        return {
            "step_ms": 1000 * seconds / args.steps,
            "images_per_s": images / seconds,
            "peak_mib": peak_memory_mib(args.device),
        }

    if args.variant == "hand_train":
        # What a user would write by hand: the same network, normalization, loss, optimizer and
        # schedule, stepped in a plain loop.
        net = module.net.to(device).to(memory_format=memory_format).train()
        mean, std = module.mean.to(device), module.std.to(device)
        optimizer = build_optimizer(dict(cfg.optimizer), net.parameters())
        scheduler = build_scheduler(dict(cfg.scheduler), optimizer, args.warmup + args.steps)
        criterion = module.criterion.to(device)
        autocast = _autocast(args)
        scaler = torch.amp.GradScaler(enabled=args.precision == "16-mixed")
        start = 0.0
        for step, batch in enumerate(datamodule.train_dataloader()):
            if step == args.warmup:
                synchronize(args.device)
                start = time.perf_counter()
            if step == args.warmup + args.steps:
                break
            x = batch["image"].to(device, non_blocking=True).float()
            x = ((x - mean) / std).contiguous(memory_format=memory_format)
            y = batch["mask"].to(device, non_blocking=True).long()
            with autocast:
                loss = criterion(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        synchronize(args.device)
        seconds = time.perf_counter() - start
        return {
            "step_ms": 1000 * seconds / args.steps,
            "images_per_s": images / seconds,
            "peak_mib": peak_memory_mib(args.device),
        }

    # Batches decoded once and held in memory: evaluation compares what runs on them, not the
    # drawing of the embedded dataset, which would be half of each pass on this CPU.
    batches = list(datamodule.val_dataloader())
    loader = DataLoader(batches, batch_size=None)  # type: ignore[arg-type]  # a list is a map-style dataset
    if args.variant == "segfw_eval":
        with open_dict(cfg):
            cfg.trainer.limit_val_batches = None  # 0 above only kept fit() from validating
        trainer = build_evaluation_trainer(cfg)  # as evaluate.py scores a checkpoint

        def one_pass() -> None:
            trainer.validate(module, loader, verbose=False)

    else:
        # hand_eval does the same work as segfw's validation (the loss and a confusion matrix of
        # every batch); bare_eval only predicts: model(x).argmax(1).
        scored = args.variant == "hand_eval"
        net = module.net.to(device).to(memory_format=memory_format).eval()
        mean, std = module.mean.to(device), module.std.to(device)
        criterion = module.criterion.to(device)
        classes, ignore_index = cfg.data.num_classes, cfg.data.ignore_index
        autocast = _autocast(args)

        def one_pass() -> None:
            confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
            losses = []
            with torch.inference_mode(), autocast:
                for batch in loader:
                    x = batch["image"].to(device, non_blocking=True).float()
                    x = ((x - mean) / std).contiguous(memory_format=memory_format)
                    y = batch["mask"].to(device, non_blocking=True).long()
                    logits = net(x)
                    if not scored:
                        logits.argmax(1)
                        continue
                    losses.append(criterion(logits, y))
                    valid = y != ignore_index
                    pixels = y[valid] * classes + logits.argmax(1)[valid]
                    confusion += torch.bincount(pixels, minlength=classes * classes)
            if scored:
                float(torch.stack(losses).mean())  # the epoch's figures reach the host once

    one_pass()  # warm-up
    passes = []
    for _ in range(EVAL_PASSES):
        synchronize(args.device)
        start = time.perf_counter()
        one_pass()
        synchronize(args.device)
        passes.append(time.perf_counter() - start)
    # The fastest pass: what the code costs, with the least of the machine's other load in it.
    seconds = min(passes)
    return {"images_per_s": args.eval_images / seconds, "peak_mib": peak_memory_mib(args.device)}


def _autocast(args: argparse.Namespace):
    dtypes = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
    if args.precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(args.device, dtype=dtypes[args.precision])


class StepTimer(pl.Callback):
    """Wall time from the start of training step ``first`` to the end of step ``last - 1``."""

    def __init__(self, first: int, last: int, device: str) -> None:
        self.first, self.last, self.device = first, last, device
        self.start, self.seconds = 0.0, float("nan")

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.first:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.last:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self.start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    base = _without_json(argv if argv is not None else sys.argv[1:])
    for round_ in range(args.repeats):
        for variant in VARIANTS:
            result = subprocess.run(
                [sys.executable, __file__, *base, "--variant", variant],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode:
                sys.exit(f"variant {variant} failed:\n{result.stderr[-4000:]}")
            runs[variant].append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}/{args.repeats} {variant}: {runs[variant][-1]}", flush=True)
    summary = summarize(runs)
    print(table(args, summary))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, **summary}, indent=2)
        )


def _without_json(argv: list[str]) -> list[str]:
    """The command line minus ``--json PATH`` / ``--json=PATH``: variants print, main writes."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            kept.append(arg)
    return kept


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median of each figure over the rounds, and the ratios the issue asks for."""
    summary = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for variant, results in runs.items()
    }
    # Ratios are taken round by round (the two ran back to back), then the median.
    ratios = [
        s["step_ms"] / h["step_ms"]
        for s, h in zip(runs["segfw_train"], runs["hand_train"], strict=True)
    ]
    summary["ratio"] = {
        "train_step_segfw_over_hand": statistics.median(ratios),
        "loader_over_train_images_per_s": summary["loader"]["images_per_s"]
        / summary["segfw_train"]["images_per_s"],
        "eval_segfw_over_hand_images_per_s": statistics.median(
            s["images_per_s"] / h["images_per_s"]
            for s, h in zip(runs["segfw_eval"], runs["hand_eval"], strict=True)
        ),
        "eval_segfw_over_bare_images_per_s": statistics.median(
            s["images_per_s"] / h["images_per_s"]
            for s, h in zip(runs["segfw_eval"], runs["bare_eval"], strict=True)
        ),
    }
    return summary


def table(args: argparse.Namespace, s: dict[str, dict[str, float]]) -> str:
    lines = [
        f"\n{args.model} on {args.backbone}, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.device}, precision {args.precision}, channels_last={args.channels_last}, "
        f"compile={args.compile}; median of {args.repeats} rounds of {args.steps} steps",
        f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, "
        f"python {platform.python_version()}, {torch.get_num_threads()} threads",
        "",
        "| what | hand-written | segfw | segfw / hand |",
        "|---|---|---|---|",
        f"| train step (ms) | {s['hand_train']['step_ms']:.1f} | {s['segfw_train']['step_ms']:.1f} "
        f"| {s['ratio']['train_step_segfw_over_hand']:.3f} |",
        f"| train peak memory (MiB) | {s['hand_train']['peak_mib']:.0f} "
        f"| {s['segfw_train']['peak_mib']:.0f} | |",
        f"| eval: forward, loss, confusion matrix (images/s) | "
        f"{s['hand_eval']['images_per_s']:.1f} | {s['segfw_eval']['images_per_s']:.1f} "
        f"| {s['ratio']['eval_segfw_over_hand_images_per_s']:.3f} |",
        f"| eval against a bare model(x).argmax(1) loop (images/s) | "
        f"{s['bare_eval']['images_per_s']:.1f} | {s['segfw_eval']['images_per_s']:.1f} "
        f"| {s['ratio']['eval_segfw_over_bare_images_per_s']:.3f} |",
        f"| eval peak memory (MiB), bare / segfw | {s['bare_eval']['peak_mib']:.0f} "
        f"| {s['segfw_eval']['peak_mib']:.0f} | |",
        f"| data loader (images/s) vs segfw training (images/s) | "
        f"{s['loader']['images_per_s']:.0f} | {s['segfw_train']['images_per_s']:.1f} "
        f"| loader is {s['ratio']['loader_over_train_images_per_s']:.1f}x faster |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
