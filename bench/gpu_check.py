"""One-shot GPU check: segfw against hand-written PyTorch, mixed precision, determinism, throughput.

    python bench/gpu_check.py                        # one CUDA GPU, under 8 minutes
    python bench/gpu_check.py --cpu-smoke            # every code path on the CPU, tiny, ~1 minute

Prints a table and writes a JSON (``--json``, default ``logs/gpu_check.json``) of:

- training step time of segfw (``Trainer.fit``) against a hand-written loop on the same network,
  batch and data, in float32, ``16-mixed`` and ``bf16-mixed``, each with and without
  ``channels_last``, and with ``torch.compile``; the peak GPU memory of each;
- evaluation throughput of segfw (``Trainer.validate``) against a bare ``model(x).argmax(1)`` loop;
- what ``trainer.deterministic=true`` can promise on this device: for UNet and DeepLabv3+, two
  short deterministic runs in a fresh process, ending with equal weights, different ones, or
  torch's refusal to run a kernel that has no deterministic version;
- the training and evaluation throughput of the quickstart network and of DeepLabv3+ on ResNet-50
  at 512 x 512.

The timing comparisons are ``bench/train_overhead.py``'s variants, run here in one process one
after another, one round each (its own command alternates them over rounds, each in a fresh
process): the GPU's peak memory is reset before each (on a CPU the figure is the process's peak so
far).

The CPU smoke run measures nothing worth keeping: one step of each variant at 32 px, float32 with
channels_last only (``16-mixed`` is a GPU precision, ``bf16-mixed`` is emulated and slow on CPUs
without bfloat16 instructions), no ``torch.compile`` (minutes to compile on a CPU), DeepLabv3+ on
MobileNetV2, one deterministic pair (UNet).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import train_overhead  # noqa: E402

from segfw.commands.config import build_datamodule, build_module, build_trainer  # noqa: E402

# What compiling the UNet twice (segfw's copy, then the hand loop's) is expected to take on a GPU
# machine's CPU; the compiled setting starts only if this much of the budget is left.
COMPILE_S = 150


@dataclass(frozen=True)
class Plan:
    """The sizes of one check: the full GPU one or the CPU smoke run."""

    device: str
    size: int  # height and width of the step-time and evaluation comparisons
    batch: int
    steps: int  # timed training steps
    warmup: int
    eval_images: int
    workers: int  # DataLoader workers drawing the embedded dataset
    precisions: tuple[str, ...]
    channels_last: tuple[bool, ...]  # each precision without and with it
    compile: bool
    eval_precision: str  # evaluate.py's with trainer=gpu (16-mixed), float32 on the CPU
    deeplab_backbone: str
    deeplab_size: int
    deeplab_batch: int
    determinism_size: int
    determinism_steps: int
    determinism_models: tuple[tuple[str, str], ...]
    budget_s: float  # items left to start after this are skipped, and said so


def gpu_plan(budget_s: float) -> Plan:
    workers = max(1, min(8, (os.cpu_count() or 2) - 2))
    return Plan(
        device="cuda",
        size=512,
        batch=8,
        steps=30,
        warmup=10,
        eval_images=256,
        workers=workers,
        precisions=("32-true", "16-mixed", "bf16-mixed"),
        channels_last=(False, True),
        compile=True,
        eval_precision="16-mixed",
        deeplab_backbone="resnet50",
        deeplab_size=512,
        deeplab_batch=8,
        determinism_size=128,
        determinism_steps=10,
        determinism_models=(("unet", "mobilenetv2"), ("deeplabv3plus", "resnet50")),
        budget_s=budget_s,
    )


def smoke_plan() -> Plan:
    return Plan(
        device="cpu",
        size=32,
        batch=2,
        steps=1,
        warmup=0,
        eval_images=2,
        workers=0,
        precisions=("32-true",),
        channels_last=(True,),
        compile=False,
        eval_precision="32-true",
        deeplab_backbone="mobilenetv2",
        deeplab_size=32,
        deeplab_batch=2,
        determinism_size=32,
        determinism_steps=2,
        determinism_models=(("unet", "mobilenetv2"),),
        budget_s=float("inf"),
    )


@dataclass
class Report:
    """What the check found, in the order it ran."""

    plan: Plan
    started: float = field(default_factory=time.perf_counter)
    train: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    determinism: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:.0f} s] {text}", flush=True)

    def in_budget(self, item: str, needs_s: float = 0) -> bool:
        """Whether ``item``, expected to take ``needs_s``, fits in what is left of the budget."""
        if time.perf_counter() - self.started + needs_s <= self.plan.budget_s:
            return True
        self.skipped.append(item)
        self.say(f"skipped (time budget of {self.plan.budget_s:.0f} s): {item}")
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--json", type=Path, default=ROOT / "logs" / "gpu_check.json")
    parser.add_argument(
        "--budget-s", type=float, default=420, help="start no item after this many seconds"
    )
    parser.add_argument("--determinism-worker", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def overhead_args(
    plan: Plan,
    variant: str,
    precision: str,
    channels_last: bool = False,
    compile: bool = False,
    model: str = "unet",
    backbone: str = "mobilenetv2",
    size: int | None = None,
    batch: int | None = None,
    workers: int | None = None,
    overrides: tuple[str, ...] = (),
) -> argparse.Namespace:
    """The arguments of one ``bench/train_overhead.py`` variant."""
    argv = [
        f"--model={model}",
        f"--backbone={backbone}",
        f"--size={size or plan.size}",
        f"--batch={batch or plan.batch}",
        f"--steps={plan.steps}",
        f"--warmup={plan.warmup}",
        f"--eval-images={plan.eval_images}",
        f"--workers={plan.workers if workers is None else workers}",
        f"--device={plan.device}",
        f"--precision={precision}",
        f"--variant={variant}",
        *(["--channels-last"] if channels_last else []),
        *(["--compile"] if compile else []),
        *(f"--override={o}" for o in overrides),
    ]
    return train_overhead.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process, its peak memory its own; an error is reported, not raised
    (out of memory at one setting should not end the check)."""
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        return train_overhead.run_variant(args)
    except Exception as error:  # any failure is a finding of the check
        print(f"{args.variant} failed: {error}", flush=True)
        return {"error": _first_line(error)}


