"""A node's records: its request history, its metrics, and the mesh-wide queries of both.

:class:`MeshRecords` is the proxy's :class:`~meshllm.proxy.observe.RequestLog` (every
request this node answered or routed goes to the history, off the request path, and to
the metrics) and answers ``/api/history`` and ``/api/usage``: this node's rows, plus
every live peer's, asked over QUIC (:mod:`meshllm.records.fanout`) and merged.

The energy of a request this node served is its power draw (the GPUs' measured power,
else ``--cpu-watts``) times the request's share of the serving time: while ``n``
requests are served at once, each is owed ``1/n`` of every second (:class:`ShareClock`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from meshllm.records.cost import EnergyPrice, PriceTable, energy_joules, summarize
from meshllm.records.fanout import OpenStream, answer_peer, ask_peers
from meshllm.records.history import HistoryStore
from meshllm.records.metrics import CONTENT_TYPE, Metrics
from meshllm.records.query import (
    merge_history,
    merge_usage,
    parse_history_query,
    parse_usage_query,
)
from meshllm.records.record import RecordKind, RequestRecord, new_request_id
from meshllm.wire import Frame, FrameStream

log = logging.getLogger(__name__)

SCOPES = ("mesh", "local")  # what a query covers: every live node, or this one


class ShareClock:
    """∫ 1/n dt over the time ``n`` requests are being served: what each is owed of the
    node's power.  A request's share is the clock's advance between its start and end."""

    def __init__(self, now: float) -> None:
        self._owed = 0.0
        self._busy = 0
        self._at = now

    def start(self, now: float) -> float:
        """One more request is served from ``now``; the mark to pass to :meth:`end`."""
        self._advance(now)
        self._busy += 1
        return self._owed

    def end(self, mark: float, now: float) -> float:
        """The request started at ``mark`` is done: the seconds of power it is owed."""
        self._advance(now)
        self._busy = max(0, self._busy - 1)
        return self._owed - mark

    def _advance(self, now: float) -> None:
        if self._busy and now > self._at:
            self._owed += (now - self._at) / self._busy
        self._at = max(self._at, now)


