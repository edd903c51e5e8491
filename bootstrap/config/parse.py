"""Reading one variable: numbers, choices and flags, each failure one clear message.

Pure functions of a mapping. A message names the variable, what it holds and what it
should hold, so the user can fix the job definition without reading code.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError


def text(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value without surrounding blanks; None when unset or blank."""
    return env.get(name, "").strip() or None


def first(env: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` that holds a value (raw, not stripped), else None."""
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float,
            integer: bool) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}; set it to {kind} >= {minimum:g} "
                          f"or unset it for the default ({default:g})") from None
    if value < minimum or value != value:  # NaN compares unequal to itself
        raise ConfigError(f"{name}={raw!r} is below the minimum {minimum:g}; "
                          f"unset it for the default ({default:g})")
    return value


def integer(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return int(_number(env, name, default, minimum=minimum, integer=True))


def number(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    return _number(env, name, default, minimum=minimum, integer=False)


def choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name}={env[name]!r} is not one of {', '.join(choices)}")
    return raw


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a yes/no value; use 1 or 0")