def check_training(report: Report, compiled: bool = False) -> None:
    """Each precision with and without channels_last; or, ``compiled``, the fastest setting on
    recent GPUs (bf16-mixed, channels_last) under torch.compile, which compiles for a minute or
    two first: it runs last, when that fits in the budget."""
    plan = report.plan
    if compiled:
        settings = [("bf16-mixed", True)] if plan.compile else []
    else:
        settings = [(p, cl) for p in plan.precisions for cl in plan.channels_last]
    for precision, channels_last in settings:
        name = precision + (" channels_last" if channels_last else "") + (" compile" * compiled)
        if not report.in_budget(f"train {name}", needs_s=COMPILE_S if compiled else 0):
            continue
        row: dict[str, Any] = {"setting": name}
        for side in ("hand", "segfw"):
            args = overhead_args(plan, f"{side}_train", precision, channels_last, compiled)
            row[side] = measure(args)
        report.train.append(row)
        report.say(f"train {name}: {row}")


def check_evaluation(report: Report) -> None:
    plan = report.plan
    if not report.in_budget("evaluation"):
        return
    for variant in ("bare_eval", "segfw_eval"):
        report.eval[variant] = measure(overhead_args(plan, variant, plan.eval_precision))
    report.eval["precision"] = plan.eval_precision
    report.say(f"evaluation: {report.eval}")


