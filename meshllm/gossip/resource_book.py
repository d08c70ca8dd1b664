"""Live host resources as ephemeral gossip: signed reports and the book that ages them.

A node reports its :func:`meshllm.resources.host_resources` every
:data:`REPORT_INTERVAL_S` in a small signed report, apart from its announcement: a
busy GPU should not bump the announcement's ``seq`` and make every peer re-merge it.
Reports are never merged or relayed as state; a peer keeps the newest one per node
and shows it as "live", then "stale" (last figures, marked old) after
:data:`STALE_AFTER_S`, and forgets it after :data:`FORGET_AFTER_S`.

On the wire a report is ``{"p": payload, "s": signature}``, like an announcement
(:func:`meshllm.gossip.announcement.sign`): ``payload`` is the msgpack map
``{"node_id", "seq", "resources"}`` and ``signature`` the node's Ed25519 signature
over :data:`REPORT_CONTEXT` + ``payload``.  The context prefix keeps a report's
signature from ever passing for an announcement's, and back.  The receiver checks it
with the public key of the sender's (already verified) announcement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshllm.errors import FrameError
from meshllm.gossip.announcement import (
    MAX_COUNTER,
    MAX_RESOURCES_BYTES,
    SIGNATURE_BYTES,
    Signer,
)
from meshllm.identity import node_id_from_public_key

REPORT_INTERVAL_S = 5.0  # how often a node reports its resources
STALE_AFTER_S = 15.0  # three reports missed: show the last figures, marked stale
FORGET_AFTER_S = 60.0  # a minute of silence: the figures say nothing any more
MAX_NODES = 1024  # reports one book holds; the longest silent is evicted past it
MAX_NODE_ID_CHARS = 128  # as in an announcement
MAX_REPORT_BYTES = MAX_RESOURCES_BYTES + 256  # resources, node id, seq and map framing
REPORT_CONTEXT = b"meshllm-resources-v1\x00"
"""Signed before the payload: a signature over a report is no announcement's."""

_KEYS = frozenset({"node_id", "seq", "resources"})


def encode_report(
    node_id: str, resources: dict[str, Any], seq: int, signer: Signer
) -> dict[str, bytes]:
    """This node's signed report ``{"p": payload, "s": signature}``.  ``seq`` must grow
    with every report, across restarts too (wall-clock milliseconds do).  Raises
    ValueError when a field breaks a bound or ``node_id`` is not the signer's."""
    if node_id != node_id_from_public_key(signer.public_key):
        raise ValueError("a report is signed by its own node's key")
    if not _is_seq(seq):
        raise ValueError(f"bad report seq {seq!r}")
    if not isinstance(resources, dict):
        raise ValueError("resources is not a map")
    try:
        size = _size(resources)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"resources do not encode: {exc}") from None
    if size > MAX_RESOURCES_BYTES:
        raise ValueError(f"resources of {size} bytes exceed {MAX_RESOURCES_BYTES}")
    payload = msgpack.packb(
        {"node_id": node_id, "seq": seq, "resources": resources}, use_bin_type=True
    )
    return {"p": payload, "s": signer.sign(REPORT_CONTEXT + payload)}


