"""Importing segfw leaves the process's warning filters alone: a filter set at import would hide
warnings from the user's own code too, for as long as the process runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segfw"

# Imports the modules segfw imports from other packages first (several set filters at their own
# import: torch, numpy, Lightning), then every module of segfw, and prints the filters each of
# those added.
SCRIPT = """
import importlib, json, sys, warnings
dependencies, modules = json.loads(sys.argv[1])
for name in dependencies:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # ``from package import name`` of a name that is not a module
before = list(warnings.filters)
added = {}
for name in modules:
    importlib.import_module(name)
    new = [repr(f) for f in warnings.filters if f not in before]
    if new:
        added[name] = new
        before = list(warnings.filters)
print(json.dumps(added))
"""


def _modules() -> list[str]:
    """segfw's modules; its ``__main__`` modules aside, whose import runs them."""
    paths = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in paths]
    return [n.removesuffix(".__init__") for n in names]


def _dependencies() -> list[str]:
    """The modules of other packages that segfw's modules import, and the names they import
    from them (which may be modules too)."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(n for n in found if n.split(".")[0] not in ("segfw", "__future__"))


def test_importing_every_segfw_module_adds_no_warning_filter():
    modules = _modules()
    assert "segfw.data.datamodule" in modules and "segfw.lightning_compat" in modules
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([_dependencies(), modules])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}