def check_throughput(report: Report) -> None:
    """The quickstart network as ``experiment=quickstart trainer=gpu`` trains it (64 px, batch
    16, channels_last, half-width decoder, no loader workers), and DeepLabv3+ on ResNet-50."""
    plan = report.plan
    mixed = "16-mixed" if plan.device == "cuda" else "32-true"
    quickstart_size = 64 if plan.device == "cuda" else plan.size
    networks: list[dict[str, Any]] = [
        {
            "name": f"quickstart (UNet, MobileNetV2, {quickstart_size} px)",
            "model": "unet",
            "backbone": "mobilenetv2",
            "size": quickstart_size,
            "batch": 16 if plan.device == "cuda" else plan.batch,
            "workers": 0,
            "overrides": ("model.decoder_channels=[128,64,32,16,16]",),
        },
        {
            "name": f"DeepLabv3+, {plan.deeplab_backbone}, {plan.deeplab_size} px",
            "model": "deeplabv3plus",
            "backbone": plan.deeplab_backbone,
            "size": plan.deeplab_size,
            "batch": plan.deeplab_batch,
            "workers": None,
            "overrides": (),
        },
    ]
    for network in networks:
        if not report.in_budget(f"throughput {network['name']}"):
            continue
        row: dict[str, Any] = {"network": network["name"], "precision": mixed}
        for variant in ("segfw_train", "segfw_eval"):
            args = overhead_args(
                plan,
                variant,
                mixed,
                channels_last=True,
                model=network["model"],
                backbone=network["backbone"],
                size=network["size"],
                batch=network["batch"],
                workers=network["workers"],
                overrides=network["overrides"],
            )
            row[variant] = measure(args)
        report.throughput.append(row)
        report.say(f"throughput: {row}")


