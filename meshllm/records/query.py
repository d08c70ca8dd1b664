"""History and usage queries (pure): their parsing, the mesh-wide merge, CSV.

A client asks ``/history`` or ``/usage`` with query parameters; ``parse_history_query``
and ``parse_usage_query`` turn them into a frozen query or a ``ValueError`` whose
one-line message becomes a 400.  Times are Unix seconds, ISO 8601 (UTC unless it
names a zone) or a duration back from ``now`` (``"90s"``, ``"15m"``, ``"1h30m"``,
``"7d"``).

History is paged newest first, by ``(time, request_id)``: a page's cursor names
its last row, and the next page holds the rows strictly older than it.

Merging (``merge_history``): each node answers for the rows it recorded, so a
request that entered one node and was served by another comes back twice, a
``routed`` row from its entry node and a ``served`` row from its serving node, with
one ``request_id``.  They become one row: the routed row, completed with the
serving node's facts it lacks (tokens, energy, prompt and answer), and
``seen_by`` naming both nodes.  The merged page holds only rows that every node's
page covers: a node whose page was full may have older rows it did not send, so
the merge stops at the oldest row of the fullest such page and the cursor resumes
from there.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meshllm.records.record import PRIVATE_FIELDS, RECORD_FIELDS, RecordKind
from meshllm.serving.durations import period

DEFAULT_LIMIT = 100  # rows in a history page when the client names no limit
MAX_LIMIT = 1000  # rows in one page at most: bounds a node's answer and the merge's work
MAX_PARAM_CHARS = 200  # a query parameter's length at most (model names, ids, search text)
MAX_NAMES_SHOWN = 5  # unknown parameters an error names, so a hostile query can't bloat it
MAX_NAME_SHOWN = 40  # characters of each unknown parameter's name an error shows
DEFAULT_USAGE_PERIOD_S = 24 * 3600.0  # usage covers the last day unless ``since`` says
USAGE_BUCKETS_S = (60, 3600, 86400)  # usage per minute, hour or day
CSV_FIELDS = (*(f for f in RECORD_FIELDS if f not in PRIVATE_FIELDS), "seen_by")
"""The CSV header, in order; ``prompt`` and ``answer`` follow when a row has either."""
CSV_PROMPT_FIELDS = PRIVATE_FIELDS

# The serving node's facts a routed row takes from the served row when it lacks them.
SERVING_FACTS: dict[str, Any] = {
    "tokens_in": 0,
    "tokens_out": 0,
    "energy_j": None,
    "prompt": None,
    "answer": None,
}
USAGE_SUMS = ("requests", "errors", "tokens_in", "tokens_out", "energy_j", "latency_ms_sum")

HISTORY_PARAMS = frozenset(
    {"model", "node", "key", "status", "since", "until", "search", "limit", "cursor", "kind"}
)
USAGE_PARAMS = frozenset({"model", "key", "since", "until", "bucket"})
BUCKET_NAMES = {"minute": 60, "hour": 3600, "day": 86400}

_STATUS_CODE = re.compile(r"[1-5]\d\d")
_STATUS_CLASS = re.compile(r"([1-5])xx")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's CSV injection list
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{1,400}")
_TIME_HINT = 'use Unix seconds, ISO 8601 ("2025-01-31T12:00:00Z") or a duration ago ("15m", "7d")'


@dataclass(frozen=True)
class HistoryQuery:
    """Which history rows a client wants: every filter set is ANDed."""

    model: str | None = None
    node: str | None = None
    """Rows whose entry or serving node is this one."""
    key: str | None = None
    """The API key's id (``key_id``)."""
    status: str | None = None
    """``"200"``, ``"4xx"``, ``"5xx"``, ``"error"`` (>= 400) or ``"ok"`` (< 400)."""
    since: float | None = None
    """Rows at or after this time (Unix seconds)."""
    until: float | None = None
    """Rows before this time (Unix seconds)."""
    search: str | None = None
    """A substring of the model, path, error or request id (ASCII case ignored)."""
    limit: int = DEFAULT_LIMIT
    before: tuple[float, str] | None = None
    """The cursor: only rows strictly older than this ``(time, request_id)``."""
    kind: RecordKind | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit {self.limit} is out of range: use 1 to {MAX_LIMIT}")
        if self.status is not None:
            status_bounds(self.status)


