"""Score a checkpoint on a split.  python evaluate.py ckpt_path=PATH [split=test]"""

import sys

import hydra
from omegaconf import DictConfig

from segfw.commands.evaluate import evaluate
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import run_command


@hydra.main(version_base="1.3", config_path="segfw/conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_command(evaluate, cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("evaluate", sys.argv[1:])
    main()
