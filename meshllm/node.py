"""Node: wires identity, mesh credentials, gossip, serving and HTTP, and owns their tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import psutil
from aiohttp import web

from meshllm import __version__
from meshllm.config import Config
from meshllm.errors import ConfigError, TransferError
from meshllm.gossip.announcement import PeerAnnouncement, Role
from meshllm.gossip.frames import Frame, FrameType, make_frame
from meshllm.gossip.service import Gossip, GossipSettings
from meshllm.gossip.state import MeshState, StateEvent
from meshllm.gossip.transport import Link, QuicFrameStream, QuicTransport, split_addr
from meshllm.identity import Identity
from meshllm.join_token import JoinToken, MeshCredentials
from meshllm.proxy import Forwarder, serve_tunnel
from meshllm.proxy_mesh import NodeProxyMesh
from meshllm.resources import host_resources
from meshllm.serving.manager import ServingManager

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin_token"
RESOURCES_INTERVAL = 10.0  # seconds between refreshes of cpu/ram/gpu figures


class Node:
    """One meshllm daemon."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.identity = (
            Identity.generate() if config.client else Identity.load_or_create(config.state_dir)
        )
        self.credentials, self.seeds = self._mesh_credentials()
        self.admin_token = "" if config.client else load_admin_token(config.state_dir)
        self.stopped = asyncio.Event()
        self.gossip: Gossip | None = None
        self.serving: ServingManager | None = None
        self.proxy_mesh: NodeProxyMesh | None = None
        self.request_exit = self.stopped.set  # replaced by run() with its signal-aware stop
        self.transport: QuicTransport | None = None
        self.quic_addr: tuple[str, int] | None = None
        self.http_port: int | None = None
        self.token = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.started_at = time.time()

    # lifecycle

    async def start(self) -> None:
        """Bind the QUIC port and the HTTP port, join the mesh."""
        cfg = self.config
        me = PeerAnnouncement(
            node_id=self.identity.node_id,
            mesh_id=self.credentials.mesh_id,
            role=Role.CLIENT if cfg.client else Role.WORKER,
            requested_models=[] if cfg.client else list(cfg.models),
            resources=host_resources(),
            version=__version__,
            incarnation=time.time_ns() // 1_000_000,  # a restart always outranks the past
        )
        state = MeshState(me)
        self.gossip = Gossip(
            state,
            GossipSettings(
                probe_interval=cfg.probe_interval,
                probe_timeout=cfg.probe_timeout,
                gossip_interval=cfg.gossip_interval,
            ),
            on_events=self._on_mesh_events,
            on_stream=self._on_stream,
        )
        self.transport = QuicTransport(self.identity, self.credentials, self.gossip)
        self.transport.incarnation = lambda: state.me.incarnation
        self.gossip.add_handler(FrameType.DROP, self._on_drop_frame)
        if not cfg.client:
            self.serving = ServingManager(cfg, self.gossip, self.identity, self.credentials.secret)
            self.serving.on_dropped = lambda model: self._exit_soon()
        self.proxy_mesh = NodeProxyMesh(self.gossip, self.serving, Forwarder())
        if self.serving is not None:
            self.serving.on_serving_changed = self.proxy_mesh.notify_changed
        try:
            host, port = split_addr(cfg.bind)
        except ValueError as exc:
            raise ConfigError(f"--bind: {exc}") from None
        self.quic_addr = await self._bind(host, port)
        addrs = cfg.advertise or advertised_addrs(self.quic_addr)
        self.token = JoinToken(
            self.credentials.mesh_id, self.credentials.secret, addrs, self.identity.node_id
        ).encode()
        await self._start_http()
        state.me = state.me.bump(addrs=addrs, http_port=self.http_port)
        self.gossip.start(self.transport, self.seeds)
        if self.serving is not None:
            await self.serving.start()
        self._spawn(self._refresh_resources())

    async def _bind(self, host: str, port: int) -> tuple[str, int]:
        """Bind QUIC (UDP) and the model-file port (TCP), which share one port number."""
        assert self.transport is not None
        for attempt in range(20):
            addr = await self.transport.start(host, port)
            if self.serving is None:
                return addr
            try:
                await self.serving.open_file_port(addr)
                return addr
            except TransferError:
                # An OS-picked UDP port may be taken on TCP: pick another pair.
                await self.transport.close()
                if port != 0 or attempt == 19:
                    raise
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        """Leave the mesh cleanly and release every port and task."""
        if self.gossip is not None:
            await self.gossip.leave()
        for task in list(self._tasks):
            task.cancel()
        if self.serving is not None:
            await self.serving.stop()
        if self.proxy_mesh is not None:
            await self.proxy_mesh.forwarder.close()
        if self.transport is not None:
            await self.transport.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self.stopped.set()

    async def run(self) -> None:
        """Start, print the banner, and run until SIGINT/SIGTERM or a drop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.request_exit = stop.set
        await self.start()
        self.print_banner()
        await stop.wait()
        log.info("stopping")
        await self.stop()

    def print_banner(self) -> None:
        assert self.quic_addr is not None
        lines = [
            f"meshllm {__version__}",
            f"node id  {self.identity.node_id}",
            f"quic     {self.quic_addr[0]}:{self.quic_addr[1]}",
            f"http     http://127.0.0.1:{self.http_port}",
            f"token    {self.token}",
            "ready",
        ]
        print("\n".join(lines), flush=True)

    # mesh

    @property
    def state(self) -> MeshState:
        assert self.gossip is not None
        return self.gossip.state

    def _mesh_credentials(self) -> tuple[MeshCredentials, list[str]]:
        cfg = self.config
        if cfg.join:
            token = JoinToken.decode(cfg.join)
            if not cfg.client:
                token.credentials.save(cfg.state_dir)
            return token.credentials, list(token.addrs)
        if cfg.client:
            raise ConfigError("--client needs --join TOKEN: a lite client joins an existing mesh")
        saved = MeshCredentials.load(cfg.state_dir)
        if saved is not None:
            return saved, []
        created = MeshCredentials.create()
        created.save(cfg.state_dir)
        return created, []

    def _on_mesh_events(self, events: list[StateEvent]) -> None:
        """Membership changed: requests waiting for a model look again."""
        if self.proxy_mesh is not None:
            self.proxy_mesh.notify_changed()

    def _on_stream(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        kind = head.get("t")
        if kind == FrameType.TUNNEL and self.proxy_mesh is not None:
            self._spawn(self._serve_tunnel(stream, head))
        elif kind == FrameType.FILE and self.serving is not None:
            self._spawn(self.serving.handle_file_request(link, stream, head))
        else:
            stream.reset()

    async def _serve_tunnel(self, stream: QuicFrameStream, head: Frame) -> None:
        mesh = self.proxy_mesh
        assert mesh is not None
        mesh.backend_started()
        try:
            await serve_tunnel(stream, head, mesh.forwarder, mesh.local_base_url)
        finally:
            mesh.backend_finished()

    # drop

    async def drop(self, model: str) -> list[str]:
        """Stop ``model`` where it is served: here if this node serves it (then exit),
        else on every peer serving it.  Returns the node ids told to drop it."""
        if self.serving is not None and model in self.serving.llama:
            await self.serving.drop(model)
            return [self.identity.node_id]
        assert self.gossip is not None
        nodes = sorted(n for n, p in self.state.peers.items() if model in p.serving)
        for node_id in nodes:
            if (link := self.gossip.link(node_id)) is not None:
                link.send(make_frame(FrameType.DROP, model=model))
        return nodes

    def _on_drop_frame(self, link: Link, frame: Frame) -> None:
        model = frame.get("model")
        if isinstance(model, str) and self.serving is not None and model in self.serving.llama:
            log.warning("peer %s asks this node to drop %s", link.node_id, model)
            self._spawn(self.serving.drop(model))

    def _exit_soon(self) -> None:
        # Let the HTTP answer and the new announcement go out before leaving.
        asyncio.get_running_loop().call_later(0.3, self.request_exit)

    async def _refresh_resources(self) -> None:
        while True:
            await asyncio.sleep(RESOURCES_INTERVAL)
            assert self.gossip is not None
            self.gossip.publish(resources=host_resources())

    # HTTP

    async def _start_http(self) -> None:
        from meshllm.api import create_app

        app = create_app(self)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        host = "0.0.0.0" if self.config.listen_all else "127.0.0.1"
        site = web.TCPSite(self._runner, host, self.config.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.http_port = server.sockets[0].getsockname()[1]

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def advertised_addrs(bound: tuple[str, int]) -> list[str]:
    """Addresses peers can dial: the bound one, or every IPv4 address for 0.0.0.0."""
    host, port = bound
    if host not in ("0.0.0.0", ""):
        return [f"{host}:{port}"]
    hosts = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    return [f"{h}:{port}" for h in hosts] or [f"127.0.0.1:{port}"]


def load_admin_token(state_dir: Path) -> str:
    """The node's admin token (for ``/api/drop``), created (mode 0600) on first use."""
    path = state_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token
