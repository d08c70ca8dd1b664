"""The console's only link to the network: an async client of the local node's HTTP API.

It speaks the routes of DESIGN.md §4 (`/api/status`, `/api/token`, `/api/drop`,
`/api/fleet`, `/api/endpoints`, `/v1/chat/completions`, `/health`) and turns their JSON
into the small frozen dataclasses the widgets render.
aiohttp errors are translated here, at the edge, into `NodeUnreachable` (nothing answers)
and `NodeAPIError` (the node answered with an error), both `MeshError`s.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from meshllm.election.fleet import (
    UNSEEN,
    ResourceSeen,
    fleet_view,
    resources_from_status,
    without_resources,
)
from meshllm.election.pool_view import announcements_from_status
from meshllm.errors import MeshError
from meshllm.gossip import PeerAnnouncement
from meshllm.paths import StatePaths

MEMORY_KINDS = ("vram", "ram")
"""What a node's memory for models is: GPU memory, or RAM on a CPU-only node."""
ENDPOINT_KINDS = ("auto", "openai", "ollama")
"""What `POST /api/endpoints` takes as an endpoint's kind ('auto': the node probes it)."""


class NodeUnreachable(MeshError):
    """Nothing answers on the node's port (connection refused, timeout, reset)."""


class NodeAPIError(MeshError):
    """The node answered, but with an error (OpenAI-shaped body) or a malformed one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Gpu:
    """One GPU of a node."""

    index: int
    name: str
    vram_total: int
    vram_used: int


@dataclass(frozen=True)
class Resources:
    """What a node reported about its machine; absent (None) when the node did not say."""

    cpu_count: int
    cpu_percent: float
    ram_total: int
    ram_used: int
    gpus: tuple[Gpu, ...]


@dataclass(frozen=True)
class NodeInfo:
    """One node of the mesh as the local node sees it (itself included, `is_self`)."""

    node_id: str
    role: str
    serving: Mapping[str, str]
    addrs: tuple[str, ...]
    version: str
    load: int
    memory_bytes: int
    """Bytes the node can give to models, of `memory_kind`."""
    memory_kind: str | None
    """'vram' (GPU memory) or 'ram' (a CPU-only node); None when the node did not say."""
    resources: Resources | None
    rtt_ms: float | None
    last_seen_s: float | None
    is_self: bool = False
    resources_state: str = "unknown"
    """'live', 'stale' (`resources` are the last figures heard, `resources_age_s` old) or
    'unknown' (`resources` is None)."""
    resources_age_s: float | None = None
    failures: Mapping[str, str] = field(default_factory=dict)
    """model -> why the node gave up serving it (its `serving` shows it 'failed').

    The cause's first line sums it up; the lines after it are the server's last log lines.
    """


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the mesh catalog."""

    model: str
    warm: bool
    nodes: tuple[str, ...]
    size_bytes: int | None


