"""The pool's settings as people write them: ``--ttl``, ``--memory-budget``,
``--model-ports`` and the per-model config file (``--model-config``).  Pure parsing;
each function raises :class:`~meshllm.errors.ConfigError` naming the setting.

The per-model file is TOML, one table per model::

    [models."gemma-3-270m-q4_k_m"]
    ttl = "1h"      # as --ttl: a duration, 0 = never unload for idleness
    pin = true      # as --pin: load at start and keep loaded
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshllm.errors import ConfigError
from meshllm.serving.durations import duration

_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_PORTS = re.compile(r"(\d{1,5})-(\d{1,5})")
MAX_CONFIG_BYTES = 1 << 20  # a model config file larger than this is refused


def parse_ttl(text: str | float, what: str = "--ttl") -> float | None:
    """Seconds an idle model stays loaded; None: never (``0`` or a negative value, as
    llama-swap's ``ttl: 0``; unlike a request's keep_alive, where 0 unloads at once)."""
    try:
        seconds = duration(text, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return seconds if seconds else None


def ttl_as_keep_alive(ttl: float | None) -> float:
    """A ``--ttl`` value in keep_alive terms (where "never" is negative)."""
    return -1.0 if ttl is None else ttl


def parse_bytes(text: str, what: str = "--memory-budget") -> int | None:
    """``"auto"`` (None: the caller measures), or a size: ``8000000000``, ``8G``, ``8GiB``,
    ``512M`` (K/M/G/T are powers of 1000, with ``i`` of 1024)."""
    text = text.strip()
    if text.lower() == "auto":
        return None
    match = _BYTES.fullmatch(text)
    if match is None:
        raise ConfigError(f"{what} {text!r}: use auto, bytes (8000000000) or a size (8G, 8GiB)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    scale = 1024 ** ("kmgt".index(unit[0]) + 1) if unit.endswith("i") else _SCALE[unit]
    return int(float(match.group(1)) * scale)


def parse_port_range(text: str, what: str = "--model-ports") -> tuple[int, int] | None:
    """``"START-END"`` (inclusive), or "" for ports the OS picks."""
    text = text.strip()
    if not text:
        return None
    match = _PORTS.fullmatch(text)
    if match is None:
        raise ConfigError(f"{what} {text!r}: use START-END, e.g. 41000-41099")
    start, end = int(match.group(1)), int(match.group(2))
    if not 1024 <= start <= end <= 65535:
        raise ConfigError(f"{what} {text!r}: ports 1024-65535, start <= end")
    return start, end


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """One model's own settings from the config file."""

    ttl: float | None = None  # keep_alive terms: negative never; None: the node's --ttl
    pin: bool = False


def load_model_config(path: Path | None) -> dict[str, ModelSettings]:
    """The per-model settings in ``path`` (none: empty)."""
    if path is None:
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--model-config {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--model-config {path}: over {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--model-config {path}: {exc}") from None
    if unknown := sorted(set(data) - {"models"}):
        raise ConfigError(f"--model-config {path}: unknown table(s) {', '.join(unknown)}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"--model-config {path}: [models] must be a table of models")
    return {name: _model(path, name, table) for name, table in models.items()}


def _model(path: Path, name: str, table: Any) -> ModelSettings:
    where = f"--model-config {path}: models.{name}"
    if not isinstance(table, dict) or not set(table) <= {"ttl", "pin"}:
        raise ConfigError(f"{where}: a table with ttl and/or pin")
    pin = table.get("pin", False)
    if not isinstance(pin, bool):
        raise ConfigError(f"{where}.pin must be true or false")
    ttl = None
    if "ttl" in table:
        ttl = ttl_as_keep_alive(parse_ttl(table["ttl"], f"{where}.ttl"))
    return ModelSettings(ttl=ttl, pin=pin)
