"""Name tables with checked lookups, shared by every ``name:``-keyed config (models, losses, ...)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from segfw.errors import ConfigError

T = TypeVar("T")


def choose(table: Mapping[str, T], name: str, key: str) -> T:
    """``table[name]``, or a ConfigError naming ``key`` and listing the choices."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown {key}={name!r}. Choose one of: {', '.join(table)}.") from None


def check_arguments(
    function: Callable[..., Any], given: Iterable[str], key: str, skip: int = 0
) -> None:
    """Raises a ConfigError if ``given`` holds a name that ``function`` does not take.

    Args:
        function: the callable the arguments go to.
        given: argument names from the config.
        key: the config key they sit under, for the message (e.g. ``model``).
        skip: leading positional parameters filled by segfw, not by the config.
    """
    accepted = list(inspect.signature(function).parameters)[skip:]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{key} has no setting {', '.join(f'{key}.{u}' for u in unknown)}; "
            f"it takes {', '.join(f'{key}.{a}' for a in accepted) or 'none'}."
        )