@dataclass(frozen=True)
class UsageQuery:
    """Which usage a client wants: requests in [since, until), grouped by key and model."""

    since: float | None = None
    until: float | None = None
    model: str | None = None
    key: str | None = None
    bucket_s: int | None = None
    """Also group by time bucket of this many seconds (one of ``USAGE_BUCKETS_S``)."""

    def __post_init__(self) -> None:
        if self.bucket_s is not None and self.bucket_s not in USAGE_BUCKETS_S:
            raise ValueError(f"bucket {self.bucket_s} is not one of {USAGE_BUCKETS_S} seconds")


def status_bounds(spec: str) -> tuple[int | None, int | None]:
    """The statuses a spec means, as ``(lowest, above highest)``; None is unbounded."""
    if _STATUS_CODE.fullmatch(spec):
        return int(spec), int(spec) + 1
    if match := _STATUS_CLASS.fullmatch(spec):
        low = int(match[1]) * 100
        return low, low + 100
    if spec == "error":
        return 400, None
    if spec == "ok":
        return None, 400
    raise ValueError(f'status {spec!r}: use a code ("404"), a class ("5xx"), "error" or "ok"')


def parse_history_query(
    params: Mapping[str, str], now: float, *, ignore: Collection[str] = ()
) -> HistoryQuery:
    """The history query in ``params`` (a request's query string), times relative to
    ``now``.  ``ignore`` names parameters the caller handles itself (``format``).
    An empty parameter is as if absent."""
    values = _checked_params(params, HISTORY_PARAMS, ignore)
    kind = values.get("kind")
    if kind is not None and kind not in set(RecordKind):
        raise ValueError(f"kind {kind!r}: use one of {', '.join(RecordKind)}")
    since, until = _period(values, now)
    cursor = values.get("cursor")
    return HistoryQuery(
        model=values.get("model"),
        node=values.get("node"),
        key=values.get("key"),
        status=values.get("status"),
        since=since,
        until=until,
        search=values.get("search"),
        limit=_limit(values.get("limit")),
        before=None if cursor is None else decode_cursor(cursor),
        kind=None if kind is None else RecordKind(kind),
    )


def parse_usage_query(
    params: Mapping[str, str], now: float, *, ignore: Collection[str] = ()
) -> UsageQuery:
    """The usage query in ``params``; ``since`` defaults to a day before ``now``."""
    values = _checked_params(params, USAGE_PARAMS, ignore)
    since, until = _period(values, now, default_since=now - DEFAULT_USAGE_PERIOD_S)
    return UsageQuery(
        since=since,
        until=until,
        model=values.get("model"),
        key=values.get("key"),
        bucket_s=_bucket(values.get("bucket")),
    )


def parse_time(text: str, now: float, what: str = "time") -> float:
    """Unix seconds in ``text``: Unix seconds, ISO 8601, or a duration before ``now``."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{what} {text!r} is not a time: {_TIME_HINT}")
        return seconds
    if (ago := period(text)) is not None:
        return now - ago
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a time: {_TIME_HINT}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def encode_cursor(time: float, request_id: str) -> str:
    """The opaque cursor of the row ``(time, request_id)``."""
    raw = f"{time!r}:{request_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> tuple[float, str]:
    """The ``(time, request_id)`` in a cursor made by ``encode_cursor``."""
    bad = ValueError("cursor is not one this server gave: use the cursor of the last page")
    if not _CURSOR_TEXT.fullmatch(text):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        time_text, request_id = raw.split(":", 1)
        time = float(time_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not math.isfinite(time) or not request_id or not request_id.isprintable():
        raise bad
    return time, request_id


def merge_history(pages: Iterable[list[dict]], limit: int) -> tuple[list[dict], str | None]:
    """One page of at most ``limit`` rows, newest first, from the nodes' ``pages`` (each
    asked with this ``limit``), one row a request; and the next page's cursor, or None
    when no node has more."""
    by_request: dict[str, list[dict]] = {}
    boundary: tuple[float, str] | None = None  # rows older than this may be missing
    for page in pages:
        for row in page:
            by_request.setdefault(row["request_id"], []).append(row)
        if page and len(page) >= limit:
            last = _order_key(page[-1])
            boundary = last if boundary is None else max(boundary, last)
    merged = sorted(
        (_merge_request(rows) for rows in by_request.values()), key=_order_key, reverse=True
    )
    if boundary is not None:
        merged = [row for row in merged if _order_key(row) >= boundary]
    more = boundary is not None or len(merged) > limit
    page = merged[:limit]
    if not more:
        return page, None
    # Empty only when every row at or past the boundary merged into an older entry row
    # (clocks apart): the cursor then skips to the boundary, losing no row.
    last = _order_key(page[-1]) if page else boundary
    assert last is not None
    return page, encode_cursor(*last)


def merge_usage(groups: Iterable[list[dict]]) -> list[dict]:
    """The nodes' usage groups summed by ``(key_id, model, bucket)``, in that order."""
    totals: dict[tuple[Any, ...], dict] = {}
    for group_list in groups:
        for group in group_list:
            key = (group.get("bucket"), group["key_id"], group["model"])
            total = totals.get(key)
            if total is None:
                totals[key] = dict(group)
                continue
            for name in USAGE_SUMS:
                total[name] = _add(total.get(name), group.get(name))
    return [totals[key] for key in sorted(totals, key=lambda k: (k[0] or 0, k[1], k[2]))]


