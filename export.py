"""Export a checkpoint.  python export.py ckpt_path=PATH format=onnx|torchscript output=DIR"""

import hydra
from omegaconf import DictConfig

from segfw.commands.export import export
from segfw.commands.run import run_command


@hydra.main(version_base="1.3", config_path="segfw/conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_command(export, cfg)


if __name__ == "__main__":
    main()
