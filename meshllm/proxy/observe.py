"""What the proxy tells about each request it handles: the node's records and metrics.

The routes (and the tunnel's serving side) build one
:class:`~meshllm.records.record.RequestRecord` per request, whatever its end (answered,
refused, failed, the client gone: 499), and hand it to a :class:`RequestLog`, which
must not block: the history writes it off the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from meshllm.proxy.tunnel import ServedAnswer
from meshllm.records.record import RecordKind, RequestRecord, is_request_id, new_request_id

REQUEST_ID_HEADER = "x-meshllm-request-id"  # the entry node's id of a request, to its server
KEY_ID_HEADER = "x-meshllm-key-id"  # the API key it came with (its id only), likewise
CLIENT_GONE = 499  # the status recorded for a request whose client went away (nginx's)
MAX_PROMPT_BYTES = 64 * 1024  # of a request body recorded with --log-prompts


class RequestLog(Protocol):
    """Where a node's requests are recorded."""

    log_prompts: bool
    """Whether prompts and answers are kept (``--log-prompts``)."""

    def request_started(self, model: str) -> None:
        """A request for ``model`` is in flight here."""
        ...

    def request_finished(self, record: RequestRecord, started_model: str | None) -> None:
        """A request is over (``started_model``: what :meth:`request_started` was told)."""
        ...

    def load_waited(self, model: str, seconds: float) -> None:
        """A request waited ``seconds`` for ``model`` to load."""
        ...

    def serving_started(self) -> float:
        """This node's backend serves a request from now: the mark for :meth:`energy_of`."""
        ...

    def energy_of(self, mark: float) -> float | None:
        """The joules the request served since ``mark`` used (None: not known)."""
        ...


class NoLog:
    """Records nothing (a proxy built without a node's records)."""

    log_prompts = False

    def request_started(self, model: str) -> None:
        pass

    def request_finished(self, record: RequestRecord, started_model: str | None) -> None:
        pass

    def load_waited(self, model: str, seconds: float) -> None:
        pass

    def serving_started(self) -> float:
        return 0.0

    def energy_of(self, mark: float) -> float | None:
        return None


def prompt_text(body: bytes) -> str:
    """What ``--log-prompts`` keeps of a request body."""
    return body[:MAX_PROMPT_BYTES].decode(errors="replace")


def served_record(
    answer: ServedAnswer,
    head: Mapping[str, Any],
    *,
    entry_node: str,
    serving_node: str,
    wall: float,
    latency_ms: float,
    energy_j: float | None,
) -> RequestRecord:
    """The record of a request a peer (``entry_node``) sent here through a tunnel whose
    ``head`` frame it was, and of what :func:`~meshllm.proxy.tunnel.serve_tunnel` did."""
    headers = head.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    request_id = headers.get(REQUEST_ID_HEADER)
    key_id = headers.get(KEY_ID_HEADER)
    path = head.get("path")
    meter = answer.meter
    record = RequestRecord(
        request_id=request_id if is_request_id(request_id) else new_request_id(),
        time=wall,
        kind=RecordKind.SERVED,
        entry_node=entry_node,
        serving_node=serving_node if answer.status else "",
        model=(answer.model or "")[:200],
        path=path[:200] if isinstance(path, str) else "",
        status=answer.status or 502,
        latency_ms=latency_ms,
        key_id=key_id[:40] if isinstance(key_id, str) else "",
        stream=answer.streamed,
        energy_j=energy_j,
        error=answer.error[:500],
        prompt=prompt_text(answer.prompt) if answer.prompt is not None else None,
    )
    if meter is not None:
        meter.finish()
        record.tokens_in, record.tokens_out = meter.tokens_in, meter.tokens_out
        if meter.first_token_at is not None:
            record.ttft_ms = (meter.first_token_at - answer.started_at) * 1000
        record.answer = meter.text
    return record
