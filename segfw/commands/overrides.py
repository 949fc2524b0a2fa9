"""Command-line overrides checked before Hydra runs: a key that is not in the config is named with
the keys that are, instead of Hydra's bare "Key 'x' is not in struct".

Hydra reports an unknown key only as the key's last part; a user who typed
``data.augment.hflipp=true`` needs to see ``hflip`` among the valid keys of ``data.augment``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from segfw.commands.run import CONF
from segfw.errors import ConfigError

# Overrides about Hydra itself, its runtime and its sweeper: Hydra checks those on its own.
HYDRA_KEYS = ("hydra.", "hydra/")


def unknown_key(cfg: DictConfig, key: str, config_dirs: Sequence[Path]) -> str | None:
    """The message for ``key`` (a dotted path) when ``cfg`` has no such key, else ``None``."""
    parts = key.split(".")
    node: object = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None  # a value inside a list or a plain value: Hydra's own check applies
        keys = [str(k) for k in node]  # `in` would miss a key whose value is ??? (missing)
        if part not in keys:
            parent = ".".join(parts[:depth])
            if depth == 0 and _is_group(part, config_dirs):
                options = sorted({p.stem for d in config_dirs for p in (d / part).glob("*.yaml")})
                return (
                    f"{key}: the config group {part!r} has no option selected in this run; select "
                    f"one to set its keys ({part}=<option>, options: {', '.join(options)})"
                )
            valid = sorted(keys)
            close = difflib.get_close_matches(part, valid, n=1)
            hint = f" Did you mean {'.'.join([*parts[:depth], close[0]])}?" if close else ""
            where = f"'{parent}'" if parent else "the top level"
            return (
                f"{key}: {part!r} is not a key of {where}.{hint} Valid keys: {', '.join(valid)}. "
                f"To add a new key on purpose, write +{key}=..."
            )
        if OmegaConf.is_missing(node, part):
            return None  # a required value (???): no keys below it to check
        node = node[part]
    return None


def _is_group(name: str, config_dirs: Sequence[Path]) -> bool:
    return any((directory / name).is_dir() for directory in config_dirs)


def check_overrides(
    config_dir: Path,
    config_name: str,
    overrides: Sequence[str],
    user_config_dir: Path | None = None,
) -> None:
    """Raises ConfigError naming every override whose key is not in the composed config.

    The config is composed with the overrides that choose config groups (the first value of a
    ``-m`` sweep), then each ``key=value`` override is looked up in it; ``+key``, ``++key``,
    ``~key`` and ``hydra.*`` overrides are left to Hydra. ``user_config_dir`` is layered on
    ``config_dir`` as ``--config-dir`` does.
    """
    config_dirs = [config_dir] + ([user_config_dir] if user_config_dir is not None else [])
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups, keys = [], []
    for override in parsed:
        name = override.key_or_group
        if name.startswith(HYDRA_KEYS) or override.is_add() or override.is_delete():
            continue
        if override.is_force_add() or override.package:
            continue
        if _is_group(name, config_dirs):
            if override.is_sweep_override():
                # a choice sweep of options; its first is enough to learn the keys
                value = next(iter(override.sweep_string_iterator()), None)
            else:
                value = override.get_value_element_as_str()
            if value is not None:
                groups.append(f"{name}={value}")
        else:
            keys.append(name)
    if not keys:
        return
    if user_config_dir is not None:
        groups.append(f"hydra.searchpath=[file://{user_config_dir.resolve()}]")
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=groups)
    OmegaConf.set_struct(cfg, False)
    problems = [m for k in keys if (m := unknown_key(cfg, k, config_dirs)) is not None]
    if problems:
        raise ConfigError("\n".join(problems))


def exit_on_unknown_keys(config_name: str, argv: Sequence[str]) -> None:
    """For an entry script, given its command line (``sys.argv[1:]``): ends the program with the
    message of ``check_overrides``. Errors Hydra names well itself (a missing option, a bad
    override syntax) are left to Hydra's own report, which follows."""
    # Hydra's own command-line parser, so that -m, --config-dir and the rest read as Hydra reads them
    args, _ = get_args_parser().parse_known_args(list(argv))
    user_dir = Path(args.config_dir) if args.config_dir else None
    try:
        check_overrides(CONF, args.config_name or config_name, args.overrides, user_dir)
    except ConfigError as error:
        raise SystemExit(f"Bad override: {error}") from None
    except HydraException:
        return