def decode_report(wire: Any, public_key: bytes) -> tuple[str, int, dict[str, Any]]:
    """``(node_id, seq, resources)`` of a report signed with ``public_key`` (from the
    sender's announcement).  Raises :class:`FrameError` on a bad signature, another
    node's id, a wrong type or a broken bound."""
    if not isinstance(wire, dict):
        raise FrameError("resource report is not a map")
    payload, signature = wire.get("p"), wire.get("s")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise FrameError("resource report without payload and signature bytes")
    if len(payload) > MAX_REPORT_BYTES or len(signature) != SIGNATURE_BYTES:
        raise FrameError(f"resource report of {len(payload)} bytes breaks its bounds")
    # The signature first: nothing a forger sends is unpacked.
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, REPORT_CONTEXT + payload)
    except (InvalidSignature, TypeError, ValueError):
        raise FrameError("bad signature on a resource report") from None
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types for garbage
        raise FrameError(f"undecodable resource report: {exc}") from None
    if not isinstance(data, dict) or set(data) != _KEYS:
        raise FrameError("resource report is not a {node_id, seq, resources} map")
    node_id, seq, resources = data["node_id"], data["seq"], data["resources"]
    if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_NODE_ID_CHARS:
        raise FrameError("resource report with a bad node id")
    if node_id != node_id_from_public_key(public_key):
        raise FrameError(f"resource report of {node_id} is not its key's")
    if not _is_seq(seq):
        raise FrameError(f"resource report of {node_id} with a bad seq")
    if not isinstance(resources, dict) or _size(resources) > MAX_RESOURCES_BYTES:
        raise FrameError(f"resource report of {node_id} with bad or oversized resources")
    return node_id, seq, resources


class ResourceState(StrEnum):
    """How fresh a node's resource figures are."""

    LIVE = "live"  # reported within stale_after
    STALE = "stale"  # the last figures, older than stale_after
    UNKNOWN = "unknown"  # never reported, forgotten, or silent past forget_after


@dataclass(frozen=True, slots=True)
class ResourceView:
    """What the book says of one node's resources."""

    state: ResourceState
    resources: dict[str, Any] | None  # None when unknown (read it, don't change it)
    age_s: float | None  # seconds since its report arrived; None when unknown


_UNKNOWN = ResourceView(ResourceState.UNKNOWN, None, None)


@dataclass(slots=True)
class _Entry:
    seq: int
    resources: dict[str, Any]
    received: float


class ResourceBook:
    """The newest resource report of each node, aged by the ``now`` passed in."""

    def __init__(
        self,
        stale_after: float = STALE_AFTER_S,
        forget_after: float = FORGET_AFTER_S,
        max_nodes: int = MAX_NODES,
    ) -> None:
        if not 0 < stale_after <= forget_after:
            raise ValueError("need 0 < stale_after <= forget_after")
        self.stale_after = stale_after
        self.forget_after = forget_after
        self.max_nodes = max_nodes
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, node_id: str, seq: int, resources: dict[str, Any], now: float) -> bool:
        """Keep a verified report; False (and nothing kept) when its ``seq`` is not newer
        than the one held: a replay, or one overtaken on the way."""
        held = self._entries.get(node_id)
        if held is not None:
            if seq <= held.seq:
                return False
            held.seq, held.resources, held.received = seq, resources, now
            return True
        if len(self._entries) >= self.max_nodes:
            # Bounded memory against a flood of ids: the longest silent goes first.
            oldest = min(self._entries, key=lambda n: self._entries[n].received)
            del self._entries[oldest]
        self._entries[node_id] = _Entry(seq, resources, now)
        return True

    def forget(self, node_id: str) -> None:
        """Drop a node's figures (it died or left; a new life starts from any seq)."""
        self._entries.pop(node_id, None)

    def view(self, node_id: str, now: float) -> ResourceView:
        """The node's figures and how fresh they are."""
        entry = self._entries.get(node_id)
        if entry is None:
            return _UNKNOWN
        age = max(0.0, now - entry.received)
        if age > self.forget_after:
            return _UNKNOWN
        state = ResourceState.LIVE if age <= self.stale_after else ResourceState.STALE
        return ResourceView(state, entry.resources, age)

    def prune(self, now: float) -> list[str]:
        """Drop the figures silent past ``forget_after``; returns those nodes."""
        gone = [n for n, e in self._entries.items() if now - e.received > self.forget_after]
        for node_id in gone:
            del self._entries[node_id]
        return gone


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNTER


def _size(value: Any) -> int:
    """Encoded size of ``value`` in msgpack."""
    return len(msgpack.packb(value, use_bin_type=True))
