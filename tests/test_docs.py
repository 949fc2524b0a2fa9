"""Every command and Python snippet of README.md and docs/*.md, run at test size.

The docs are what a user runs first, so they are tested as code. Commands are taken from the
pages' ```bash blocks and from the complete commands quoted in their prose; their placeholders
(``PATH``, ``<run>``, ``/data/...``) become paths of a run and of datasets this module writes, in
a workspace laid out as the docs' examples (``logs/runs/2024-05-01_12-00-00`` is a real run).

- ``train.py``, ``evaluate.py``, ``predict.py``, ``export.py`` and ``segfw.data.inspect`` commands
  are composed from the real configs in-process (the ``--cfg job`` check without a process start
  per command; a ``-m`` sweep: its sweep config and each value of each swept key) and their
  settings resolved; RUN_IN_DEFAULT run for real in the default suite, ``-m slow`` runs every other
  one that fits a CPU through its script, shrunk (TINY sizes, one epoch, no ImageNet download).
- GPU and cluster commands are composed only (``hardware``, COMPOSED_ONLY).
- ``segfw.report`` runs; ``tensorboard`` and ``wandb sync`` are checked against the files a run
  wrote; ``pip install`` against pyproject.toml's extras; ``python -c`` prints the figure its page
  quotes; benchmarks parse their arguments (and run shrunk under ``-m slow``).
- Python snippets run with the same substitutions (PYTHON_SNIPPETS says how each is shrunk).
- What cannot run at all is in NOT_RUN, with the reason.

A command or snippet added to the docs that none of this handles fails
``test_every_command_and_snippet_is_handled``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from PIL import Image

from helpers import TINY, TINY_SHAPES
from layouts import SIZE, blocks, paint, save_rgb, write_camvid, write_painted_folder, write_voc

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "segfw" / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# --- what the pages hold ---------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
# A quoted span of prose that starts like a command; prose also quotes paths, keys and names.
COMMAND_START = re.compile(r"(python3? |torchrun |srun |wandb [a-z]|tensorboard -|pip install )")
COMMENT = re.compile(r"\s+#\s.*$")


@dataclass(frozen=True)
class Snippet:
    """A command (continuation lines joined, comment dropped) or a Python block of a page."""

    page: str
    line: int
    text: str
    python: bool = False

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def block_commands(page: str, first_line: int, body: str) -> list[Snippet]:
    """The commands of a shell block: comment lines and ``#SBATCH`` directives left out,
    ``\\``-continued lines joined, ``a && b`` split in two."""
    commands, pending, start = [], "", first_line
    for number, line in enumerate(body.splitlines(), first_line):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = number
        line = COMMENT.sub("", line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole, pending = " ".join((pending + line).split()), ""
        commands += [Snippet(page, start, part) for part in whole.split(" && ")]
    return commands


def without_fences(text: str) -> str:
    """The prose of a page: fenced blocks blanked out, line numbers kept."""
    return FENCE.sub(lambda fence: "\n" * fence.group(0).count("\n"), text)


def page_snippets(path: Path) -> list[Snippet]:
    text = path.read_text()
    page = path.relative_to(ROOT).as_posix()
    found = []
    for fence in FENCE.finditer(text):
        language, body = fence.group(1), fence.group(2)
        first_line = text.count("\n", 0, fence.start()) + 2
        if language == "python":
            found.append(Snippet(page, first_line, body, python=True))
        elif language in ("bash", "sh"):
            found += block_commands(page, first_line, body)
    prose = without_fences(text)
    for span in INLINE.finditer(prose):
        code = span.group(1)
        if "\n\n" not in code and COMMAND_START.match(code):
            line = prose.count("\n", 0, span.start()) + 1
            found.append(Snippet(page, line, " ".join(code.split())))
    return found


def all_snippets() -> tuple[list[Snippet], list[Snippet]]:
    """Every distinct command (first place it appears) and every Python snippet of the pages."""
    commands: dict[str, Snippet] = {}
    python = []
    for path in PAGES:
        for snippet in page_snippets(path):
            if snippet.python:
                python.append(snippet)
            else:
                commands.setdefault(snippet.text, snippet)
    return list(commands.values()), python


COMMANDS, PYTHON = all_snippets()

# --- the workspace the commands run in -------------------------------------------------------

RUN = "logs/runs/2024-05-01_12-00-00"  # the docs' example run: the run this module trains
SWEEP = "logs/multiruns/2024-05-01_13-00-00"  # the docs' example sweep: its one job is RUN
OPTUNA = "logs/multiruns/2024-05-01_12-00-00"  # the Optuna sweep the docs continue (-m slow)
CKPT = f"{RUN}/checkpoints/last.ckpt"
PHOTOS = {"photo.jpg": (45, 70), "photos/wide.png": (40, 90), "photos/tall.jpg": (72, 50)}

# (pattern, replacement), in order: the docs' placeholders as paths of the workspace.
PLACEHOLDERS = [
    (r"<the same overrides>|<its overrides>", "experiment=quickstart"),
    (r"logs/runs/<run>", RUN),
    (r"<run dir>", RUN),
    (r"logs/multiruns/<sweep>", SWEEP),
    (r"logs/multiruns/<dir>", OPTUNA),
    (r"<dir>", RUN),
    (r"<ckpt>|\bPATH\b", CKPT),
    (r"\bDIR_OR_FILE\b", "photos"),
    (r"\bDIR\b", "predictions"),
    (r"format=onnx\|torchscript", "format=torchscript"),  # ONNX: the export section's command
    (r"\bHOST:", "127.0.0.1:"),
    (r"\$SLURM_JOB_ID", "4242"),
    (r"(?<=[\s=])/data/", "data/"),
    (r"/path/to/root", "path/to/root"),
    (r" \[([\w.]+=[^\]\s]+)\]", r" \1"),  # an optional override: given
    (r" \[[^\]=]*\]", ""),  # an optional argument said in words ([PATTERN]): left out
]
LEFTOVER = re.compile(r"<[^>]*>|\b[A-Z][A-Z_]{2,}\b")


def substitute(text: str) -> str:
    for pattern, replacement in PLACEHOLDERS:
        text = re.sub(pattern, replacement, text)
    return text


# --- what each command is --------------------------------------------------------------------

# Commands that read a Hydra config: the config each composes.
CONFIGS = {
    "train.py": "train",
    "evaluate.py": "evaluate",
    "predict.py": "predict",
    "export.py": "export",
    "segfw.data.inspect": "inspect",
}


# The console scripts of an installed segfw (pyproject.toml): the repo's scripts under other names.
CONSOLE_SCRIPTS = {
    f"segfw-{name}": f"{name}.py" for name in ("train", "evaluate", "predict", "export")
}


@dataclass(frozen=True)
class Command:
    launcher: str | None  # torchrun or srun, which start the program themselves
    program: str  # train.py, segfw.report, bench/export_speed.py, -c, tensorboard, wandb sync ...
    args: list[str]


def parse(text: str) -> Command:
    """The program and arguments of a command whose placeholders were substituted."""
    words = shlex.split(text)
    launcher = None
    if words[0] in ("torchrun", "srun"):
        launcher = words[0]
        start = next(i for i, w in enumerate(words) if w == "python" or w.endswith(".py"))
        words = words[start:] if words[start] == "python" else ["python", *words[start:]]
    if words[0] == "python":
        if words[1] in ("-m", "-c"):
            program = words[2] if words[1] == "-m" else "-c"
            return Command(launcher, program, words[3:] if words[1] == "-m" else words[2:])
        return Command(launcher, words[1], words[2:])
    if words[0] == "wandb":
        return Command(None, f"wandb {words[1]}", words[2:])
    if words[0] in CONSOLE_SCRIPTS:  # segfw-train ...: the script's command line
        return Command(None, CONSOLE_SCRIPTS[words[0]], words[1:])
    return Command(None, words[0], words[1:])


# Commands that are not run, and why.
NOT_RUN = {
    "python -m pytest": "the test suite this test is part of (its uses with a marker or a path "
    "are checked: check_pytest)",
    "python train.py -m ...": "an elision in the prose, standing for any sweep",
    "python -m segfw.report": "names the command; its uses with a directory run",
    "wandb sync": "names the command; its uses with a path are checked",
    "wandb login": "needs a W&B account and the network",
    "wandb artifact get <entity>/<project>/model-<run id>:best": "needs a W&B account, the network "
    "and an uploaded run",
}
# CPU commands that are composed, not run, and why (GPU and cluster ones: see hardware()).
COMPOSED_ONLY = {
    "torchrun --nnodes=2 --node_rank=0 --nproc-per-node=1 --master_addr=127.0.0.1 "
    "--master_port=29500 train.py trainer=ddp trainer.num_nodes=2 trainer.devices=1 "
    "trainer.accelerator=cpu trainer.sync_batchnorm=false data.sizes.val=15 "
    "hydra.run.dir=logs/runs/two_nodes": "one of two launches that meet over localhost: "
    "tests/test_scaling.py runs the pair (-m slow)",
    "torchrun --nnodes=2 --node_rank=1 --nproc-per-node=1 --master_addr=127.0.0.1 "
    "--master_port=29500 train.py trainer=ddp trainer.num_nodes=2 trainer.devices=1 "
    "trainer.accelerator=cpu trainer.sync_batchnorm=false data.sizes.val=15 "
    "hydra.run.dir=logs/runs/two_nodes": "one of two launches that meet over localhost: "
    "tests/test_scaling.py runs the pair (-m slow)",
}
# Commands the default suite runs for real (in-process); the others that can run do under -m slow.
RUN_IN_DEFAULT = {
    "python evaluate.py ckpt_path=logs/runs/<run>/checkpoints/last.ckpt split=test",
    "python predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR [inference=slide]",
    "python export.py ckpt_path=PATH format=torchscript output=exported/",
    "python -m segfw.data.inspect data=folder data.root=/path/to/root data.num_classes=3 "
    "'data.class_names=[background,road,car]'",
}


def hardware(command: Command) -> str | None:
    """Why a command needs hardware this machine lacks (a GPU, a cluster), or None."""
    args = command.args
    if command.launcher == "srun" or "hydra/launcher=submitit_slurm" in args:
        return "submits to a SLURM cluster"
    if "trainer=gpu" in args or ("--device" in args and "cuda" in args):
        return "needs a GPU"
    if any(a.endswith("precision=16-mixed") for a in args):
        return "needs a GPU (float16 mixed precision)"
    if "trainer=ddp" in args and "trainer.accelerator=cpu" not in args:
        return "needs several GPUs (trainer=ddp)"
    if command.program == "bench/gpu_check.py" and "--cpu-smoke" not in args:
        return "needs a GPU (--cpu-smoke: the same on the CPU, run under -m slow)"
    return None


def composed_only(snippet: Snippet) -> str | None:
    """Why a command of a config-reading program is only composed, or None if it can run."""
    return COMPOSED_ONLY.get(snippet.text) or hardware(parse(substitute(snippet.text)))


# --- test size -------------------------------------------------------------------------------

# Set whatever the command says: an epoch at the docs' sizes takes minutes to hours on a CPU, and
# ImageNet weights cannot be downloaded here.
FORCED = {
    "model.height",
    "model.width",
    "trainer.max_epochs",
    "backbone.weights",
    "data.num_workers",
    "data.sizes.train",
    "data.sizes.val",
    "data.sizes.test",
    "hydra.sweeper.n_trials",
}
# Drawn pictures at test size.
SMALL_PICTURES = ["worst_cases=2", "callbacks.validation_samples.num_samples=2"]


def key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def shrink(args: list[str]) -> list[str]:
    """A train.py command's arguments at test size: TINY's settings where the command gives none,
    and FORCED's whatever it gives; the command's choices (model, backbone, data, or an
    experiment's) stay."""
    shapes = not any(a.startswith("data=") and a != "data=shapes" for a in args)
    test_size = TINY + (TINY_SHAPES if shapes else []) + SMALL_PICTURES
    if any(key(a) == "experiment" for a in args):  # its backbone, with settings TINY's lacks
        test_size = [t for t in test_size if key(t) != "backbone"]
    if "hparams_search=optuna" in args:
        test_size = [*test_size, "hydra.sweeper.n_trials=2"]
    given = {key(a) for a in args}
    kept = [a for a in args if key(a) not in FORCED]
    return kept + [t for t in test_size if key(t) in FORCED or key(t) not in given]


# --- composing ---------------------------------------------------------------------------------


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of a sweep's jobs to compose: every value of each swept key (the others at
    their first), an interval at its start."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = []
    for override in parsed:
        if not override.is_sweep_override():
            values.append([override.input_line])
            continue
        name = override.get_key_element()
        if override.is_discrete_sweep():
            values.append([f"{name}={v}" for v in override.sweep_string_iterator()])
        else:
            values.append([f"{name}={override.value().start}"])
    first = [options[0] for options in values]
    jobs = [first]
    for i, options in enumerate(values):
        jobs += [[*first[:i], option, *first[i + 1 :]] for option in options[1:]]
    return jobs


