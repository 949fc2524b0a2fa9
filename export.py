"""Export a checkpoint.  python export.py ckpt_path=PATH format=onnx|torchscript output=DIR

The same command as ``segfw-export`` once segfw is installed: both run ``segfw.commands.export.main``."""

from segfw.commands.export import main

if __name__ == "__main__":
    main()