@dataclass(frozen=True)
class MeshStatus:
    """A parsed `/api/status`: this node first in `nodes`, then the live peers."""

    node_id: str
    role: str
    http_port: int | None
    version: str
    nodes: tuple[NodeInfo, ...]
    catalog: tuple[CatalogEntry, ...]
    idle_reason: str | None = None
    """Why this node's auto-assignment serves nothing; None when it serves (or was told what)."""
    announcements: tuple[PeerAnnouncement, ...] = ()
    """Every node's announcement as `/api/status` gave it (fields that do not validate at
    their defaults): what `meshllm.election.pool_view` reads (pool, demand, states)."""
    resources_seen: Mapping[str, ResourceSeen] = field(default_factory=dict)
    """Each node's live resources and how fresh they are, by node id."""

    def fleet(self, now_ms: int) -> dict[str, Any]:
        """The fleet view (`meshllm.election.fleet.fleet_view`) of this status: what the
        node's `/api/fleet` answers, from the same snapshot as the tables."""
        return fleet_view(self.announcements, self.resources_seen, now_ms)

    def announcement(self, node_id: str) -> PeerAnnouncement | None:
        """The announcement of `node_id`, None if the status had none that parsed."""
        return next((a for a in self.announcements if a.node_id == node_id), None)

    @property
    def me(self) -> NodeInfo:
        """This node."""
        return self.nodes[0]

    def serving_nodes(self, model: str) -> list[NodeInfo]:
        """The nodes that serve `model`, in any state."""
        return [n for n in self.nodes if model in n.serving]

    def failed_nodes(self, model: str) -> list[tuple[NodeInfo, str | None]]:
        """(node, cause) of each node that gave up serving `model`; None: no cause given."""
        return [
            (n, n.failures.get(model))
            for n in self.nodes
            if model in n.failures or n.serving.get(model) == "failed"
        ]


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _opt_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def parse_resources(raw: Any) -> Resources | None:
    """Resources from the API; `{}`, null or a malformed value mean unknown."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    gpus = tuple(
        Gpu(
            index=_int(g.get("index")),
            name=str(g.get("name", "")),
            vram_total=_int(g.get("vram_total")),
            vram_used=_int(g.get("vram_used")),
        )
        for g in raw.get("gpus") or ()
        if isinstance(g, Mapping)
    )
    return Resources(
        cpu_count=_int(raw.get("cpu_count")),
        cpu_percent=_opt_float(raw.get("cpu_percent")) or 0.0,
        ram_total=_int(raw.get("ram_total")),
        ram_used=_int(raw.get("ram_used")),
        gpus=gpus,
    )


def parse_failures(raw: Any) -> dict[str, str]:
    """`failures` (model -> cause) from the API; absent or malformed is empty.

    Entries that are not a string for a string are dropped, the others kept.
    """
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


@dataclass(frozen=True)
class EndpointInfo:
    """One external server a node fronts, as `/api/endpoints` lists it (never its key)."""

    id: str
    url: str
    kind: str
    name: str
    node_id: str
    state: str
    """'up', 'down', 'probation' or 'draining'."""
    has_api_key: bool = False
    latency_ms: float | None = None
    error: str | None = None
    models: Mapping[str, bool] = field(default_factory=dict)
    """model -> whether the server has it loaded (warm)."""


def parse_endpoint(raw: Any) -> EndpointInfo | None:
    """An endpoint record from the API; None when it has no id."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str) or not raw["id"]:
        return None
    models = raw.get("models")
    error = raw.get("error")
    return EndpointInfo(
        id=raw["id"],
        url=str(raw.get("url") or ""),
        kind=str(raw.get("kind") or "?"),
        name=str(raw.get("name") or ""),
        node_id=str(raw.get("node_id") or "?"),
        state=str(raw.get("state") or "?"),
        has_api_key=bool(raw.get("has_api_key")),
        latency_ms=_opt_float(raw.get("latency_ms")),
        error=error if isinstance(error, str) and error else None,
        models={
            str(m): bool(d.get("warm")) if isinstance(d, Mapping) else False
            for m, d in models.items()
        }
        if isinstance(models, Mapping)
        else {},
    )


def parse_endpoints(raw: Any) -> tuple[EndpointInfo, ...]:
    """`GET /api/endpoints`: every node's endpoints, by node then id."""
    items = raw.get("endpoints") if isinstance(raw, Mapping) else None
    if not isinstance(items, list):
        raise NodeAPIError("/api/endpoints answered no endpoint list")
    found = (parse_endpoint(e) for e in items)
    return tuple(sorted((e for e in found if e is not None), key=lambda e: (e.node_id, e.id)))


def _parse_node(raw: Mapping[str, Any], seen: ResourceSeen, *, is_self: bool) -> NodeInfo:
    serving = raw.get("serving") or {}
    return NodeInfo(
        node_id=str(raw.get("node_id", "?")),
        role=str(raw.get("role", "?")),
        serving={str(k): str(v) for k, v in serving.items()}
        if isinstance(serving, Mapping)
        else {},
        addrs=tuple(str(a) for a in raw.get("addrs") or ()),
        version=str(raw.get("version", "")),
        load=_int(raw.get("load")),
        memory_bytes=_int(raw.get("memory_bytes")),
        memory_kind=kind if (kind := raw.get("memory_kind")) in MEMORY_KINDS else None,
        resources=None if seen.state == "unknown" else parse_resources(seen.resources),
        rtt_ms=None if is_self else _opt_float(raw.get("rtt_ms")),
        last_seen_s=None if is_self else _opt_float(raw.get("last_seen_s")),
        is_self=is_self,
        resources_state=seen.state,
        resources_age_s=seen.age_s,
        failures=parse_failures(raw.get("failures")),
    )