def compose_jobs(config_name: str, args: list[str]) -> list[DictConfig]:
    """The configs a command's jobs run with, ``hydra`` left out: what ``--cfg job`` prints, for
    each job of a ``-m`` sweep too (after its sweep config composed)."""
    multirun = bool({"-m", "--multirun"} & set(args))
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    configs = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        if multirun:  # the sweep's own config: sweeper and launcher settings
            GlobalHydra.instance().hydra.compose_config(
                config_name,
                overrides,
                run_mode=RunMode.MULTIRUN,
                from_shell=True,
                with_log_configuration=False,
            )
        for job in sweep_jobs(overrides) if multirun else [overrides]:
            cfg = compose(config_name, job, return_hydra_config=True)
            run_dir = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
            with open_dict(cfg):
                if "output_dir" in cfg:
                    cfg.output_dir = f"{run_dir}/0" if multirun else run_dir
                del cfg["hydra"]
            configs.append(cfg)
    return configs


def settings(config_name: str, cfg: DictConfig) -> dict[str, Any]:
    """The plain settings the command takes from its config, as the command reads them."""
    from segfw.commands.config import plain, train_settings

    return train_settings(cfg) if config_name in ("train", "inspect") else plain(cfg)


def command_function(program: str) -> Callable[[DictConfig], Any]:
    from segfw.commands.evaluate import evaluate
    from segfw.commands.export import export
    from segfw.commands.inspect import inspect
    from segfw.commands.predict import predict
    from segfw.commands.train import train

    functions = {"train.py": train, "evaluate.py": evaluate, "predict.py": predict}
    functions |= {"export.py": export, "segfw.data.inspect": inspect}
    return functions[program]


