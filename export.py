"""Export a checkpoint.  python export.py ckpt_path=PATH format=onnx|torchscript output=DIR"""

import sys

import hydra
from omegaconf import DictConfig

from segfw.commands.export import export
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import run_command


@hydra.main(version_base="1.3", config_path="segfw/conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_command(export, cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("export", sys.argv[1:])
    main()
