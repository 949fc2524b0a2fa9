"""Checked lookups and argument checks, shared by every config value that names one of a set
(architectures, backbones, losses, modes, ...): one message style for every wrong name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar, overload

from segfw.errors import ConfigError

T = TypeVar("T")


@overload
def choose(options: Mapping[Any, T], value: Any, key: str, why: str | None = None) -> T: ...


@overload
def choose(options: Collection[T], value: Any, key: str, why: str | None = None) -> T: ...


def choose(options: Collection[Any], value: Any, key: str, why: str | None = None) -> Any:
    """``options[value]`` for a table, ``value`` itself for any other collection of choices.

    Args:
        options: a table (name -> thing) or the allowed values.
        value: the value given in the config.
        key: the config key it was given under, for the message (e.g. ``model.name``).
        why: the reason the choices are limited, for the message; ``None`` for plain names.

    Raises:
        ConfigError: ``value`` is not one of ``options``; the message lists them.
    """
    # bool is an int in Python: model.output_stride=true must not pass for 1.
    mistaken_bool = isinstance(value, bool) and not any(isinstance(o, bool) for o in options)
    try:
        known = not mistaken_bool and value in options
    except TypeError:  # an unhashable value (a list) is no name
        known = False
    if not known:
        # Booleans as a config file writes them.
        listing = ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options)
        head = f"{key}={value!r} is not supported: {why}" if why else f"Unknown {key}={value!r}"
        raise ConfigError(f"{head}. Choose one of: {listing}.") from None
    return options[value] if isinstance(options, Mapping) else value


def check_arguments(
    function: Callable[..., Any],
    given: Iterable[str],
    key: str,
    skip: int = 0,
    also: Iterable[str] = (),
) -> None:
    """Raises a ConfigError if ``given`` holds a name that ``function`` does not take.

    Args:
        function: the callable the arguments go to.
        given: argument names from the config.
        key: the config key they sit under, for the message (e.g. ``model``).
        skip: leading positional parameters filled by segfw, not by the config.
        also: names the config section takes besides ``function``'s (``model.height``, read by
            segfw itself), listed first among the accepted ones.
    """
    parameters = inspect.signature(function).parameters.values()
    accepted = [*also, *(p.name for p in list(parameters)[skip:] if p.kind != p.VAR_KEYWORD)]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{key} has no setting {', '.join(f'{key}.{u}' for u in unknown)}; "
            f"it takes {', '.join(f'{key}.{a}' for a in accepted) or 'none'}."
        )