def parse_status(raw: Any) -> MeshStatus:
    """Parse a `/api/status` body; missing fields get neutral defaults."""
    if not isinstance(raw, Mapping) or "node_id" not in raw:
        raise NodeAPIError("/api/status answered something that is not a node status")
    seen = resources_from_status(raw)

    def node(entry: Mapping[str, Any], is_self: bool) -> NodeInfo:
        return _parse_node(entry, seen.get(str(entry.get("node_id")), UNSEEN), is_self=is_self)

    me = node(raw, True)
    peers = sorted(
        (node(p, False) for p in raw.get("peers") or () if isinstance(p, Mapping)),
        key=lambda n: n.node_id,
    )
    catalog = tuple(
        CatalogEntry(
            model=str(c.get("model", "?")),
            warm=bool(c.get("warm")),
            nodes=tuple(str(n) for n in c.get("nodes") or ()),
            size_bytes=None if c.get("size_bytes") is None else _int(c.get("size_bytes")),
        )
        for c in raw.get("catalog") or ()
        if isinstance(c, Mapping)
    )
    http_port = raw.get("http_port")
    idle_reason = raw.get("idle_reason")
    return MeshStatus(
        node_id=me.node_id,
        role=me.role,
        http_port=None if http_port is None else _int(http_port),
        version=me.version,
        nodes=(me, *peers),
        catalog=catalog,
        idle_reason=idle_reason if isinstance(idle_reason, str) and idle_reason else None,
        announcements=tuple(announcements_from_status(without_resources(raw))),
        resources_seen=seen,
    )


