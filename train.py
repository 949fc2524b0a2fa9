"""Train a segmentation model.  python train.py [group=option ...] [key=value ...]"""

import importlib.util
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import run_command
from segfw.commands.train import train

# segfw/conf/hydra/launcher/submitit_*.yaml share their names with the plugin's configs on purpose, so
# that Hydra checks their keys against the plugin's schema; Hydra warns about that pairing.
warnings.filterwarnings("ignore", r"\s*'hydra/launcher/submitit_.*ConfigStore schema", UserWarning)

# Options that need the extra segfw[sweep] (pyproject.toml), with the modules it brings for each:
# without them Hydra fails while composing, in a traceback that names no package to install.
SWEEP_EXTRA = {
    "hparams_search=optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
}


def require_sweep_extra(args: list[str]) -> None:
    """Ends the program with the install command when an option among ``args`` needs the sweep
    extra and it is not installed."""
    for arg in args:
        for module in SWEEP_EXTRA.get(arg.lstrip("+"), ()):
            try:
                installed = importlib.util.find_spec(module) is not None
            except ImportError:  # its parent package (hydra_plugins) is missing too
                installed = False
            if not installed:
                sys.exit(
                    f"{arg} needs the sweep extra ({module} is not installed): "
                    "pip install -e '.[sweep]' in a clone, or pip install 'segfw[sweep]'"
                )


def rank_overrides(args: list[str]) -> list[str]:
    """For a process other than the first of a run whose processes torchrun or srun started,
    the Hydra overrides that keep it from writing the run dir's ``.hydra/`` and ``train.log``
    again: its log goes to ``train_ddp_process_<rank>.log``, as Lightning's own relaunched
    processes do (it passes these overrides itself, so they are left alone when present)."""
    rank = int(os.environ.get("RANK") or 0)
    if not rank and int(os.environ.get("SLURM_NTASKS") or 1) > 1:
        rank = int(os.environ.get("SLURM_PROCID") or 0)
    if not rank or any(a.startswith("hydra.output_subdir=") for a in args):
        return []
    return [
        "hydra.output_subdir=null",
        # The log file is <run dir>/<job name>.log (Hydra's job_logging), as Lightning names it.
        f"hydra.job.name=train_ddp_process_{rank}",
    ]


@hydra.main(version_base="1.3", config_path="segfw/conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_command(train, cfg)
    # A sweeper (hparams_search) optimizes the value returned here; train checked the name.
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    require_sweep_extra(sys.argv[1:])
    exit_on_unknown_keys("train", sys.argv[1:])
    sys.argv += rank_overrides(sys.argv[1:])
    main()