def to_csv(rows: Iterable[dict]) -> str:
    """History rows as CSV with a ``CSV_FIELDS`` header (plus prompt and answer when a
    row has either); None is an empty cell, ``seen_by`` is space-separated."""
    rows = list(rows)
    fields = list(CSV_FIELDS)
    if any(row.get(f) is not None for row in rows for f in CSV_PROMPT_FIELDS):
        fields += CSV_PROMPT_FIELDS
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: _csv_cell(row.get(name)) for name in fields})
    return out.getvalue()


def _checked_params(
    params: Mapping[str, str], known: frozenset[str], ignore: Collection[str]
) -> dict[str, str]:
    unknown = sorted(set(params) - known - set(ignore))
    if unknown:
        named = ", ".join(repr(name[:MAX_NAME_SHOWN]) for name in unknown[:MAX_NAMES_SHOWN])
        raise ValueError(f"unknown parameter(s) {named}: use {', '.join(sorted(known))}")
    values = {}
    for name in known:
        value = params.get(name)
        if value is None or value == "":
            continue
        if len(value) > MAX_PARAM_CHARS:
            raise ValueError(f"{name} is longer than {MAX_PARAM_CHARS} characters")
        values[name] = value
    return values


def _period(
    values: Mapping[str, str], now: float, default_since: float | None = None
) -> tuple[float | None, float | None]:
    since = values.get("since")
    until = values.get("until")
    since_s = default_since if since is None else parse_time(since, now, "since")
    until_s = None if until is None else parse_time(until, now, "until")
    if since_s is not None and until_s is not None and since_s >= until_s:
        raise ValueError(f"since ({since}) must be before until ({until})")
    return since_s, until_s


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit {text!r}: use a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _bucket(text: str | None) -> int | None:
    if text is None:
        return None
    bucket = BUCKET_NAMES.get(text)
    if bucket is None and text.isdigit():
        bucket = int(text)
    if bucket not in USAGE_BUCKETS_S:
        names = ", ".join(f"{name} ({s})" for name, s in BUCKET_NAMES.items())
        raise ValueError(f"bucket {text!r}: use {names}")
    return bucket


def _order_key(row: Mapping[str, Any]) -> tuple[float, str]:
    return row["time"], row["request_id"]


def _recorder(row: Mapping[str, Any]) -> str:
    """The node that recorded a row: the serving node for ``served``, else the entry node."""
    return row["serving_node"] if row["kind"] == RecordKind.SERVED else row["entry_node"]


def _merge_request(rows: list[dict]) -> dict:
    """One row for a request from the rows nodes recorded of it (the entry node's first)."""
    rows = sorted(rows, key=lambda r: r["kind"] == RecordKind.SERVED)
    merged = dict(rows[0])
    seen_by = [_recorder(rows[0])]
    for other in rows[1:]:
        for name, lacking in SERVING_FACTS.items():
            if merged.get(name, lacking) == lacking and other.get(name, lacking) != lacking:
                merged[name] = other[name]
        if _recorder(other) not in seen_by:
            seen_by.append(_recorder(other))
    merged["seen_by"] = seen_by
    return merged


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else a + b


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value  # a spreadsheet must not run a client's text as a formula
    return value
