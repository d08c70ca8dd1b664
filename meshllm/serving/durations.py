"""``keep_alive`` durations as Ollama accepts them (pure).

A request's ``keep_alive`` (Ollama ``api.Duration.UnmarshalJSON``) is either a
number of seconds or a Go duration string (``time.ParseDuration``): ``"90s"``,
``"15m"``, ``"1h30m"``, ``"1.5h"``, ``"300ms"``.  Zero means "unload right after
the request"; any negative value means "never unload".  Like Ollama's
``OLLAMA_KEEP_ALIVE`` we also take a plain number written as a string
(``"300"``, ``"-1"``) as seconds.

Go's grammar is ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+``, or the bare ``"0"``: every
number carries a unit, units are ``ns us µs μs ms s m h``, and a sign may only
lead (``"1h-2m"`` is not a duration).
"""

from __future__ import annotations

import math
import re

# Seconds per unit of a Go duration (time.ParseDuration's unitMap).
UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC Greek small letter mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
# One "<number><unit>" component; the number needs a digit before or after the dot.
_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([^\d.]+)")
_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)[^\d.]+)+")

_HINT = 'use seconds (300), a Go duration ("90s", "15m", "1h30m") or a negative value for never'


def duration(value: str | float, what: str = "duration") -> float | None:
    """Seconds in ``value``, a keep_alive: ``None`` for never (negative), ``0.0`` for
    right away.  Raises ValueError naming ``what`` when ``value`` is not a duration
    (a bool, NaN, an empty string, an unknown unit, a number without a unit)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} {value!r} is not a duration: {_HINT}")
    if isinstance(value, str):
        seconds = _parse_string(value.strip(), what)
    else:
        seconds = float(value)
        if math.isnan(seconds):
            raise ValueError(f"{what} {value!r} is not a duration: {_HINT}")
    if seconds < 0 or math.isinf(seconds):
        return None
    return seconds or 0.0  # "-0" and "-0s" are zero, not negative zero


def _parse_string(text: str, what: str) -> float:
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a duration: {_HINT}")
    sign = -1.0 if text.startswith("-") else 1.0
    total = 0.0
    for number, unit in _COMPONENT.findall(text.lstrip("+-")):
        scale = UNIT_SECONDS.get(unit)
        if scale is None:
            known = ", ".join(UNIT_SECONDS)
            raise ValueError(f"{what} {text!r}: unknown unit {unit!r} (one of {known})")
        total += float(number) * scale
    return sign * total


_PERIOD = re.compile(r"(?:\d+(?:\.\d*)?[smhdw])+")
_PERIOD_PART = re.compile(r"(\d+(?:\.\d*)?)([smhdw])")
PERIOD_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def period(text: str) -> float | None:
    """Seconds in a span of time such as ``90s``, ``1h30m``, ``7d`` or ``2w`` (days and
    weeks too, unlike a keep_alive), or None when ``text`` is not one."""
    text = text.strip()
    if not _PERIOD.fullmatch(text):
        return None
    return sum(float(n) * PERIOD_UNIT_SECONDS[unit] for n, unit in _PERIOD_PART.findall(text))