# --- datasets at the docs' roots ---------------------------------------------------------------

SPLITS = {"train": 8, "val": 2, "test": 2}  # 8: one batch of TINY's 8 (the loader drops the rest)


def write_colour_folder(root: Path, colours: list, ignore: list) -> None:
    """A folder dataset whose masks paint class c in ``colours[c]`` and unlabelled pixels in
    ``ignore[0]``, as the command describing it says."""
    rng = np.random.default_rng(7)
    table = np.array([*colours, *ignore[:1]], np.uint8)
    for split, count in SPLITS.items():
        for n in range(count):
            code = blocks(rng, list(range(len(table))))
            classes = np.where(code == len(colours), 255, code).astype(np.uint8)
            save_rgb(root / "images" / split / f"img{n}.png", paint(classes))
            save_rgb(root / "masks" / split / f"img{n}.png", table[code])


def ensure_dataset(args: list[str], workspace: Path) -> None:
    """Writes the dataset a train.py-like command names, in its layout, if it is not there."""
    options = dict(a.lstrip("+").split("=", 1) for a in args if "=" in a)
    kind, root = options.get("data", "shapes"), options.get("data.root")
    if root is None or (workspace / root).exists():
        return
    root = workspace / root
    if kind == "folder" and "data.mask_colors" in options:
        colours = yaml.safe_load(options["data.mask_colors"])
        write_colour_folder(root, colours, yaml.safe_load(options.get("data.ignore_colors", "[]")))
    elif kind == "folder":
        write_painted_folder(root, {split: [SIZE] * n for split, n in SPLITS.items()})
    elif kind == "voc":
        base = root.parent if root.name == "VOCdevkit" else root.parent.parent
        ids = {"train": [f"2007_{i:06d}" for i in range(8)], "val": ["2007_000100", "2007_000101"]}
        write_voc(base, {**ids, "trainval": ids["train"] + ids["val"]}, sbd=["2008_900001"])
    elif kind == "camvid":
        write_camvid(root, SPLITS)
    else:
        raise AssertionError(f"no writer for data={kind} at {root}: add one to ensure_dataset")