def _error_message(body: Any, status: int) -> str:
    """The message of an OpenAI-shaped error body, or a generic one."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return f"HTTP {status}"


@contextlib.contextmanager
def map_exceptions(url: str) -> Iterator[None]:
    """Translate aiohttp and timeout errors into `NodeUnreachable` / `NodeAPIError`."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        reason = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) else exc
        raise NodeUnreachable(f"no node answers on {url}: {reason}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise NodeUnreachable(f"the node on {url} dropped the connection: {exc}") from exc
    except TimeoutError as exc:
        raise NodeUnreachable(f"the node on {url} did not answer in time") from exc
    except aiohttp.ContentTypeError as exc:
        raise NodeAPIError(f"the node on {url} answered with no JSON", exc.status) from exc
    except (aiohttp.ClientError, json.JSONDecodeError) as exc:
        raise NodeAPIError(f"bad answer from the node on {url}: {exc}") from exc


class NodeClient:
    """Async client of one local node's HTTP API (127.0.0.1:`port` by default).

    The aiohttp session is created on first use, inside the running event loop, and
    closed by `close()`.
    """

    def __init__(
        self,
        port: int,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        timeout: float = 3.0,
    ) -> None:
        self.port = port
        self.host = host
        self.state_dir = Path(state_dir).expanduser()
        self.base_url = f"http://{host}:{port}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def address(self) -> str:
        """host:port of the node, for messages."""
        return f"{self.host}:{self.port}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(base_url=self.base_url)
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _json(self, resp: aiohttp.ClientResponse) -> Any:
        body = await resp.json(content_type=None)
        if resp.status >= 400:
            raise NodeAPIError(_error_message(body, resp.status), resp.status)
        return body

    async def health(self) -> bool:
        """True when `/health` answers 200."""
        with map_exceptions(self.address):
            async with self._http().get("/health", timeout=self._timeout) as resp:
                return resp.status == 200

    async def status(self) -> MeshStatus:
        """`GET /api/status`, parsed."""
        with map_exceptions(self.address):
            async with self._http().get("/api/status", timeout=self._timeout) as resp:
                return parse_status(await self._json(resp))

    def admin_token(self) -> str:
        """The admin token, read from `<state_dir>/admin_token` at each use."""
        path = StatePaths(self.state_dir).admin_token
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise NodeAPIError(f"cannot read the admin token {path}: {exc.strerror}") from exc

    def _chat_headers(self) -> dict[str, str]:
        """The admin token, when this machine has it: once the mesh has API keys, a chat
        needs a key, and the admin token is this machine's."""
        try:
            return self._admin_headers()
        except NodeAPIError:
            return {}

    def _admin_headers(self) -> dict[str, str]:
        """The header of a change (or a secret) the node takes only with the admin token."""
        return {"Authorization": f"Bearer {self.admin_token()}"}

    async def join_token(self) -> str:
        """`GET /api/token`: the mesh's join token (it needs the admin token: it holds the
        mesh secret, so `/api/status` does not carry it)."""
        headers = self._admin_headers()
        with map_exceptions(self.address):
            async with self._http().get(
                "/api/token", headers=headers, timeout=self._timeout
            ) as resp:
                body = await self._json(resp)
        token = body.get("token") if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise NodeAPIError("/api/token answered no token")
        return token

    async def drop(self, model: str) -> list[str]:
        """`POST /api/drop`: ask the nodes serving `model` to stop; returns their ids."""
        headers = self._admin_headers()
        with map_exceptions(self.address):
            async with self._http().post(
                "/api/drop", json={"model": model}, headers=headers, timeout=self._timeout
            ) as resp:
                body = await self._json(resp)
        nodes = body.get("nodes") if isinstance(body, Mapping) else None
        return [str(n) for n in nodes or ()]

    async def fleet(self) -> dict[str, Any]:
        """`GET /api/fleet`: the node's fleet view (`meshllm.election.fleet.fleet_view`)."""
        with map_exceptions(self.address):
            async with self._http().get("/api/fleet", timeout=self._timeout) as resp:
                body = await self._json(resp)
        if not isinstance(body, dict) or "summary" not in body:
            raise NodeAPIError("/api/fleet answered something that is not a fleet")
        return body

    async def endpoints(self) -> tuple[EndpointInfo, ...]:
        """`GET /api/endpoints`: every node's endpoints."""
        with map_exceptions(self.address):
            async with self._http().get("/api/endpoints", timeout=self._timeout) as resp:
                return parse_endpoints(await self._json(resp))

    async def add_endpoint(
        self, url: str, kind: str = "auto", name: str | None = None, api_key: str | None = None
    ) -> EndpointInfo:
        """`POST /api/endpoints`: front the server at `url` from this node; its record.

        `kind` is one of `ENDPOINT_KINDS`; `name` and `api_key` are left out when empty.
        """
        body = {"url": url, "kind": kind}
        if name:
            body["name"] = name
        if api_key:
            body["api_key"] = api_key
        headers = self._admin_headers()
        with map_exceptions(self.address):
            async with self._http().post(
                "/api/endpoints", json=body, headers=headers, timeout=self._timeout
            ) as resp:
                answer = await self._json(resp)
        record = parse_endpoint(answer.get("endpoint") if isinstance(answer, Mapping) else None)
        if record is None:
            raise NodeAPIError("/api/endpoints answered no endpoint")
        return record

    async def remove_endpoint(self, endpoint_id: str) -> str:
        """`DELETE /api/endpoints/{id}`: stop fronting an endpoint; the id removed."""
        headers = self._admin_headers()
        path = f"/api/endpoints/{urllib.parse.quote(endpoint_id, safe='')}"
        with map_exceptions(self.address):
            async with self._http().delete(path, headers=headers, timeout=self._timeout) as resp:
                answer = await self._json(resp)
        removed = answer.get("removed") if isinstance(answer, Mapping) else None
        return str(removed or endpoint_id)

    async def chat_stream(
        self, model: str, messages: Sequence[Mapping[str, str]]
    ) -> AsyncIterator[str]:
        """Stream a chat completion through the proxy; yields content deltas as they come."""
        # No total timeout: a long answer is fine as long as bytes keep coming.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120)
        payload = {"model": model, "messages": list(messages), "stream": True}
        with map_exceptions(self.address):
            async with self._http().post(
                "/v1/chat/completions", json=payload, timeout=timeout, headers=self._chat_headers()
            ) as resp:
                if resp.status >= 400:
                    await self._json(resp)  # raises NodeAPIError with the node's message
                async for raw_line in resp.content:
                    delta = _sse_delta(raw_line)
                    if delta is _DONE:
                        return
                    if delta:
                        yield delta


_DONE = object()


def _sse_delta(raw_line: bytes) -> Any:
    """The content delta of one SSE line, `_DONE` at the end, None for anything else."""
    line = raw_line.decode("utf-8", "replace").strip()
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    chunk = json.loads(data)
    if isinstance(chunk, Mapping) and "error" in chunk:
        raise NodeAPIError(_error_message(chunk, 502))
    try:
        return chunk["choices"][0]["delta"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
