"""Train a segmentation model.  python train.py [group=option ...] [key=value ...]

The same command as ``segfw-train`` once segfw is installed: both run ``segfw.commands.train.main``."""

from segfw.commands.train import main

if __name__ == "__main__":
    main()