class MeshRecords:
    """This node's history and metrics, and the mesh-wide queries of them."""

    def __init__(
        self,
        node_id: str,
        store: HistoryStore,
        metrics: Metrics,
        *,
        live_peers: Callable[[], list[str]],
        open_stream: OpenStream,
        watts: Callable[[], float | None],
        prices: PriceTable,
        energy: EnergyPrice,
        fanout_timeout: float,
        admin_token: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``live_peers``: the nodes a mesh-wide query asks; ``watts``: this node's power
        draw now (None: unknown); ``admin_token``: what the records routes take."""
        self.node_id = node_id
        self.admin_token = admin_token
        self.store = store
        self.metrics = metrics
        self.log_prompts = store.log_prompts
        self._live_peers = live_peers
        self._open_stream = open_stream
        self._watts = watts
        self._prices = prices
        self._energy = energy
        self._timeout = fanout_timeout
        self._clock = clock
        self._shares = ShareClock(clock())
        self.on_record: Callable[[RequestRecord], None] | None = None
        """Told of every request recorded here (the dashboard's live history)."""

    # the proxy's RequestLog

    def request_started(self, model: str) -> None:
        self.metrics.request_started(model)

    def request_finished(self, record: RequestRecord, started_model: str | None) -> None:
        if started_model is not None:
            self.metrics.request_ended(started_model)
        self.metrics.request_finished(record)
        self.store.add(record)
        self._tell(record)

    def _tell(self, record: RequestRecord) -> None:
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:  # a listener's trouble must not cost the record
                log.exception("telling of request %s", record.request_id)

    def load_waited(self, model: str, seconds: float) -> None:
        self.metrics.load_wait(model, seconds)

    def refused(self, status: int, reason: str, path: str, key_id: str) -> None:
        """The access rules refused a request: counted, and kept in the history."""
        self.metrics.refused(status, reason)
        if path.startswith("/v1/"):  # an inference request; page views are not history
            record = RequestRecord(
                request_id=new_request_id(),
                time=time.time(),
                kind=RecordKind.ROUTED,
                entry_node=self.node_id,
                serving_node="",
                model="",
                path=path[:200],
                status=status,
                latency_ms=0.0,
                key_id=key_id,
                error=reason,
            )
            self.metrics.request_finished(record)
            self.store.add(record)
            self._tell(record)

    # serving: the power a request served here is owed

    def serving_started(self) -> float:
        """A request is served here from now; the mark for :meth:`energy_of`."""
        return self._shares.start(self._clock())

    def energy_of(self, mark: float) -> float | None:
        """The joules the request served since ``mark`` used (None: power unknown)."""
        seconds = self._shares.end(mark, self._clock())
        watts = self._watts()
        return None if watts is None else energy_joules(watts, seconds, 1)

    # queries: /metrics, /api/history and /api/usage, and peers' queries of this node

    def prometheus(self) -> tuple[bytes, str]:
        """``GET /metrics``: the text, and its content type."""
        return self.metrics.render(), CONTENT_TYPE

    async def history(self, params: Mapping[str, str]) -> dict[str, Any]:
        """``GET /api/history``: a page of the mesh-wide (``scope=mesh``, the default) or
        this node's history, newest first.  Raises ValueError for a bad query (400)."""
        params, scope = _scope(params)
        query = parse_history_query(params, time.time())
        pages, missing = await self._gather("history", params, scope, self.store.query, query)
        rows, cursor = merge_history(pages.values(), query.limit)
        return {"rows": rows, "next_cursor": cursor, "nodes": sorted(pages), "missing": missing}

    async def usage(self, params: Mapping[str, str]) -> dict[str, Any]:
        """``GET /api/usage``: requests, tokens and cost per key and model over a period,
        mesh-wide or this node's.  Raises ValueError for a bad query (400)."""
        params, scope = _scope(params)
        query = parse_usage_query(params, time.time())
        groups, missing = await self._gather("usage", params, scope, self.store.usage, query)
        merged = summarize(merge_usage(groups.values()), self._prices, self._energy)
        return {
            "since": query.since,
            "until": query.until,
            "bucket_s": query.bucket_s,
            "usage": merged,
            "totals": _totals(merged),
            "nodes": sorted(groups),
            "missing": missing,
        }

    async def _gather(
        self,
        name: str,
        params: dict[str, str],
        scope: str,
        run: Callable[[Any], list[dict[str, Any]]],
        query: Any,
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
        """This node's answer to ``query`` and, mesh-wide, every live peer's: the rows by
        node, and why the nodes that did not answer did not."""
        rows = {self.node_id: await asyncio.to_thread(run, query)}
        if scope != "mesh":
            return rows, {}
        asked = await ask_peers(self._live_peers(), self._open_stream, name, params, self._timeout)
        rows.update(asked.rows)
        return rows, asked.missing

    async def answer_peer(self, stream: FrameStream, head: Frame) -> None:
        """A peer's query of this node's own records."""
        await answer_peer(stream, head, self._answer)

    async def _answer(self, query: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        run: Callable[[Any], list[dict[str, Any]]]
        if query == "history":
            parsed: Any = parse_history_query(params, time.time())
            run = self.store.query
        else:
            parsed = parse_usage_query(params, time.time())
            run = self.store.usage
        return await asyncio.to_thread(run, parsed)


def _scope(params: Mapping[str, str]) -> tuple[dict[str, str], str]:
    rest = dict(params)
    scope = rest.pop("scope", "mesh")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    rest.pop("format", None)  # how the route answers, not what it asks
    return rest, scope


def _totals(groups: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"requests": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0}
    cost = None
    for group in groups:
        for name in totals:
            totals[name] += group.get(name) or 0
        if group.get("cost") is not None:
            cost = (cost or 0.0) + group["cost"]
    totals["cost"] = cost
    return totals