# --- the run the commands use ------------------------------------------------------------------


def wandb_env(home: Path) -> dict[str, str]:
    """The environment of a process without W&B credentials, its files under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env["NETRC"] = str(home / "netrc")  # absent: no stored login
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):
        env[name] = str(home / name.lower())
    return env


def run_process(argv: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=wandb_env(cwd / ".wandb"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{' '.join(argv)}: exit {result.returncode}\n" + (result.stdout + result.stderr)[-4000:]
    )
    return result


def script_argv(command: Command, args: list[str]) -> list[str]:
    if command.program.endswith(".py"):
        return [sys.executable, str(ROOT / command.program), *args]
    return [sys.executable, "-m", command.program, *args]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory laid out as the docs' examples: a one-job sweep (quickstart at test size, with
    the wandb logger, offline) in SWEEP, its job's dir also at RUN, and the images to predict."""
    workspace = tmp_path_factory.mktemp("docs")
    sweep = ["-m", "experiment=quickstart", "logger=[csv,tensorboard,wandb]"]
    run_process(
        script_argv(Command(None, "train.py", []), [*shrink(sweep), f"hydra.sweep.dir={SWEEP}"]),
        workspace,
    )
    (workspace / RUN).parent.mkdir(parents=True)
    (workspace / RUN).symlink_to(workspace / SWEEP / "0", target_is_directory=True)
    rng = np.random.default_rng(0)
    for name, (height, width) in PHOTOS.items():
        (workspace / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(workspace / name)
    return workspace


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    return workspace


# --- the default suite: every command checked --------------------------------------------------


def test_every_command_and_snippet_is_handled():
    handled = set(CONFIGS) | set(CHECKS) | {"-c"}
    unhandled = []
    for snippet in COMMANDS:
        if snippet.text in NOT_RUN:
            continue
        command = parse(substitute(snippet.text))
        if command.program not in handled and not command.program.startswith("bench/"):
            unhandled.append(f"{snippet}: {snippet.text}")
        leftover = LEFTOVER.findall(substitute(snippet.text))
        assert not leftover, f"{snippet}: placeholder {leftover} has no value in PLACEHOLDERS"
    assert not unhandled, "commands no test handles:\n" + "\n".join(unhandled)
    texts = {snippet.text for snippet in COMMANDS}
    stale = (set(NOT_RUN) | set(COMPOSED_ONLY) | RUN_IN_DEFAULT) - texts
    assert not stale, f"entries for commands the docs no longer hold: {stale}"
    for snippet in PYTHON:
        assert python_setup(snippet), f"{snippet}: a Python snippet without a PYTHON_SNIPPETS entry"
    assert len(PYTHON_SNIPPETS) == len(PYTHON), "a PYTHON_SNIPPETS entry matches no snippet"


def default_commands() -> list:
    return [
        pytest.param(s, id=str(s)) for s in COMMANDS if s.text not in NOT_RUN and not slow_only(s)
    ]


def slow_only(snippet: Snippet) -> bool:
    """Commands with nothing to check short of running them."""
    command = parse(substitute(snippet.text))
    return command.program == "train.py" and "--help" in command.args


@pytest.mark.parametrize("snippet", default_commands())
def test_command(snippet: Snippet, request):
    command = parse(substitute(snippet.text))
    if command.program in CONFIGS:
        if snippet.text in RUN_IN_DEFAULT:
            run_in_process(command, request.getfixturevalue("in_workspace"))
        else:
            check_composes(command, request)
    elif command.program.startswith("bench/"):
        check_bench_arguments(command)
    elif command.program == "-c":
        check_printed_figure(command, snippet, request.getfixturevalue("capsys"))
    else:
        CHECKS[command.program](command, request)


def check_composes(command: Command, request) -> None:
    """Composes as ``--cfg job`` would and resolves what the command reads; the checkpoint it
    names is one a run wrote."""
    if command.program == "train.py":
        from segfw.commands.train import require_sweep_extra

        require_sweep_extra(command.args)
    config_name = CONFIGS[command.program]
    for cfg in compose_jobs(config_name, command.args):
        ckpt_path = settings(config_name, cfg).get("ckpt_path")
        if ckpt_path not in (None, "last"):
            assert (request.getfixturevalue("workspace") / ckpt_path).is_file(), ckpt_path


def run_in_process(command: Command, workspace: Path) -> None:
    """Runs a command's function on its composed config and checks what the docs say it does."""
    output = workspace / "in_process" / command.program
    args = [*command.args, f"hydra.run.dir={output}"]
    ensure_dataset(args, workspace)
    (cfg,) = compose_jobs(CONFIGS[command.program], args)
    result = command_function(command.program)(cfg)
    options = dict(a.split("=", 1) for a in command.args if "=" in a)
    if command.program == "evaluate.py":
        # README: evaluate.py reproduces what training reported for the same checkpoint (after
        # one epoch last.ckpt holds the best checkpoint's weights).
        trained = json.loads((workspace / RUN / "metrics.json").read_text())
        assert result["test/mIoU"] == pytest.approx(trained["test/mIoU"], abs=1e-6)
        assert (output / "per_image.csv").is_file() and (output / "worst_cases/test.png").is_file()
    elif command.program == "predict.py":
        for name, (height, width) in PHOTOS.items():
            if name.startswith(f"{options['input']}/"):
                relative = Path(name).relative_to(options["input"])
                mask = Image.open(workspace / options["output"] / "masks" / f"{relative.stem}.png")
                assert (mask.mode, mask.size) == ("P", (width, height))
        assert result["predicted"] == 2
    elif command.program == "export.py":
        model = workspace / options["output"] / "model.pt"
        meta = json.loads(model.with_suffix(".pt.json").read_text())
        assert model.is_file() and meta["num_classes"] == 4
    else:
        assert not any(split["problems"] for split in result["splits"].values())
        assert (output / "report.json").is_file()


def check_bench_arguments(command: Command) -> None:
    """The benchmark takes the arguments; train_overhead.py's also compose its train config."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        bench = __import__(Path(command.program).stem)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    args = bench.parse_args(command.args)
    if command.program == "bench/train_overhead.py":
        bench.compose(args, Path("unused"))


def check_printed_figure(command: Command, snippet: Snippet, capsys) -> None:
    """A ``python -c`` measurement prints the figure its page quotes."""
    exec(command.args[0], {})
    printed = int(capsys.readouterr().out.strip())
    assert f"{printed:,}" in (ROOT / snippet.page).read_text()


def check_report(command: Command, request) -> None:
    from segfw.report.cli import main

    workspace = request.getfixturevalue("in_workspace")
    assert main(command.args) == 0
    output = Path(
        dict(zip(command.args, command.args[1:], strict=False)).get("--output", command.args[0])
    )
    assert (workspace / output / "report.html").is_file()
    assert (workspace / output / "leaderboard.csv").is_file()


def check_tensorboard(command: Command, request) -> None:
    """``--logdir`` names a directory that holds the event files of every run under it."""
    workspace = request.getfixturevalue("workspace")
    logdir = workspace / command.args[command.args.index("--logdir") + 1]
    runs = {path.parent for path in logdir.rglob("metrics.json")}
    events = {path.parent.parent for path in logdir.rglob("tensorboard/events.out.tfevents.*")}
    assert runs and events == runs


def check_wandb_sync(command: Command, request) -> None:
    """The pattern matches the offline wandb runs a run writes."""
    workspace = request.getfixturevalue("workspace")
    (pattern,) = [a for a in command.args if not a.startswith("--")]
    matches = sorted(workspace.glob(pattern))
    assert matches, f"{pattern} matches nothing a run wrote"
    for match in matches:
        assert list(match.glob("run-*.wandb")), f"{match} is not an offline wandb run"


def check_pip(command: Command, request) -> None:
    """``pip install [-c constraints.txt] -e .[extra]`` names this project and extras it declares,
    and a constraints file of the repo."""
    args = command.args[1:]
    constraints = [args[i + 1] for i, a in enumerate(args) if a in ("-c", "--constraint")]
    for name in constraints:
        assert (ROOT / name).is_file(), f"{name}: no such constraints file"
    (target,) = [a for a in args if not a.startswith("-") and a not in constraints]
    path, _, extras = target.partition("[")
    project = tomllib.loads((ROOT / path / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    missing = [e for e in extras.rstrip("]").split(",") if e and e not in declared]
    assert not missing, f"{target}: pyproject.toml declares no extra {missing}"


def check_pytest(command: Command, request) -> None:
    """The markers a pytest command selects are registered, and its paths exist."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    markers = {line.split(":")[0] for line in options["ini_options"]["markers"]}
    args = command.args
    for i, arg in enumerate(args):
        if arg == "-m":
            assert args[i + 1] in markers
        elif not arg.startswith("-") and args[i - 1] != "-m":
            assert (ROOT / arg).exists(), arg


def check_models_listing(command: Command, request) -> None:
    """``python -m segfw.models`` takes the arguments and lists what they ask for (the listing
    itself runs under -m slow: it builds every network, or probes each encoder for seconds)."""
    import segfw.models.__main__ as listing

    monkeypatch = request.getfixturevalue("monkeypatch")
    calls = []
    monkeypatch.setattr(listing, "print_zoo", lambda n: calls.append(("zoo", n)))
    monkeypatch.setattr(listing, "print_encoders", lambda p: calls.append(("encoders", p)))
    monkeypatch.setattr(sys, "argv", ["python -m segfw.models", *command.args])
    listing.main()
    options = dict(zip(command.args, [*command.args[1:], None], strict=False))
    if "--encoders" in options:
        assert calls == [("encoders", options["--encoders"])]
    else:
        assert calls == [("zoo", int(options.get("--num-classes", 21)))]


CHECKS: dict[str, Callable[[Command, Any], None]] = {
    "segfw.report": check_report,
    "tensorboard": check_tensorboard,
    "wandb sync": check_wandb_sync,
    "pip": check_pip,
    "pytest": check_pytest,
    "segfw.models": check_models_listing,
}

# --- -m slow: every command that runs on a CPU, through its script -----------------------------


def runnable(snippet: Snippet) -> bool:
    command = parse(substitute(snippet.text))
    programs = {*CONFIGS, "segfw.models"}
    if snippet.text in NOT_RUN or snippet.text in RUN_IN_DEFAULT:
        return False
    if command.program in programs or command.program.startswith("bench/"):
        return composed_only(snippet) is None
    return False


# Benchmark arguments at test size, whatever the command gives.
BENCH_SIZES = {
    "bench/data_loading.py": ["--size=64", "--image-size=96x64", "--images=16", "--steps=1"],
    "bench/export_speed.py": ["--size=64", "--iterations=1", "--rounds=1"],
    "bench/train_overhead.py": ["--steps=2", "--warmup=1", "--repeats=1", "--eval-images=16"],
    "bench/gpu_check.py": [],
}


def shrink_bench(program: str, args: list[str], output: Path) -> list[str]:
    forced = BENCH_SIZES[program]
    names = {f.split("=")[0] for f in forced}
    kept, skip = [], False
    for arg in args:  # "--size 576" and "--size=576" alike
        if skip:
            skip = False
        elif arg.split("=")[0] in names:
            skip = "=" not in arg
        else:
            kept.append(arg)
    return [*kept, *forced, f"--json={output / 'bench.json'}"]


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [pytest.param(s, id=str(s)) for s in COMMANDS if runnable(s)])
def test_command_runs(snippet: Snippet, workspace, tmp_path, request):
    command = parse(substitute(snippet.text))
    args = command.args
    if command.program == "train.py" and "--help" not in args:
        if OPTUNA in " ".join(args):
            request.getfixturevalue("optuna_sweep")
        args = train_arguments(args, workspace, tmp_path)
    elif command.program in CONFIGS:
        ensure_dataset(args, workspace)
        args = [*args, f"hydra.run.dir={tmp_path / 'run'}"]
    elif command.program.startswith("bench/"):
        args = shrink_bench(command.program, args, tmp_path)
    result = run_process(script_argv(command, args), workspace, timeout=3600)
    if command.program == "train.py" and "--help" not in args:
        jobs = [tmp_path / "run"] if "-m" not in args else list((tmp_path / "sweep").iterdir())
        assert any((job / "metrics.json").is_file() for job in jobs), result.stderr[-3000:]
    elif command.program == "segfw.models":
        assert len(result.stdout.splitlines()) > 3


