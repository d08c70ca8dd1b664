"""Mesh-wide records without a central database: ask every live peer, merge the answers.

The asking node opens one stream per live peer and sends ``{t: records, q: "history" |
"usage", params}`` (the query's own HTTP parameters, which the peer parses as its own
route would); the peer answers ``{t: records, ok: true, rows: [...]}`` or
``{ok: false, message}``.  A peer that does not answer within the timeout, or fails, is
*named* in the result, never silently left out.  Rows travel without prompts or answers
(those stay on the node that logged them), and an answer is cut to fit one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from meshllm.errors import FrameError, PeerError
from meshllm.records.record import PRIVATE_FIELDS
from meshllm.wire import MAX_FRAME_SIZE, Frame, FrameStream, FrameType, make_frame

QUERIES = ("history", "usage")
MAX_ANSWER_BYTES = MAX_FRAME_SIZE - 4096  # the rows of one answer, with room for its framing
MAX_PARAMS = 16  # query parameters a peer may send
MAX_PARAM_CHARS = 200  # ... each, name and value

OpenStream = Callable[[str], Awaitable[FrameStream]]
Answerer = Callable[[str, Mapping[str, str]], Awaitable[list[dict[str, Any]]]]


@dataclass
class FanOut:
    """The answers of a mesh-wide query: rows per node that answered, and why the others
    did not."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


async def ask_peers(
    peers: Iterable[str],
    open_stream: OpenStream,
    query: str,
    params: Mapping[str, str],
    timeout: float,
) -> FanOut:
    """Ask every node of ``peers`` for ``query`` at once, each within ``timeout`` seconds."""
    result = FanOut()
    peers = list(peers)

    async def ask(node_id: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                result.rows[node_id] = await _ask(open_stream, node_id, query, params)
        except TimeoutError:
            result.missing[node_id] = f"no answer within {timeout:g} s"
        except (PeerError, FrameError) as exc:
            result.missing[node_id] = str(exc)[:200] or type(exc).__name__

    await asyncio.gather(*(ask(node_id) for node_id in peers))
    return result


async def _ask(
    open_stream: OpenStream, node_id: str, query: str, params: Mapping[str, str]
) -> list[dict[str, Any]]:
    stream = await open_stream(node_id)
    try:
        await stream.send(make_frame(FrameType.RECORDS, q=query, params=dict(params)))
        reply = await stream.recv()
    finally:
        stream.reset()
    if not reply or reply.get("t") != FrameType.RECORDS:
        raise PeerError("no answer")
    if reply.get("ok") is not True:
        raise PeerError(str(reply.get("message", "refused"))[:200])
    rows = reply.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise FrameError("malformed records answer")
    return rows


async def answer_peer(stream: FrameStream, head: Frame, answer: Answerer) -> None:
    """A peer's records query on ``stream``: ``answer(query, params)`` gives the rows
    (raising ValueError for a bad query); the reply is cut to one frame."""
    query, params = head.get("q"), head.get("params")
    try:
        if query not in QUERIES:
            raise ValueError(f"no records query {query!r}")
        rows = await answer(str(query), _check_params(params))
        reply = make_frame(FrameType.RECORDS, ok=True, rows=fit_rows(rows, MAX_ANSWER_BYTES))
    except ValueError as exc:
        reply = make_frame(FrameType.RECORDS, ok=False, message=str(exc)[:200])
    with contextlib.suppress(PeerError, FrameError):
        await stream.send(reply)
        await stream.end()


def fit_rows(rows: list[dict[str, Any]], max_bytes: int) -> list[dict[str, Any]]:
    """``rows`` without their private fields, as many of the first as fit ``max_bytes``."""
    kept: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        public = {k: v for k, v in row.items() if k not in PRIVATE_FIELDS}
        size += len(msgpack.packb(public, use_bin_type=True))
        if size > max_bytes:
            break
        kept.append(public)
    return kept


def _check_params(params: object) -> dict[str, str]:
    if not isinstance(params, dict) or len(params) > MAX_PARAMS:
        raise ValueError("malformed query parameters")
    checked = {}
    for name, value in params.items():
        if not (isinstance(name, str) and isinstance(value, str)):
            raise ValueError("malformed query parameters")
        if len(name) > MAX_PARAM_CHARS or len(value) > MAX_PARAM_CHARS:
            raise ValueError("query parameter too long")
        checked[name] = value
    return checked
