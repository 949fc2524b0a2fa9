"""python -m segfw.report <run or sweep dir>: see segfw/report/cli.py."""

from segfw.report.cli import main

raise SystemExit(main())
