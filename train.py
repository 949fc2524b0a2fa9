"""Train a segmentation model.  python train.py [group=option ...] [key=value ...]"""

import hydra
from omegaconf import DictConfig

from segfw.cli import run_task
from segfw.tasks import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    # A sweeper (hparams_search) optimizes the value returned here.
    return metrics.get(cfg.get("optimized_metric", "val/mIoU"))


if __name__ == "__main__":
    main()
