"""PeerAnnouncement: what a node tells the mesh about itself (DESIGN.md §5).

A node owns its announcement and bumps ``seq`` on every change; ``incarnation``
is fixed at start (and raised to refute a suspicion).  The higher
``(incarnation, seq)`` wins every merge.

On the wire an announcement travels *signed*: ``{"p": payload, "s": signature}``,
where ``payload`` is the msgpack encoding of its fields and ``signature`` the
node's Ed25519 signature over exactly those bytes.  Relays forward the same
bytes, so a receiver checks the signature whoever relayed it, and the node id
must be the one derived from the public key inside: only a node can speak for
itself.  Every field is validated and bounded (the ``MAX_*`` constants).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Protocol

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshllm.errors import FrameError
from meshllm.identity import node_id_from_public_key

MAX_ANNOUNCEMENT_BYTES = 32 * 1024  # one signed payload; a batch of them fills a frame
MAX_ADDRS = 8  # addresses one node announces
MAX_ADDR_CHARS = 64
MAX_MODELS = 128  # entries in each model map or list
MAX_NAME_CHARS = 128  # a model name
MAX_FAILURES = 64  # failed models one announcement may list
MAX_CAUSE_CHARS = 2000  # a failure's cause: a signal or exit code and a few log lines
MAX_RESOURCES_BYTES = 8 * 1024  # the encoded ``resources`` map (cpu, ram, gpus)
MAX_VERSION_CHARS = 64
MAX_LOAD = 1 << 31  # requests in flight
MAX_COUNTER = 1 << 62  # incarnation and seq: far from msgpack's 2^64 even when bumped
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32

# Model names travel into file names, HTTP headers and logs: letters, digits and a
# few separators; "org/model" segments are allowed, "." and ".." ones are not.
_NAME_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.:@+=,()\[\] -]*"
_NAME = re.compile(rf"{_NAME_SEGMENT}(?:/{_NAME_SEGMENT})*")
_ADDR = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")


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


class PoolState(StrEnum):
    """A model's state in a node's pool, as announced in ``pool`` (DESIGN.md §6, the seed's
    "Model Pool Manager").  ``serving`` says less (:data:`SERVING_STATE`), and routing
    reads only that; ``pool`` is for people and placement."""

    COLD = "cold"  # on disk, not loaded (never in ``pool``: absent means cold)
    FETCHING = "fetching"  # copying the GGUF from a peer
    WARMING = "warming"  # llama-server starting, /health not yet 200
    HOT = "hot"  # loaded: busy, pinned or kept for good
    COOLING = "cooling"  # loaded and idle, its TTL counting down (``until``)
    UNLOADING = "unloading"  # its server being stopped
    FAILED = "failed"  # given up on; the cause is in ``failures``


SERVING_STATE: dict[PoolState, ModelState | None] = {
    PoolState.COLD: None,
    PoolState.FETCHING: ModelState.FETCHING,
    PoolState.WARMING: ModelState.STARTING,
    PoolState.HOT: ModelState.READY,
    PoolState.COOLING: ModelState.READY,  # still answers: a request makes it hot again
    PoolState.UNLOADING: None,  # takes no new requests
    PoolState.FAILED: ModelState.FAILED,
}
"""What each pool state says in ``serving`` (None: the model is not in it)."""

POOL_KEYS = {"state": str, "since": int, "eta": float, "until": int, "pinned": bool}
"""A ``pool`` entry's keys and types: ``since`` (wall ms) it is in ``state``; ``eta``
seconds a fetch or warm-up takes in all, from ``since`` (from the size and this
node's measured speed; absent: unknown); ``until`` (wall ms) a cooling model unloads."""

ENDPOINT_KEYS = {
    "name": str,
    "kind": str,
    "state": str,
    "latency_ms": float,
    "error": str,
    "models": dict,
}
"""An ``endpoints`` entry (id -> this): an external server the node fronts.  ``kind``
"openai" or "ollama"; ``state`` one of :data:`ENDPOINT_STATES`; ``models`` maps each
model it has to :data:`ENDPOINT_MODEL_KEYS`."""

ENDPOINT_STATES = frozenset({"up", "down", "probation", "draining"})
ENDPOINT_MODEL_KEYS = {"warm": bool, "size": int, "family": str, "quant": str}
MAX_ENDPOINTS = 16  # endpoints one node fronts
MAX_TEXT_CHARS = 300  # a text in a pool, demand or endpoint entry (name, error, family)

PROVIDER_STATES = frozenset({"up", "refused"})
"""A ``providers`` entry's state: ``up``, or ``refused`` when the provider last refused
this node's key (401/403), so others route to nodes whose key it takes."""
MAX_PROVIDERS = 8  # cloud providers one node holds keys for
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]{0,31}")

