"""Score a checkpoint on a split.  python evaluate.py ckpt_path=PATH [split=test]

The same command as ``segfw-evaluate`` once segfw is installed: both run ``segfw.commands.evaluate.main``."""

from segfw.commands.evaluate import main

if __name__ == "__main__":
    main()
