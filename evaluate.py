"""Score a checkpoint on a split.  python evaluate.py ckpt_path=PATH [split=test]"""

import hydra
from omegaconf import DictConfig

from segfw.commands.run import run_task
from segfw.commands.tasks import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