def check_determinism(report: Report) -> None:
    """Each model's two deterministic runs in a fresh process: cuBLAS reads its deterministic
    workspace setting (CUBLAS_WORKSPACE_CONFIG) once, when the process first uses it."""
    plan = report.plan
    for model, backbone in plan.determinism_models:
        if not report.in_budget(f"determinism {model}"):
            continue
        command = [sys.executable, __file__, "--determinism-worker", model, backbone]
        command += ["--cpu-smoke"] if plan.device == "cpu" else []
        env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600
        )
        if result.returncode:
            row = {"result": "error", "message": (result.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            row = json.loads(result.stdout.strip().splitlines()[-1])
        row |= {"model": model, "backbone": backbone}
        report.determinism.append(row)
        report.say(f"determinism: {row}")


def determinism_worker(plan: Plan, model: str, backbone: str) -> dict[str, Any]:
    """Two training runs with ``trainer.deterministic=true``, compared weight by weight."""
    args = overhead_args(
        plan,
        "segfw_train",
        "32-true",
        model=model,
        backbone=backbone,
        size=plan.determinism_size,
        overrides=("trainer.deterministic=true",),
    )
    args.steps, args.warmup = plan.determinism_steps, 0
    runs = []
    for _ in range(2):
        with tempfile.TemporaryDirectory(prefix="segfw-determinism-") as directory:
            try:
                runs.append(_fit_weights(args, Path(directory)))
            except RuntimeError as error:
                # torch.use_deterministic_algorithms(True) refuses kernels without a
                # deterministic version, naming the kernel.
                return {"result": "refused", "message": _first_line(error)}
    first, second = runs
    different = [name for name in first if not torch.equal(first[name], second[name])]
    largest = max(
        ((first[n].double() - second[n].double()).abs().max().item() for n in different),
        default=0.0,
    )
    return {
        "result": "differ" if different else "equal",
        "tensors_differing": len(different),
        "tensors": len(first),
        "max_abs_difference": largest,
    }


def _fit_weights(args: argparse.Namespace, directory: Path) -> dict[str, torch.Tensor]:
    """The weights after ``args.steps`` steps of ``Trainer.fit``, started as train.py starts."""
    cfg = train_overhead.compose(args, directory)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, cfg.model, seed=cfg.seed)
    module = build_module(cfg)
    build_trainer(cfg).fit(module, datamodule=datamodule)
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _ms(result: dict[str, Any], key: str, digits: int = 1) -> str:
    if "error" in result:
        return f"failed: {result['error'][:60]}"
    return f"{result[key]:.{digits}f}"


def _ratio(segfw: dict[str, Any], hand: dict[str, Any], key: str) -> str:
    if "error" in segfw or "error" in hand:
        return ""
    return f"{segfw[key] / hand[key]:.3f}"


def table(report: Report) -> str:
    plan = report.plan
    device = torch.cuda.get_device_name() if plan.device == "cuda" else platform.processor()
    title = "GPU check" if plan.device == "cuda" else "CPU SMOKE RUN (tiny sizes: no real figures)"
    lines = [
        f"\n{title}: {device or plan.device}; torch {torch.__version__}, pytorch_lightning "
        f"{pl.__version__}, python {platform.python_version()}; "
        f"{time.perf_counter() - report.started:.0f} s",
        "",
        f"Training step, UNet on MobileNetV2, {plan.size} x {plan.size}, batch {plan.batch}, "
        f"{plan.steps} timed step(s) after {plan.warmup} warm-up step(s):",
        "",
        "| setting | hand-written (ms) | segfw (ms) | segfw / hand | peak MiB hand / segfw |",
        "|---|---|---|---|---|",
    ]
    for row in report.train:
        hand, segfw = row["hand"], row["segfw"]
        memory = (
            f"{hand['peak_mib']:.0f} / {segfw['peak_mib']:.0f}"
            if "error" not in hand and "error" not in segfw
            else ""
        )
        lines.append(
            f"| {row['setting']} | {_ms(hand, 'step_ms')} | {_ms(segfw, 'step_ms')} "
            f"| {_ratio(segfw, hand, 'step_ms')} | {memory} |"
        )
    if report.eval:
        bare, segfw = report.eval["bare_eval"], report.eval["segfw_eval"]
        lines += [
            "",
            f"Evaluation, {plan.eval_images} images, {report.eval['precision']} (images/s):",
            "",
            "| bare model(x).argmax(1) | segfw Trainer.validate | segfw / bare |",
            "|---|---|---|",
            f"| {_ms(bare, 'images_per_s')} | {_ms(segfw, 'images_per_s')} "
            f"| {_ratio(segfw, bare, 'images_per_s')} |",
        ]
    if report.throughput:
        lines += [
            "",
            "Throughput, channels_last (images/s; peak MiB of training):",
            "",
            "| network | precision | train | evaluate | peak MiB |",
            "|---|---|---|---|---|",
        ]
        for row in report.throughput:
            train, evaluate = row["segfw_train"], row["segfw_eval"]
            peak = "" if "error" in train else f"{train['peak_mib']:.0f}"
            lines.append(
                f"| {row['network']} | {row['precision']} | {_ms(train, 'images_per_s')} "
                f"| {_ms(evaluate, 'images_per_s')} | {peak} |"
            )
    if report.determinism:
        lines += [
            "",
            "trainer.deterministic=true, two runs from the same seed:",
            "",
            "| network | result |",
            "|---|---|",
        ]
        for row in report.determinism:
            detail = row.get("message") or (
                f"{row['tensors_differing']} of {row['tensors']} tensors differ, "
                f"at most by {row['max_abs_difference']:.3g}"
            )
            lines.append(f"| {row['model']} ({row['backbone']}) | {row['result']}: {detail} |")
    if report.skipped:
        lines += ["", f"Skipped (time budget): {', '.join(report.skipped)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit(
            "No CUDA device here. On a GPU machine run: python bench/gpu_check.py; on a CPU, "
            "python bench/gpu_check.py --cpu-smoke runs every code path at tiny sizes."
        )
    plan = smoke_plan() if args.cpu_smoke else gpu_plan(args.budget_s)
    if args.determinism_worker:
        print(json.dumps(determinism_worker(plan, *args.determinism_worker)))
        return
    report = Report(plan)
    # train_overhead's variants leave their run dirs in the temporary directory: keep them in one
    # that goes away at the end.
    with tempfile.TemporaryDirectory(prefix="segfw-gpu-check-") as scratch:
        tempfile.tempdir = scratch
        try:
            check_training(report)
            check_evaluation(report)
            check_throughput(report)
            check_determinism(report)
            check_training(report, compiled=True)
        finally:
            tempfile.tempdir = None
    print(table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "device": torch.cuda.get_device_name() if plan.device == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__},
        "plan": asdict(plan) | {"budget_s": None if args.cpu_smoke else plan.budget_s},
        "seconds": time.perf_counter() - report.started,
        "train": report.train,
        "eval": report.eval,
        "throughput": report.throughput,
        "determinism": report.determinism,
        "skipped": report.skipped,
    }
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