def train_arguments(args: list[str], workspace: Path, tmp_path: Path) -> list[str]:
    """A train.py command's arguments at test size, writing into ``tmp_path``: a run dir it
    resumes (``ckpt_path=last``) is a copy, so that the shared run stays as it was."""
    ensure_dataset(args, workspace)
    run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    if "ckpt_path=last" in args and run_dir and (workspace / run_dir).is_dir():
        shutil.copytree(workspace / run_dir, tmp_path / "run", symlinks=False)
    kept = [a for a in shrink(args) if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    return [*kept, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]


@pytest.fixture(scope="module")
def optuna_sweep(workspace) -> Path:
    """docs/scaling.md's first Optuna sweep at test size, in OPTUNA, which the docs continue."""
    (snippet,) = [s for s in COMMANDS if s.text == "python train.py -m hparams_search=optuna"]
    args = [*shrink(parse(snippet.text).args), f"hydra.sweep.dir={OPTUNA}"]
    run_process(script_argv(Command(None, "train.py", []), args), workspace)
    return workspace / OPTUNA


@pytest.mark.slow
def test_an_optuna_sweep_writes_what_the_docs_list(optuna_sweep):
    """docs/scaling.md, "What a sweep writes"."""
    assert (optuna_sweep / "optimization_results.yaml").is_file()
    assert (optuna_sweep / "optuna.journal").is_file()
    for trial in ("0", "1"):
        for name in ("config.yaml", "checkpoints", "metrics.json", "train.log", ".hydra"):
            assert (optuna_sweep / trial / name).exists(), f"{trial}/{name}"


# --- Python snippets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonSetup:
    """How a Python snippet runs here.

    Attributes:
        marker: a line that identifies the snippet.
        shrink: text replaced to run it at test size; each must occur in the snippet.
        names: the names the snippet leaves to the reader, given values.
        check: what must hold in its namespace once it ran.
        fixture: a fixture that makes what it reads (an export, a study).
        slow: runs under -m slow only.
    """

    marker: str
    check: Callable[[dict[str, Any], str], None]
    shrink: dict[str, str] | None = None
    names: Callable[[], dict[str, Any]] | None = None
    fixture: str = "workspace"
    slow: bool = False


def check_api(names: dict[str, Any], printed: str) -> None:
    from segfw.training.module import SegmentationModule

    height, width = PHOTOS["photo.jpg"]
    assert names["mask"].dtype == np.uint8 and names["mask"].shape == (height, width)
    assert [m.shape for m in names["masks"]] == [(40, 56), (30, 60)]
    assert isinstance(names["module"], SegmentationModule) and not names["module"].training
    assert names["slide"].predict(names["array"]).shape == (40, 56)
    assert 0 <= names["metrics"]["val/mIoU"] <= 1 and 0 <= names["scores"]["test/mIoU"] <= 1


def check_onnx(names: dict[str, Any], printed: str) -> None:
    meta = names["meta"]
    assert names["classes"].shape == (1, meta["input"]["height"], meta["input"]["width"])
    assert names["classes"].max() < len(meta["class_names"])


def check_study(names: dict[str, Any], printed: str) -> None:
    trials = names["study"].trials
    assert len(trials) >= 2
    assert all(str(trial.number) in printed for trial in trials)


PYTHON_SNIPPETS = [
    PythonSetup(
        marker='predictor = segfw.load("logs/runs/<run>/checkpoints/last.ckpt")',
        shrink={'"trainer.max_epochs=1"]': '"trainer.max_epochs=1", *TEST_SIZE]'},
        names=lambda: {
            "array": np.zeros((40, 56, 3), np.uint8),
            "pil_image": Image.new("RGB", (60, 30)),
            "TEST_SIZE": shrink(["experiment=quickstart"])[1:],
        },
        check=check_api,
    ),
    PythonSetup(
        marker='session = onnxruntime.InferenceSession("exported/model.onnx")',
        check=check_onnx,
        fixture="onnx_export",
        slow=True,
    ),
    PythonSetup(
        marker='storage=open_storage("logs/multiruns/<dir>/optuna.journal")',
        check=check_study,
        fixture="optuna_sweep",
        slow=True,
    ),
]


def python_setup(snippet: Snippet) -> PythonSetup | None:
    return next((s for s in PYTHON_SNIPPETS if s.marker in snippet.text), None)


@pytest.fixture(scope="module")
def onnx_export(workspace) -> Path:
    """docs/inference.md's ONNX export of the shared run's checkpoint, into exported/."""
    (snippet,) = [s for s in COMMANDS if "format=onnx output=exported/" in s.text]
    command = parse(substitute(snippet.text))
    run_process(script_argv(command, command.args), workspace)
    return workspace / "exported"


def python_params() -> list:
    return [
        pytest.param(
            s,
            id=str(s),
            marks=[pytest.mark.slow] if (python_setup(s) and python_setup(s).slow) else [],
        )
        for s in PYTHON
    ]


def declared_modules() -> set[str]:
    """The top-level modules of the distributions pyproject.toml asks for, extras included."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    wanted = {
        re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }
    return {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if any(d.lower().replace("_", "-") in wanted for d in distributions)
    } | {"segfw"}


@pytest.mark.parametrize("snippet", python_params())
def test_python_snippet(snippet: Snippet, request, monkeypatch, capsys):
    setup = python_setup(snippet)
    code = substitute(snippet.text)
    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    undeclared = imported - declared_modules() - set(sys.stdlib_module_names)
    assert not undeclared, f"{snippet} imports {undeclared}, which pyproject.toml does not ask for"
    for old, new in (setup.shrink or {}).items():
        assert old in code, f"{snippet}: PYTHON_SNIPPETS shrinks {old!r}, which it no longer holds"
        code = code.replace(old, new)
    request.getfixturevalue(setup.fixture)
    monkeypatch.chdir(request.getfixturevalue("workspace"))
    names = setup.names() if setup.names else {}
    exec(compile(code, str(snippet), "exec"), names)
    setup.check(names, capsys.readouterr().out)


# --- names the pages give ------------------------------------------------------------------------

PATH_NAME = re.compile(r"(?<!\w)(?:segfw|conf|tests|bench|docs)/[\w./<>*-]*")
PYTHON_NAME = re.compile(r"segfw(?:\.\w+)+")
NOT_PYTHON_NAMES = {"segfw.json": "the metadata file a TorchScript export carries"}


def quoted(pattern: re.Pattern) -> list[tuple[str, str]]:
    found = []
    for path in PAGES:
        for span in INLINE.findall(without_fences(path.read_text())):
            found += [(path.name, name) for name in pattern.findall(span)]
    return found


def test_files_the_docs_name_exist():
    missing = []
    for page, name in quoted(PATH_NAME):
        pattern = re.sub(r"<[^>]*>", "*", name.rstrip("."))
        if not list(ROOT.glob(pattern)) and not (ROOT / pattern).exists():
            missing.append(f"{page}: {name}")
    assert not missing, "\n".join(missing)


def test_python_names_the_docs_give_exist():
    missing = []
    for page, name in quoted(PYTHON_NAME):
        if name in NOT_PYTHON_NAMES:
            continue
        parts, obj = name.split("."), None
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attribute in parts[i:]:
                obj = getattr(obj, attribute, None)
            break
        if obj is None:
            missing.append(f"{page}: {name}")
    assert not missing, "\n".join(missing)


def test_the_configuration_tour_lists_every_option():
    """README's "Configuration tour": each config group's row names every option of segfw/conf/."""
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", (ROOT / "README.md").read_text(), re.M)
    groups = {group: cell for group, cell in rows if (CONF / group).is_dir() and group != "hydra"}
    assert len(groups) >= 10
    for group, cell in groups.items():
        listed = {name for name in INLINE.findall(cell) if re.fullmatch(r"\w+", name)}
        assert listed == {path.stem for path in (CONF / group).glob("*.yaml")}, group


# --- pages written from templates ----------------------------------------------------------------

# A template's {{NAME}} left in a page: its text was never filled in. Hydra's interpolations
# (${...}, $${oc.env:...}) are lowercase or dollar-led and do not match.
UNRENDERED = re.compile(r"(?<!\$)\{\{[A-Z_]+\}\}")


def test_no_page_holds_an_unrendered_placeholder():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {placeholder}"
        for path in PAGES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for placeholder in UNRENDERED.findall(line)
    ]
    assert not found, "\n".join(found)


@pytest.mark.slow  # builds all 77 networks: about a minute on 2 CPU cores
def test_the_zoo_table_is_what_the_listing_prints():
    """docs/models.md's parameter counts are ``python -m segfw.models``'s output, verbatim."""
    text = (ROOT / "docs" / "models.md").read_text()
    section = text.split("## Coverage and parameter counts", 1)[1]
    quoted_block = FENCE.search(section).group(2)
    # Its own process: the listing builds on one thread (four times faster), which in this process
    # would stay set for the tests after it.
    listing = subprocess.run(
        [sys.executable, "-m", "segfw.models"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert quoted_block == listing.stdout
