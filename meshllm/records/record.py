"""One request as a node records it (DESIGN.md §7b): the row of its history.

A request has one id, made by the node it entered (``x-meshllm-request-id`` to the
serving node), so the mesh-wide history can tell one request seen by two nodes:

* ``local``: it entered here and this node's own backend answered;
* ``routed``: it entered here and went to ``serving_node`` (or to none: then
  ``serving_node`` is "" and ``status`` says why);
* ``served``: another node (``entry_node``) sent it here, and this node answered.

Each request is served once, so usage and cost count ``local`` and ``served`` rows
and ``routed`` ones that no node served.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any


class RecordKind(StrEnum):
    """How a node took part in a request."""

    LOCAL = "local"
    ROUTED = "routed"
    SERVED = "served"


@dataclass(slots=True)
class RequestRecord:
    """A row of the request history."""

    request_id: str
    """16 hex digits, made by the entry node."""
    time: float
    """Wall clock (Unix seconds) when the request came in."""
    kind: RecordKind
    entry_node: str
    serving_node: str
    """The node whose backend answered; "" when none did."""
    model: str
    """The mesh model it went to, or the one asked for when none took it ("" for none)."""
    path: str
    status: int
    latency_ms: float
    """From the request's arrival to the last byte of its answer."""
    ttft_ms: float | None = None
    """To the first token (the first event of a stream; the whole answer otherwise)."""
    key_id: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    stream: bool = False
    energy_j: float | None = None
    """What serving it cost in energy, on the serving node (None where not known)."""
    error: str = ""
    """Why it failed, in a line ("" when it did not)."""
    prompt: str | None = None
    """The request body, only with ``--log-prompts``."""
    answer: str | None = None
    """The answer's text, only with ``--log-prompts``."""

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["kind"] = str(self.kind)
        return row


RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))
"""A record's fields, in order: the history's columns."""
PRIVATE_FIELDS = ("prompt", "answer")
"""Kept only on the node that logged them (``--log-prompts``): never sent to a peer."""


def new_request_id() -> str:
    """A request's id: 16 hex digits."""
    return secrets.token_hex(8)


def is_request_id(value: object) -> bool:
    """Whether a peer's ``x-meshllm-request-id`` is one (else the server makes its own)."""
    return (
        isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)
    )
