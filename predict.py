"""Predict masks for images.  python predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR

The same command as ``segfw-predict`` once segfw is installed: both run ``segfw.commands.predict.main``."""

from segfw.commands.predict import main

if __name__ == "__main__":
    main()
