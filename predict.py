"""Predict masks for images.  python predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR"""

import sys

import hydra
from omegaconf import DictConfig

from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.predict import predict
from segfw.commands.run import run_command


@hydra.main(version_base="1.3", config_path="segfw/conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_command(predict, cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("predict", sys.argv[1:])
    main()
