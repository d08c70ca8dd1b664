"""PeerAnnouncement: what a node tells the mesh about itself (DESIGN.md §5).

A node owns its announcement and bumps ``seq`` on every change; ``incarnation``
is fixed at start (and raised to refute a false death).  The higher
``(incarnation, seq)`` wins every merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from meshllm.errors import FrameError

MAX_FAILURES = 64  # failed models one announcement may list
MAX_CAUSE_CHARS = 2000  # a failure's cause: a signal or exit code and a few log lines


class Role(StrEnum):
    """A node's role in the mesh."""

    HOST = "host"  # serves at least one model through its own server or endpoint
    WORKER = "worker"  # can serve but serves nothing yet (or lends compute to a split)
    CLIENT = "client"  # lite client: proxy only, never elected


class ModelState(StrEnum):
    """The state of a model a node serves, as announced in ``serving``."""

    FETCHING = "fetching"  # copying the GGUF from a peer
    STARTING = "starting"  # llama-server launched (or restarting), /health not yet 200
    READY = "ready"  # answering requests
    FAILED = "failed"  # given up on (cause in ``failures``), or an unreachable endpoint


@dataclass(frozen=True, slots=True)
class PeerAnnouncement:
    """One node's self-description, gossiped to every peer."""

    node_id: str
    mesh_id: str
    addrs: list[str] = field(default_factory=list)  # "host:port" of its QUIC (UDP) socket
    role: Role = Role.WORKER
    http_port: int | None = None  # its local proxy port (informational)
    serving: dict[str, str] = field(default_factory=dict)  # model -> ModelState
    failures: dict[str, str] = field(default_factory=dict)  # failed model -> its cause
    available_models: dict[str, int] = field(default_factory=dict)  # GGUFs on disk: name -> bytes
    model_sha256: dict[str, str] = field(default_factory=dict)  # name -> hex digest of its GGUF
    requested_models: list[str] = field(default_factory=list)  # catalog seed
    memory_bytes: int = 0  # bytes it can give to models: free VRAM, else usable RAM
    memory_kind: str = "ram"  # "vram": GPU memory; "ram": a CPU-only node
    resources: dict[str, Any] = field(default_factory=dict)  # cpu, ram, gpus (ephemeral)
    load: int = 0  # requests in flight
    version: str = ""
    incarnation: int = 0
    seq: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        """Merge order: the higher rank is the newer announcement."""
        return (self.incarnation, self.seq)

    @property
    def ready_models(self) -> list[str]:
        """Models this node answers requests for right now."""
        return [m for m, s in self.serving.items() if s == ModelState.READY]

    def bump(self, **changes: Any) -> PeerAnnouncement:
        """A copy with ``changes`` applied and ``seq`` raised by one."""
        return replace(self, **changes, seq=self.seq + 1)

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for msgpack or JSON."""
        wire = asdict(self)
        wire["role"] = str(self.role)
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> PeerAnnouncement:
        """Parse and type-check a peer's announcement; unknown fields are ignored."""
        if not isinstance(data, dict):
            raise FrameError("announcement is not a map")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            ann = cls(**values)
            _check(ann)
            return replace(ann, role=Role(ann.role))
        except (TypeError, ValueError) as exc:
            raise FrameError(f"bad announcement: {exc}") from None


def _check(ann: PeerAnnouncement) -> None:
    def is_str_list(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    checks = {
        "node_id": isinstance(ann.node_id, str) and 0 < len(ann.node_id) <= 128,
        "mesh_id": isinstance(ann.mesh_id, str),
        "addrs": is_str_list(ann.addrs),
        "http_port": ann.http_port is None or isinstance(ann.http_port, int),
        "serving": isinstance(ann.serving, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in ann.serving.items()),
        "available_models": isinstance(ann.available_models, dict)
        and all(isinstance(k, str) and isinstance(v, int) for k, v in ann.available_models.items()),
        "requested_models": is_str_list(ann.requested_models),
        "model_sha256": isinstance(ann.model_sha256, dict)
        and all(isinstance(k, str) and _is_sha256_hex(v) for k, v in ann.model_sha256.items()),
        "failures": isinstance(ann.failures, dict)
        and len(ann.failures) <= MAX_FAILURES
        and all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_CAUSE_CHARS
            for k, v in ann.failures.items()
        ),
        "memory_bytes": isinstance(ann.memory_bytes, int) and ann.memory_bytes >= 0,
        "memory_kind": ann.memory_kind in ("vram", "ram"),
        "resources": isinstance(ann.resources, dict),
        "load": isinstance(ann.load, int),
        "version": isinstance(ann.version, str),
        "incarnation": isinstance(ann.incarnation, int) and ann.incarnation >= 0,
        "seq": isinstance(ann.seq, int) and ann.seq >= 0,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"bad field(s) {', '.join(bad)}")


def _is_sha256_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)


_HEX = frozenset("0123456789abcdef")
