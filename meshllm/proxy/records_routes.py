"""The records routes: ``GET /api/history``, ``GET /api/usage`` and ``GET /metrics``.

``/api/history`` is a page of the request history, mesh-wide by default (every live
node asked over QUIC and the answers merged; one that does not answer in time is named
in ``missing``), or this node's (``scope=local``): filters ``model``, ``node``, ``key``,
``status`` (``200``, ``4xx``, ``error``, ``ok``), ``since``/``until`` (Unix seconds, ISO
8601, or a duration ago such as ``1h``), ``search``, ``kind``, ``limit`` and ``cursor``
(the page's ``next_cursor``); ``format=csv`` answers it as CSV.  ``/api/usage`` sums
requests, tokens and cost per key and model over a period (``bucket``: per minute,
hour or day).  Both take the admin token from this machine, or an admin key: the
history names keys and, with ``--log-prompts``, holds prompts.  ``/metrics`` is
Prometheus' text format (a read-only page: open to this machine, else any key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from meshllm.proxy.admin import admin_refusal
from meshllm.proxy.errors import error_response
from meshllm.records.query import to_csv


class RecordsAPI(Protocol):
    """What the records routes need of the node."""

    admin_token: str

    async def history(self, params: Mapping[str, str]) -> dict[str, Any]:
        """A page of history; raises ValueError for a bad query."""
        ...

    async def usage(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Usage and cost; raises ValueError for a bad query."""
        ...

    def prometheus(self) -> tuple[bytes, str]:
        """The Prometheus text and its content type."""
        ...


RECORDS_KEY = web.AppKey("records", RecordsAPI)


def add_records_routes(app: web.Application, api: RecordsAPI) -> None:
    """Register the records routes on ``app``."""
    app[RECORDS_KEY] = api
    app.router.add_get("/api/history", history)
    app.router.add_get("/api/usage", usage)
    app.router.add_get("/metrics", metrics)


async def history(request: web.Request) -> web.StreamResponse:
    api = request.app[RECORDS_KEY]
    if (refused := admin_refusal(request, api.admin_token, "the request history")) is not None:
        return refused
    params = dict(request.query)
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        return error_response(400, "format must be json or csv", "invalid_query")
    try:
        page = await api.history(params)
    except ValueError as exc:
        return error_response(400, str(exc), "invalid_query")
    if fmt == "csv":
        return web.Response(
            text=to_csv(page["rows"]),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="meshllm-history.csv"'},
        )
    return web.json_response(page)


async def usage(request: web.Request) -> web.Response:
    api = request.app[RECORDS_KEY]
    if (refused := admin_refusal(request, api.admin_token, "usage")) is not None:
        return refused
    try:
        return web.json_response(await api.usage(dict(request.query)))
    except ValueError as exc:
        return error_response(400, str(exc), "invalid_query")


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[RECORDS_KEY].prometheus()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
