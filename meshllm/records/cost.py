"""Usage priced (DESIGN.md §7b): cloud models by their price table, local ones by energy.

A cloud model (``openai:gpt-4o``) costs its list price per token: the table shipped in
``prices.toml``, overlaid by the user's ``--price-file``.  A model served by a node of
the mesh costs the energy it used (:func:`energy_joules`), at the price of a kWh when
one is configured.  Otherwise the cost is unknown (None), never 0: a figure of 0 would
read as "free".

Table prices are in USD; energy costs are in :attr:`EnergyPrice.currency`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from meshllm.cloud import PROVIDER_NAMES
from meshllm.errors import ConfigError

MAX_PRICE_FILE_BYTES = 1 << 20  # the shipped table is ~3 kB; a larger file is a mistake
TOKENS_PER_MTOK = 1_000_000
JOULES_PER_KWH = 3.6e6
TABLE_CURRENCY = "USD"
SHIPPED_TABLE = "prices.toml"  # beside this module (package data)
PRICE_FIELDS = frozenset({"input_per_mtok", "output_per_mtok"})

PRICE_TABLE = "price_table"
ENERGY = "energy"
MAX_GPU_WATTS = 10_000.0  # a GPU's reported draw beyond this is a sensor's nonsense


@dataclass(frozen=True)
class Price:
    """A model's list price, in USD per 1M tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """What ``tokens_in`` prompt and ``tokens_out`` answer tokens cost, in USD."""
        input_cost = tokens_in * self.input_per_mtok / TOKENS_PER_MTOK
        output_cost = tokens_out * self.output_per_mtok / TOKENS_PER_MTOK
        return input_cost + output_cost


@dataclass(frozen=True)
class EnergyPrice:
    """What a kWh costs the mesh's owner."""

    price_kwh: float
    currency: str = "USD"

    def __post_init__(self) -> None:
        if not _is_price(self.price_kwh):
            raise ConfigError(f"energy price must be a number >= 0, not {self.price_kwh!r}")


