"""Export a checkpoint.  python export.py ckpt_path=PATH format=onnx|torchscript output=DIR"""

import logging

import hydra
from omegaconf import DictConfig

from segfw.errors import ConfigError
from segfw.inference.export import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except ConfigError as error:
        # Bad input ends the program with its message, not a traceback (as segfw.commands.run does).
        logging.getLogger("segfw").error("%s", error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
