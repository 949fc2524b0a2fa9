"""Train a segmentation model.  python train.py [group=option ...] [key=value ...]"""

import warnings

import hydra
from omegaconf import DictConfig

from segfw.commands.run import run_task
from segfw.commands.tasks import train

# conf/hydra/launcher/submitit_*.yaml share their names with the plugin's configs on purpose, so
# that Hydra checks their keys against the plugin's schema; Hydra warns about that pairing.
warnings.filterwarnings("ignore", r"\s*'hydra/launcher/submitit_.*ConfigStore schema", UserWarning)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = run_task(train, cfg)
    # A sweeper (hparams_search) optimizes the value returned here.
    name = cfg.get("optimized_metric", "val/mIoU")
    if name not in metrics:
        # SystemExit, not an exception: in a sweep the name is wrong for every trial, so the sweep
        # must end here rather than record one failed trial after another.
        known = ", ".join(sorted(k for k in metrics if k.count("/") == 1))
        raise SystemExit(f"optimized_metric={name!r} is not among the run's metrics: {known}.")
    return metrics[name]


if __name__ == "__main__":
    main()