DEMAND_KEYS = {"rpm": float, "last": int}
"""A ``demand`` entry: requests a minute this node's proxy routed for the model (over
the last minute), and when it routed the last one (wall ms)."""


@dataclass(frozen=True, slots=True)
class PeerAnnouncement:
    """One node's self-description, gossiped to every peer."""

    node_id: str
    mesh_id: str
    public_key: bytes = b""  # Ed25519; node_id is derived from it
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
    pool: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> POOL_KEYS
    demand: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> DEMAND_KEYS
    pool_room: int | None = None  # bytes a newly placed model could get (idle ones evicted)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> ENDPOINT_KEYS
    providers: dict[str, str] = field(default_factory=dict)  # cloud provider -> its state
    version: str = ""
    incarnation: int = 0
    seq: int = 0
    leaving: bool = False  # its last word: it is stopping (a signed leave)

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
        """Plain dict for msgpack or JSON (shallow: its maps and lists are the
        announcement's own, so read them, don't change them)."""
        wire = {name: getattr(self, name) for name in _FIELD_NAMES}
        wire["role"] = str(self.role)
        return wire

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_wire` for JSON: the public key in hex."""
        return self.to_wire() | {"public_key": self.public_key.hex()}

    @classmethod
    def from_wire(cls, data: Any) -> PeerAnnouncement:
        """Parse, type-check and bound a peer's announcement; unknown fields are ignored."""
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


_FIELD_NAMES = tuple(f.name for f in fields(PeerAnnouncement))


class Signer(Protocol):
    """What signing needs of a node's identity (:class:`meshllm.identity.Identity`)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SignedAnnouncement:
    """An announcement with the exact bytes its node signed."""

    ann: PeerAnnouncement
    payload: bytes
    signature: bytes

    def to_wire(self) -> dict[str, bytes]:
        """The form relays forward untouched."""
        return {"p": self.payload, "s": self.signature}

    @property
    def size(self) -> int:
        """Bytes it takes in a frame (payload, signature and a little framing)."""
        return len(self.payload) + SIGNATURE_BYTES + 8


def sign(ann: PeerAnnouncement, signer: Signer) -> SignedAnnouncement:
    """Sign this node's own announcement.  Raises ValueError if it breaks a bound
    (use :func:`fit` first on fields that come from outside)."""
    _check(ann)
    if ann.public_key != signer.public_key:
        raise ValueError("an announcement is signed by its own node's key")
    payload = msgpack.packb(ann.to_wire(), use_bin_type=True)
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise ValueError(f"announcement of {len(payload)} bytes exceeds {MAX_ANNOUNCEMENT_BYTES}")
    return SignedAnnouncement(ann, payload, signer.sign(payload))


def peek(wire: Any) -> tuple[str, tuple[int, int]] | None:
    """``(node id, rank)`` of a signed announcement, *unverified*: to skip old news
    before paying for a signature check.  ``None`` when it cannot be read."""
    payload = wire.get("p") if isinstance(wire, dict) else None
    if not isinstance(payload, bytes) or len(payload) > MAX_ANNOUNCEMENT_BYTES:
        return None
    try:
        data = msgpack.unpackb(payload, raw=False)
    except Exception:  # msgpack raises a zoo of types for garbage
        return None
    if not isinstance(data, dict):
        return None
    node_id, inc, seq = data.get("node_id"), data.get("incarnation", 0), data.get("seq", 0)
    if not (isinstance(node_id, str) and isinstance(inc, int) and isinstance(seq, int)):
        return None
    return node_id, (inc, seq)


def verify(wire: Any) -> SignedAnnouncement:
    """Check a signed announcement from the wire: its bounds, that its node id is its
    key's, and its signature.  Raises :class:`FrameError`."""
    if not isinstance(wire, dict):
        raise FrameError("signed announcement is not a map")
    payload, signature = wire.get("p"), wire.get("s")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise FrameError("signed announcement without payload and signature bytes")
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise FrameError(f"announcement of {len(payload)} bytes exceeds {MAX_ANNOUNCEMENT_BYTES}")
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise FrameError(f"undecodable announcement: {exc}") from None
    ann = PeerAnnouncement.from_wire(data)
    if node_id_from_public_key(ann.public_key) != ann.node_id:
        raise FrameError("announcement's node id is not its key's")
    try:
        Ed25519PublicKey.from_public_bytes(ann.public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        raise FrameError(f"bad signature on the announcement of {ann.node_id}") from None
    return SignedAnnouncement(ann, payload, signature)


def fit(**changes: Any) -> tuple[dict[str, Any], list[str]]:
    """Changes to this node's announcement, cut to what peers accept: model names that
    are not safe names are left out, maps and lists capped.  Returns the fitted changes
    and what was left out (for a log line)."""
    dropped: list[str] = []
    fitted = dict(changes)
    for name in ("serving", "failures", "available_models", "model_sha256", "pool", "demand"):
        if name in fitted:
            entries = {k: v for k, v in fitted[name].items() if is_model_name(k)}
            dropped += [k for k in fitted[name] if k not in entries]
            cap = MAX_FAILURES if name == "failures" else MAX_MODELS
            fitted[name] = dict(list(entries.items())[:cap])
    if "failures" in fitted:
        fitted["failures"] = {k: v[:MAX_CAUSE_CHARS] for k, v in fitted["failures"].items()}
    if "requested_models" in fitted:
        names = [m for m in fitted["requested_models"] if is_model_name(m)]
        dropped += [m for m in fitted["requested_models"] if not is_model_name(m)]
        fitted["requested_models"] = names[:MAX_MODELS]
    if "addrs" in fitted:
        fitted["addrs"] = [a for a in fitted["addrs"] if _is_addr(a)][:MAX_ADDRS]
    return fitted, dropped


def is_model_name(name: Any) -> bool:
    """Whether ``name`` may name a model in the mesh (file, header and log safe)."""
    return isinstance(name, str) and len(name) <= MAX_NAME_CHARS and bool(_NAME.fullmatch(name))


def _is_addr(addr: Any) -> bool:
    return isinstance(addr, str) and len(addr) <= MAX_ADDR_CHARS and bool(_ADDR.fullmatch(addr))


def _check(ann: PeerAnnouncement) -> None:
    def names(v: Any, cap: int = MAX_MODELS) -> bool:
        return len(v) <= cap and all(is_model_name(x) for x in v)

    def is_int(v: Any, low: int, high: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    def is_map(v: Any, value_ok: Any, cap: int = MAX_MODELS) -> bool:
        return isinstance(v, dict) and names(v, cap) and all(value_ok(x) for x in v.values())

    checks = {
        "node_id": isinstance(ann.node_id, str) and 0 < len(ann.node_id) <= 128,
        "mesh_id": isinstance(ann.mesh_id, str) and len(ann.mesh_id) <= 128,
        "public_key": isinstance(ann.public_key, bytes)
        and len(ann.public_key) in (0, PUBLIC_KEY_BYTES),
        "addrs": isinstance(ann.addrs, list)
        and len(ann.addrs) <= MAX_ADDRS
        and all(_is_addr(a) for a in ann.addrs),
        "http_port": ann.http_port is None or is_int(ann.http_port, 0, 65535),
        "serving": is_map(ann.serving, lambda s: s in _STATES),
        "available_models": is_map(ann.available_models, lambda n: is_int(n, 0, 1 << 50)),
        "requested_models": isinstance(ann.requested_models, list) and names(ann.requested_models),
        "model_sha256": is_map(ann.model_sha256, _is_sha256_hex),
        "failures": is_map(
            ann.failures,
            lambda c: isinstance(c, str) and len(c) <= MAX_CAUSE_CHARS,
            MAX_FAILURES,
        ),
        "memory_bytes": is_int(ann.memory_bytes, 0, 1 << 60),
        "memory_kind": ann.memory_kind in ("vram", "ram"),
        "resources": isinstance(ann.resources, dict) and _encoded_size(ann.resources) is not None,
        "load": is_int(ann.load, 0, MAX_LOAD),
        "pool": is_map(ann.pool, lambda e: _is_record(e, POOL_KEYS) and e["state"] in _POOL),
        "demand": is_map(ann.demand, lambda e: _is_record(e, DEMAND_KEYS)),
        "pool_room": ann.pool_room is None or is_int(ann.pool_room, 0, 1 << 60),
        "endpoints": isinstance(ann.endpoints, dict)
        and len(ann.endpoints) <= MAX_ENDPOINTS
        and all(_is_endpoint(k, v) for k, v in ann.endpoints.items()),
        "providers": isinstance(ann.providers, dict)
        and len(ann.providers) <= MAX_PROVIDERS
        and all(
            isinstance(k, str) and _PROVIDER.fullmatch(k) and v in PROVIDER_STATES
            for k, v in ann.providers.items()
        ),
        "version": isinstance(ann.version, str) and len(ann.version) <= MAX_VERSION_CHARS,
        "incarnation": is_int(ann.incarnation, 0, MAX_COUNTER),
        "seq": is_int(ann.seq, 0, MAX_COUNTER),
        "leaving": isinstance(ann.leaving, bool),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"bad field(s) {', '.join(bad)}")


def _encoded_size(value: Any) -> int | None:
    """Encoded size of ``value`` if it is within :data:`MAX_RESOURCES_BYTES`."""
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        return None
    return size if size <= MAX_RESOURCES_BYTES else None


def _is_record(value: Any, keys: dict[str, type]) -> bool:
    """A small map of :func:`_is_typed` ``keys`` whose first key is present."""
    return _is_typed(value, keys) and next(iter(keys)) in value


def _is_endpoint(endpoint_id: Any, entry: Any) -> bool:
    """An ``endpoints`` entry: a short id, the known keys of their types, texts bounded,
    a known kind and state, and models that are named and described."""
    if not (isinstance(endpoint_id, str) and 0 < len(endpoint_id) <= 64):
        return False
    if not isinstance(entry, dict) or not {"name", "kind", "state"} <= set(entry):
        return False
    if not _is_typed(entry, ENDPOINT_KEYS):
        return False
    models = entry.get("models", {})
    return (
        entry["kind"] in ("openai", "ollama")
        and entry["state"] in ENDPOINT_STATES
        and len(models) <= MAX_MODELS
        and all(is_model_name(m) and _is_typed(d, ENDPOINT_MODEL_KEYS) for m, d in models.items())
    )


def _is_typed(value: Any, keys: dict[str, type]) -> bool:
    """A map with only ``keys``, each of its type (an int is a float too, a bool is no
    number): texts up to MAX_TEXT_CHARS; numbers finite, not negative (a negative rate
    would cancel other nodes' demand) and below the counters' bound."""
    if not isinstance(value, dict) or not set(value) <= set(keys):
        return False
    for key, item in value.items():
        kind = keys[key]
        if kind in (int, float):
            numeric = (int,) if kind is int else (int, float)
            if isinstance(item, bool) or not isinstance(item, numeric):
                return False
            if not 0 <= item < MAX_COUNTER:
                return False
        elif not isinstance(item, kind) or (kind is str and len(item) > MAX_TEXT_CHARS):
            return False
    return True


def _is_sha256_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)


_HEX = frozenset("0123456789abcdef")
_STATES = frozenset(ModelState)
_POOL = frozenset(PoolState) - {PoolState.COLD}
