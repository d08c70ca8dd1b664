"""A fake meshllm node HTTP API for the console tests: an aiohttp app over mutable status.

Tests change `FakeNode.status` (or use `add_peer` / `remove_peer`) and watch the console
follow. Requests to `/api/drop`, `/api/endpoints` and `/v1/chat/completions` are recorded.
The endpoints (`FakeNode.endpoints`, as `/api/endpoints` lists them) also show in the
announcement of the node that fronts each, in `/api/status`, as a real node's do.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from meshllm.election.fleet import fleet_from_status

ADMIN_TOKEN = "admin-secret-0123"
JOIN_TOKEN = "mesh1-ZmFrZS10b2tlbi1mb3ItdGVzdHM"
"""What /api/token answers (with the admin token); /api/status never carries it."""
GIB = 1024**3
ANSWER_CHUNKS = ["Hello", " from", " the", " fake", " mesh", "!"]
ANSWER = "".join(ANSWER_CHUNKS)


def resources(
    cpu: float,
    ram_used: float,
    ram_total: float,
    gpus: list[Any],
    load: list[float] | None = None,
) -> dict[str, Any]:
    """A resources block: ram in GiB, gpus as (name, used GiB, total GiB) and optionally
    (…, util %, °C, W, W limit), each reading None when the GPU gives none."""
    return {
        "cpu_count": 8,
        "cpu_percent": cpu,
        "load_avg": load,
        "ram_total": int(ram_total * GIB),
        "ram_used": int(ram_used * GIB),
        "gpus": [_gpu(i, *g) for i, g in enumerate(gpus)],
    }


def _gpu(
    index: int,
    name: str,
    used: float,
    total: float,
    util: float | None = None,
    temp: float | None = None,
    power: float | None = None,
    limit: float | None = None,
) -> dict[str, Any]:
    return {
        "index": index,
        "name": name,
        "uuid": f"GPU-{index:08x}",
        "util_percent": util,
        "vram_total": int(total * GIB),
        "vram_used": int(used * GIB),
        "temperature_c": temp,
        "power_w": power,
        "power_limit_w": limit,
    }


def peer(
    node_id: str,
    port: int,
    *,
    role: str = "worker",
    serving: dict[str, str] | None = None,
    failures: dict[str, str] | None = None,
    res: dict[str, Any] | None = None,
    memory_gib: float = 0,
    memory_kind: str | None = "ram",
    rtt_ms: float | None = 1.5,
    resources_state: str | None = None,
    resources_age_s: float | None = None,
) -> dict[str, Any]:
    """One live peer as /api/status lists it; `memory_kind` None leaves the kind out.

    `res` None: no figures heard (null, 'unknown'); the state is 'live' otherwise, unless
    `resources_state` says it.
    """
    entry = {
        "node_id": node_id,
        "addrs": [f"127.0.0.1:{port}"],
        "role": role,
        "serving": serving or {},
        "failures": failures or {},
        "available_models": {},
        "requested_models": [],
        "memory_bytes": int(memory_gib * GIB),
        "memory_kind": memory_kind,
        "resources": res,
        "resources_state": resources_state or ("live" if res else "unknown"),
        "resources_age_s": resources_age_s
        if resources_age_s is not None
        else (0.7 if res else None),
        "load": 0,
        "version": "0.1.0",
        "incarnation": 1,
        "seq": 3,
        "rtt_ms": rtt_ms,
        "last_seen_s": 0.4,
    }
    if memory_kind is None:
        del entry["memory_kind"]
    return entry


GEMMA = "gemma-3-270m-q4_k_m"
QWEN = "qwen2.5-0.5b-instruct-q4_k_m"
LLAMA = "llama-3.2-1b-instruct-q4_k_m"
SIGILL = (
    "SIGILL while loading, 3 starts in a row; last log lines:\n"
    "llama_model_loader: loaded meta data with 30 key-value pairs\n"
    "load_tensors: CPU_Mapped model buffer size = 762.81 MiB\n"
    "Illegal instruction (core dumped)"
)
"""Why the CPU-only peer gave up serving llama: its CPU lacks an instruction set."""


def sample_status() -> dict[str, Any]:
    """A fixed five-node mesh: a host, three workers (one of unknown resources), a client.

    The CPU-only worker serves gemma and gave up on llama (SIGILL), which stays cold; its
    resources are stale (last heard 21 s ago).
    """
    return {
        "node_id": "a1b2c3d4e5f60718",
        "role": "host",
        "serving": {GEMMA: "ready"},
        "failures": {},
        "idle_reason": None,
        "addrs": ["127.0.0.1:9338"],
        "http_port": 9337,
        "version": "0.1.0",
        "load": 0,
        "memory_bytes": 24 * GIB,
        "memory_kind": "vram",
        "resources": resources(
            23.0, 11.5, 31.3, [("RTX 4090", 9.1, 24.0, 31, 58, 142.0, 450.0)], [1.2, 0.9, 0.8]
        ),
        "resources_state": "live",
        "resources_age_s": 0.0,
        "peers": [
            peer(
                "b7e4f1029c3d5a66",
                9340,
                serving={GEMMA: "ready", LLAMA: "failed"},
                failures={LLAMA: SIGILL},
                res=resources(61.0, 5.2, 15.6, [], [3.9, 3.1, 2.4]),
                memory_gib=8.8,  # a CPU-only node: free RAM less the margin
                resources_state="stale",
                resources_age_s=21.0,
            ),
            peer(
                "c93d0a7be1f24c58",
                9342,
                serving={GEMMA: "ready", QWEN: "starting"},
                # An A10 with no power reading (NVML NotSupported reads None).
                res=resources(88.0, 27.0, 31.3, [("A10", 20.5, 24.0, 97, 71)], [7.5, 6.8, 6.1]),
                memory_gib=24,
                memory_kind="vram",
                rtt_ms=12.4,
            ),
            peer("d0f15e6a7b8c9d21", 9344, serving={QWEN: "fetching"}, res=None, memory_kind=None),
            peer("e55aa01234bcdef9", 9346, role="client", res=resources(4.0, 2.0, 7.7, [], None)),
        ],
        "catalog": [
            {
                "model": GEMMA,
                "warm": True,
                "nodes": ["a1b2c3d4e5f60718", "b7e4f1029c3d5a66", "c93d0a7be1f24c58"],
                "size_bytes": 253_000_000,
            },
            {
                "model": QWEN,
                "warm": True,
                "nodes": ["c93d0a7be1f24c58"],
                "size_bytes": 491_000_000,
            },
            {"model": LLAMA, "warm": False, "nodes": [], "size_bytes": None},
        ],
    }


IDLE_REASON = (
    f"no model fits this node's 0.5 GiB of RAM for models (the smallest, {GEMMA}, needs 0.8 GiB)"
)


def idle_status() -> dict[str, Any]:
    """The sample mesh, but this node is a small CPU-only worker that serves nothing."""
    status = sample_status()
    status.update(
        role="worker",
        serving={},
        memory_bytes=GIB // 2,
        memory_kind="ram",
        resources=resources(3.0, 2.9, 3.8, []),
        idle_reason=IDLE_REASON,
    )
    gemma = status["catalog"][0]
    gemma["nodes"] = [n for n in gemma["nodes"] if n != status["node_id"]]
    return status


MISTRAL = "mistral-7b-instruct-q4_k_m"
GPU_BOX = {
    "id": "ep-gpubox",
    "url": "http://10.0.0.7:11434",
    "kind": "ollama",
    "name": "gpu-box",
    "has_api_key": False,
    "node_id": "c93d0a7be1f24c58",
    "state": "up",
    "latency_ms": 12.0,
    "error": None,
    "models": {MISTRAL: {"warm": True, "size": 4_370_000_000}, GEMMA: {"warm": False}},
}
"""An Ollama box the A10 worker fronts: mistral loaded, gemma on its disk."""
VLLM = {
    "id": "ep-vllm",
    "url": "https://vllm.lab.example:8000",
    "kind": "openai",
    "name": "lab-vllm",
    "has_api_key": True,
    "node_id": "a1b2c3d4e5f60718",
    "state": "down",
    "latency_ms": None,
    "error": "connection refused",
    "models": {MISTRAL: {"warm": True}},
}
"""A vLLM server this node fronts, down."""


def endpoint_status() -> dict[str, Any]:
    """The sample mesh whose A10 worker fronts an Ollama box (and serves its models)."""
    status = sample_status()
    # Its own copies of gemma and qwen are on its disk: mistral is only the box's.
    status["peers"][1]["available_models"] = {GEMMA: 253_000_000, QWEN: 491_000_000}
    status["peers"][1]["serving"][MISTRAL] = "ready"
    status["serving"][MISTRAL] = "failed"
    status["catalog"].insert(
        1, {"model": MISTRAL, "warm": True, "nodes": ["c93d0a7be1f24c58"], "size_bytes": None}
    )
    return status


PHI = "phi-3-mini-4k-instruct-q4_k_m"
NOW_MS = 1_750_000_000_000
"""The wall clock (ms) the pool states of `pool_status` are reckoned from."""


def pool_status() -> dict[str, Any]:
    """The sample mesh with pool states, as of `NOW_MS`.

    gemma is hot (pinned) here, cooling on b7e4 (42 s left), warming on c93d (40 %);
    qwen is cooling on c93d and fetching on d0f1 (50 %); phi is warming on c93d and cold
    on d0f1.
    """
    status = sample_status()
    status["pool"] = {GEMMA: {"state": "hot", "since": NOW_MS - 600_000, "pinned": True}}
    status["demand"] = {GEMMA: {"rpm": 12.0, "last": NOW_MS - 1_000}}
    b7e4, c93d, d0f1 = status["peers"][:3]
    b7e4["pool"] = {GEMMA: {"state": "cooling", "since": NOW_MS - 60_000, "until": NOW_MS + 42_500}}
    c93d["serving"] = {GEMMA: "starting", QWEN: "ready", PHI: "starting"}
    c93d["pool"] = {
        GEMMA: {"state": "warming", "since": NOW_MS - 4_000, "eta": 10.0},
        QWEN: {"state": "cooling", "since": NOW_MS - 10_000, "until": NOW_MS + 42_500},
        PHI: {"state": "warming", "since": NOW_MS - 4_000, "eta": 10.0},
    }
    c93d["available_models"] = {GEMMA: 253_000_000, QWEN: 491_000_000, PHI: 2_390_000_000}
    d0f1["pool"] = {QWEN: {"state": "fetching", "since": NOW_MS - 30_000, "eta": 60.0}}
    d0f1["available_models"] = {PHI: 2_390_000_000}
    status["catalog"].insert(
        2, {"model": PHI, "warm": False, "nodes": [], "size_bytes": 2_390_000_000}
    )
    return status


class FakeNode:
    """The node API of DESIGN §4 over `status`, which tests may change at any time."""

    def __init__(
        self,
        status: dict[str, Any] | None = None,
        admin_token: str = ADMIN_TOKEN,
        endpoints: list[dict[str, Any]] | None = None,
    ):
        self.status = status if status is not None else sample_status()
        self.admin_token = admin_token
        self.drops: list[dict[str, Any]] = []
        """Each /api/drop request: {"body", "authorization"}."""
        self.endpoints: list[dict[str, Any]] = copy.deepcopy(endpoints or [])
        """The endpoints, as /api/endpoints lists them."""
        self.endpoint_requests: list[dict[str, Any]] = []
        """Each POST or DELETE of /api/endpoints: {"method", "body" or "id", "authorization"}."""
        self.endpoint_refusal: tuple[int, str] | None = None
        """(status, message) the next valid POST /api/endpoints answers with, e.g. the
        node could not reach the server; None: it is added."""
        self.listing_refusal: tuple[int, str] | None = None
        """(status, message) GET /api/endpoints answers with (an older node: 404)."""
        self._next_endpoint = 1
        self.chats: list[dict[str, Any]] = []
        self.chunk_delay = 0.02
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/token", self._token)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/api/drop", self._drop)
        app.router.add_get("/api/fleet", self._fleet)
        app.router.add_get("/api/endpoints", self._list_endpoints)
        app.router.add_post("/api/endpoints", self._add_endpoint)
        app.router.add_delete("/api/endpoints/{id}", self._remove_endpoint)
        self.app = app

    # Mutations for tests.

    def add_peer(self, entry: dict[str, Any]) -> None:
        """A peer joins."""
        self.status["peers"].append(entry)

    def remove_peer(self, node_id: str) -> None:
        """A peer dies: it simply disappears from /api/status."""
        self.status["peers"] = [p for p in self.status["peers"] if p["node_id"] != node_id]

    # Serving.

    async def start(self, port: int = 0) -> int:
        """Serve on 127.0.0.1:`port` (0: a free one); returns the port."""
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Handlers.

    @staticmethod
    def _error(status: int, message: str, code: str) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        return web.json_response(body, status=status)

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def current_status(self) -> dict[str, Any]:
        """/api/status: `status`, each node announcing the endpoints it fronts."""
        status = copy.deepcopy(self.status)
        for node in [status, *status["peers"]]:
            fronted = {
                e["id"]: {
                    "name": e["name"],
                    "kind": e["kind"],
                    "state": e["state"],
                    "models": copy.deepcopy(e["models"]),
                }
                | {k: e[k] for k in ("latency_ms", "error") if e.get(k) is not None}
                for e in self.endpoints
                if e["node_id"] == node["node_id"]
            }
            if fronted:
                node["endpoints"] = fronted
        return status

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self.current_status())

    async def _fleet(self, _: web.Request) -> web.Response:
        return web.json_response(fleet_from_status(self.current_status(), NOW_MS))

    async def _list_endpoints(self, _: web.Request) -> web.Response:
        if self.listing_refusal is not None:
            return self._error(*self.listing_refusal, "not_found")
        return web.json_response({"endpoints": copy.deepcopy(self.endpoints)})

    async def _add_endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers.get("Authorization")
        self.endpoint_requests.append({"method": "POST", "body": body, "authorization": auth})
        if auth != f"Bearer {self.admin_token}":
            return self._error(401, "bad admin token", "unauthorized")
        url, kind = body.get("url"), body.get("kind", "auto")
        unknown = set(body) - {"url", "kind", "name", "api_key", "node"}
        if unknown or not isinstance(url, str) or kind not in ("auto", "openai", "ollama"):
            return self._error(400, "bad endpoint body", "invalid_request")
        if not url.startswith(("http://", "https://")):
            return self._error(400, f"not an http(s) URL: {url}", "invalid_endpoint")
        if self.endpoint_refusal is not None:
            status, message = self.endpoint_refusal
            return self._error(status, message, "invalid_endpoint")
        if kind == "auto":
            kind = "ollama" if url.rstrip("/").endswith(":11434") else "openai"
        record = {
            "id": f"ep-new{self._next_endpoint}",
            "url": url,
            "kind": kind,
            "name": body.get("name") or "",
            "has_api_key": bool(body.get("api_key")),
            "node_id": self.status["node_id"],
            "state": "probation",
            "latency_ms": None,
            "error": None,
            "models": {},
        }
        self._next_endpoint += 1
        self.endpoints.append(record)
        return web.json_response({"endpoint": record}, status=201)

    async def _remove_endpoint(self, request: web.Request) -> web.Response:
        endpoint_id = request.match_info["id"]
        auth = request.headers.get("Authorization")
        self.endpoint_requests.append(
            {"method": "DELETE", "id": endpoint_id, "authorization": auth}
        )
        if auth != f"Bearer {self.admin_token}":
            return self._error(401, "bad admin token", "unauthorized")
        record = next((e for e in self.endpoints if e["id"] == endpoint_id), None)
        if record is None:
            return self._error(404, f"no endpoint {endpoint_id}", "not_found")
        self.endpoints.remove(record)
        return web.json_response({"removed": endpoint_id, "node_id": record["node_id"]})

    async def _token(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.admin_token}":
            return self._error(401, "bad admin token", "unauthorized")
        return web.json_response({"token": JOIN_TOKEN})

    async def _models(self, _: web.Request) -> web.Response:
        data = [
            {
                "id": c["model"],
                "object": "model",
                "meshllm": {"warm": c["warm"], "nodes": c["nodes"]},
            }
            for c in self.status["catalog"]
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chats.append(body)
        warm = {c["model"] for c in self.status["catalog"] if c["warm"]}
        if body.get("model") not in warm:
            return self._error(503, f"no node serves {body.get('model')}", "no_target")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(ANSWER_CHUNKS):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(self.chunk_delay)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _drop(self, request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers.get("Authorization")
        self.drops.append({"body": body, "authorization": auth})
        if auth != f"Bearer {self.admin_token}":
            return self._error(401, "bad admin token", "unauthorized")
        model = body.get("model")
        entry = next((c for c in self.status["catalog"] if c["model"] == model), None)
        if entry is None or not entry["warm"]:
            return self._error(404, f"no node serves {model}", "model_not_found")
        nodes = list(entry["nodes"])
        entry["warm"], entry["nodes"] = False, []
        for node in [self.status, *self.status["peers"]]:
            node["serving"].pop(model, None)
            node.get("failures", {}).pop(model, None)
        return web.json_response({"dropped": model, "nodes": nodes})


@contextmanager
def serve_in_thread(node: FakeNode) -> Iterator[int]:
    """Serve `node` from its own event loop in a thread (for sync tests); yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(node.start(), loop).result(timeout=10)
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