@dataclass(frozen=True)
class PriceTable:
    """Cloud models' prices by name (``provider:model`` or bare)."""

    models: Mapping[str, Price]

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The shipped table, overlaid entry by entry by the file at ``path`` when given.

        Raises :class:`~meshllm.errors.ConfigError` for a file that cannot be read, is
        too large, or is not a price table."""
        shipped = resources.files(__package__).joinpath(SHIPPED_TABLE).read_text("utf-8")
        models = parse_prices(shipped, f"shipped {SHIPPED_TABLE}")
        if path is not None:
            models.update(parse_prices(_read_price_file(path), f"price file {path}"))
        return cls(models)

    def price(self, model: str) -> Price | None:
        """``model``'s price: its own entry, else the entry of its name without the
        provider prefix (``openai:gpt-4o`` → ``gpt-4o``); None when it has neither."""
        price = self.models.get(model)
        if price is None:
            provider, colon, bare = model.partition(":")
            if colon and provider in PROVIDER_NAMES:
                price = self.models.get(bare)
        return price


def parse_prices(text: str, source: str) -> dict[str, Price]:
    """The ``[models."NAME"]`` tables of a price file; ``source`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"models"}
    if unknown:
        raise ConfigError(f'{source}: unknown key {min(unknown)!r} (expected [models."NAME"])')
    entries = doc.get("models", {})
    if not isinstance(entries, dict):
        raise ConfigError(f'{source}: "models" must be a table of [models."NAME"] tables')
    return {name: _price(entry, f"{source}: model {name!r}") for name, entry in entries.items()}


def _price(entry: Any, where: str) -> Price:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table with {' and '.join(sorted(PRICE_FIELDS))}")
    if set(entry) != PRICE_FIELDS:
        odd = sorted(set(entry) ^ PRICE_FIELDS)
        raise ConfigError(f"{where}: needs exactly {sorted(PRICE_FIELDS)}, check {odd}")
    for key, value in entry.items():
        if not _is_price(value):
            raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}")
    return Price(float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))


def _is_price(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _read_price_file(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PRICE_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"price file {path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_PRICE_FILE_BYTES:
        raise ConfigError(f"price file {path}: larger than {MAX_PRICE_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"price file {path}: not UTF-8 text") from None


def serving_watts(host: Mapping[str, Any] | None, cpu_watts: float) -> float | None:
    """The power a node draws serving models, from its ``host`` resources (as
    :func:`meshllm.resources.host_resources` reads them): its GPUs' measured draw (NVML)
    when it reports any, else ``cpu_watts`` (a configured figure; 0: unknown, None)."""
    gpus = (host or {}).get("gpus") or []
    measured = [
        g["power_w"]
        for g in gpus
        if isinstance(g, Mapping)
        and isinstance(g.get("power_w"), int | float)
        and not isinstance(g.get("power_w"), bool)
        and 0 <= g["power_w"] < MAX_GPU_WATTS
    ]
    if measured:
        return float(sum(measured))
    return float(cpu_watts) if cpu_watts > 0 else None


def energy_joules(watts: float, seconds: float, sharing: int) -> float:
    """The energy one request used: its serving node's power draw (``watts``) over the
    request's serving time, split among the ``sharing`` requests it served at once
    (counted as 1 when below 1: the request itself was being served)."""
    if watts < 0 or seconds < 0:
        raise ValueError(f"power and time must be >= 0, not {watts} W for {seconds} s")
    return watts * seconds / max(sharing, 1)


def request_cost(
    *,
    model: str,
    tokens_in: int,
    tokens_out: int,
    energy_j: float | None,
    prices: PriceTable,
    energy: EnergyPrice | None,
) -> float | None:
    """What a request (or a group of them) cost: by the price table when ``model`` is in
    it (USD), else by its energy when both it and a kWh price are known (in
    ``energy.currency``), else None."""
    priced = _cost(model, tokens_in, tokens_out, energy_j, prices, energy)
    return priced[0] if priced else None


def _cost(
    model: str,
    tokens_in: int,
    tokens_out: int,
    energy_j: float | None,
    prices: PriceTable,
    energy: EnergyPrice | None,
) -> tuple[float, str, str] | None:
    """(cost, source, currency), or None when unknown."""
    price = prices.price(model)
    if price is not None:
        return price.cost(tokens_in, tokens_out), PRICE_TABLE, TABLE_CURRENCY
    if energy_j is not None and energy is not None:
        return energy_j / JOULES_PER_KWH * energy.price_kwh, ENERGY, energy.currency
    return None


def summarize(
    groups: list[dict[str, Any]], prices: PriceTable, energy: EnergyPrice | None
) -> list[dict[str, Any]]:
    """Usage groups (as a history store sums them: ``key_id``, ``model``, ``requests``,
    ``errors``, ``tokens_in``, ``tokens_out``, ``energy_j``, ``latency_ms_sum``…) with
    their cost added: ``cost``, ``cost_per_request``, ``cost_per_mtok`` (per 1M tokens in
    and out), ``cost_source`` ("price_table", "energy" or None), ``currency`` and
    ``energy_kwh``.  Unknown figures are None.  The groups are not modified."""
    rows = []
    for group in groups:
        tokens_in = group.get("tokens_in") or 0
        tokens_out = group.get("tokens_out") or 0
        requests = group.get("requests") or 0
        energy_j = group.get("energy_j")
        priced = _cost(group.get("model") or "", tokens_in, tokens_out, energy_j, prices, energy)
        cost, source, currency = priced if priced else (None, None, None)
        tokens = tokens_in + tokens_out
        rows.append(
            {
                **group,
                "cost": cost,
                "cost_per_request": cost / requests if cost is not None and requests else None,
                "cost_per_mtok": cost * TOKENS_PER_MTOK / tokens
                if cost is not None and tokens
                else None,
                "cost_source": source,
                "currency": currency,
                "energy_kwh": energy_j / JOULES_PER_KWH if energy_j is not None else None,
            }
        )
    return rows
