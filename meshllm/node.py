"""Node: wires identity, mesh credentials, gossip, serving and HTTP, and owns their tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from meshllm import __version__
from meshllm.access.service import MeshAccess
from meshllm.cloud import is_provider_model, providers_from_env
from meshllm.commands import (
    ENDPOINT_KIND,
    EndpointCommands,
    OwnerChannel,
    PoolCommands,
    statement_kind,
)
from meshllm.config import Config
from meshllm.election.fleet import ResourceSeen, fleet_view
from meshllm.election.pool_view import pool_view
from meshllm.errors import AuthError, ConfigError, TransferError
from meshllm.gossip import (
    Gossip,
    HealthSettings,
    Link,
    MembershipSettings,
    MeshState,
    PeerAnnouncement,
    PeerRemoved,
    QuicFrameStream,
    QuicTransport,
    ResourceFeed,
    Role,
    Seed,
    StateEvent,
    split_addr,
)
from meshllm.identity import Identity
from meshllm.join_token import JoinToken, MeshCredentials
from meshllm.mdns import MeshAdvertiser, browse
from meshllm.owner import OwnerKey, SeenNonces, sign_statement, verify_statement
from meshllm.paths import StatePaths, load_admin_token
from meshllm.ports import (
    GossipMeshPort,
    MeshEventFeed,
    NodeProxyMesh,
    metric_snapshot,
    status_snapshot,
)
from meshllm.proxy import (
    ByteBudget,
    ChainedBackends,
    Forwarder,
    HttpBackends,
    HttpLimits,
    create_app,
    serve_tunnel,
    start_http,
)
from meshllm.proxy.cloud import CloudBackends
from meshllm.proxy.events import PRIVATE
from meshllm.proxy.guard import GuardSettings
from meshllm.proxy.observe import served_record
from meshllm.proxy.routes import KEEP_ALIVE_HEADER
from meshllm.proxy.tunnel import ServedAnswer
from meshllm.records.cost import EnergyPrice, PriceTable, serving_watts
from meshllm.records.history import HistoryStore
from meshllm.records.metrics import Metrics
from meshllm.records.record import PRIVATE_FIELDS, RequestRecord
from meshllm.records.service import MeshRecords
from meshllm.resources import (
    host_resources,
    memory_budget_auto,
    model_capacity_bytes,
    model_memory_kind,
)
from meshllm.serving.manager import ServingManager
from meshllm.serving.model_file import model_name
from meshllm.serving.pool_config import (
    load_model_config,
    parse_bytes,
    parse_port_range,
    parse_ttl,
)
from meshllm.serving.pool_load import answer_load_request
from meshllm.serving.port import ServingSettings
from meshllm.wire import Frame, FrameType, make_frame

log = logging.getLogger(__name__)

LAN_SEARCH_AFTER = 5.0  # seconds without a peer before a joiner looks for its mesh on the LAN
LAN_SEARCH_TIMEOUT = 3.0  # seconds it listens for mDNS answers
LAN_SEEDS_MAX = 16  # addresses found there that it dials (and redials while unlinked)
MEMORY_INTERVAL = 10.0  # seconds between looks at the memory free for models
MEMORY_STEP_FRACTION = 0.05  # memory_bytes is announced again when it moves this much,
MEMORY_STEP_MIN = 256 << 20  # and at least this many bytes


class Node:
    """One meshllm daemon."""

    def __init__(self, config: Config) -> None:
        """Build every part and connect their ports; nothing is bound or started yet.
        Call from inside the event loop that will run the node."""
        self.config = config
        self.identity = (
            Identity.generate() if config.client else Identity.load_or_create(config.state_dir)
        )
        self.credentials, self.seeds = self._mesh_credentials()
        self._client_dir: tempfile.TemporaryDirectory[str] | None = None
        self.started_at = time.time()
        # Owner statements accepted lately: no replays, not even of one this node's previous
        # run accepted (a statement issued before this start is refused).
        self.seen_statements = SeenNonces(issued_after=self.started_at)
        self.admin_token = "" if config.client else load_admin_token(config.state_dir)
        self.stopped = asyncio.Event()
        self.request_exit = self.stopped.set  # replaced by run() with its signal-aware stop

        self.cloud = self._cloud_backends()
        self.gossip = Gossip(
            self._first_announcement(),
            self.identity,
            membership_settings(config),
            on_events=self._on_mesh_events,
            on_stream=self._on_stream,
        )
        self.gossip.add_handler(FrameType.DROP, self._on_drop_frame)
        self.resources = ResourceFeed(
            self.gossip, self.identity, host_resources, interval=config.resources_interval
        )
        self.transport = QuicTransport(self.identity, self.credentials, self.gossip)
        self.transport.incarnation = lambda: self.gossip.state.me.incarnation
        self.serving = (
            None
            if config.client
            else ServingManager(
                serving_settings(config),
                GossipMeshPort(self.gossip),
                self.identity,
                self.credentials.secret,
                on_serving_changed=lambda: self._view_changed(),
                on_dropped=lambda model: self._exit_soon(),
            )
        )
        serving = self.serving  # an endpoint's API key goes with requests forwarded to it
        forwarder = Forwarder(
            backend_headers=(lambda url: serving.endpoints.headers_for(url)) if serving else None
        )
        self.forwarder = forwarder
        local = HttpBackends(forwarder, serving.local_base_url if serving else lambda m: None)
        backends = ChainedBackends(self.cloud, local) if self.cloud else local
        self.prices = PriceTable.load(config.price_file)
        self.proxy_mesh = NodeProxyMesh(
            self.gossip, backends, self.serving, cloud_models=sorted(self.prices.models)
        )
        self.events = MeshEventFeed(self.gossip)
        owner = OwnerChannel(
            self.gossip,
            mesh_id=self.credentials.mesh_id,
            owner_public_key=self.credentials.owner,
            owner_key=self.owner_key,
            seen=self.seen_statements,
        )
        self.pool = PoolCommands(self.gossip, self.serving, owner, self.proxy_mesh.load)
        self.endpoint_commands = EndpointCommands(self.gossip, self.serving, owner)
        self.gossip.add_handler(FrameType.POOL, self._on_owner_statement)
        self.access = MeshAccess(
            self.gossip,
            mesh_id=self.credentials.mesh_id,
            owner_public_key=self.credentials.owner,
            owner_key=self.owner_key,
            keys_path=None if config.client else StatePaths(config.state_dir).keys,
            admin_token=self.admin_token,
            listen_all=config.listen_all,
            usage_interval=config.usage_interval,
        )
        self.records = self._records()
        self.access.on_refused = self.records.refused
        self.records.on_record = self._request_event
        # Request bodies held in memory, from our HTTP clients and peers' tunnels together.
        self.http_limits = HttpLimits()
        self.body_budget = ByteBudget(self.http_limits.max_body_bytes_in_flight)

        # Known once start() has bound the ports.
        self.quic_addr: tuple[str, int] | None = None
        self.http_port: int | None = None
        self.token = ""
        self.advertiser: MeshAdvertiser | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    def _cloud_backends(self) -> CloudBackends | None:
        """The cloud providers whose key is in this node's environment (none on a lite
        client, or with --no-cloud)."""
        cfg = self.config
        if cfg.client or not cfg.cloud:
            return None
        try:
            providers = providers_from_env(os.environ)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not providers:
            return None
        log.info("cloud providers from the environment: %s", ", ".join(sorted(providers)))
        return CloudBackends(
            providers,
            read_timeout=cfg.cloud_timeout,
            on_change=self._cloud_changed,
        )

    def _cloud_changed(self) -> None:
        """A provider refused this node's key, or may take it again: announce it."""
        if self.cloud is not None:
            self.gossip.publish(providers=self.cloud.states())

    def _records(self) -> MeshRecords:
        """The history (a lite client's in a directory of its own, gone when it stops: it
        may run beside a serving node's state dir), the metrics, the mesh-wide queries."""
        cfg = self.config
        if cfg.client:
            self._client_dir = tempfile.TemporaryDirectory(prefix="meshllm-client-")
            history_path = Path(self._client_dir.name) / "history.sqlite"
        else:
            history_path = StatePaths(cfg.state_dir).history
        store = HistoryStore(
            history_path,
            node_id=self.identity.node_id,
            retention_s=cfg.history_days * 86400,
            log_prompts=cfg.log_prompts,
        )
        transport = self.transport
        serving = self.serving
        metrics = Metrics(
            self.identity.node_id,
            lambda: metric_snapshot(self.gossip, transport.frames, serving, store.stats()),
        )
        return MeshRecords(
            self.identity.node_id,
            store,
            metrics,
            live_peers=lambda: sorted(self.state.peers),
            open_stream=self.proxy_mesh.open_stream,
            watts=self._watts,
            prices=self.prices,
            energy=EnergyPrice(cfg.price_kwh),
            fanout_timeout=cfg.history_fanout_timeout,
            admin_token=self.admin_token,
        )

    def _request_event(self, record: RequestRecord) -> None:
        """A request recorded here, as a private event of ``/api/events`` (the
        history's readers only); its prompt and answer never go there."""
        if not len(self.events.hub):
            return  # nobody listens: no row made on the request's path
        row = {k: v for k, v in record.to_dict().items() if k not in PRIVATE_FIELDS}
        self.events.hub.publish([{"type": "request", PRIVATE: True, "row": row}])

    def _watts(self) -> float | None:
        """This machine's power draw serving models (its GPUs', else --cpu-watts)."""
        own = self.resources.view(self.identity.node_id).resources
        return serving_watts(own, self.config.cpu_watts)

    def _first_announcement(self) -> PeerAnnouncement:
        cfg = self.config
        return PeerAnnouncement(
            node_id=self.identity.node_id,
            mesh_id=self.credentials.mesh_id,
            public_key=self.identity.public_key,
            role=Role.CLIENT if cfg.client else Role.WORKER,
            requested_models=[] if cfg.client else [model_name(m) for m in cfg.models],
            providers=self.cloud.states() if self.cloud else {},
            **resource_fields(),
            version=__version__,
            incarnation=time.time_ns() // 1_000_000,  # a restart always outranks the past
        )

    # lifecycle

    async def start(self) -> None:
        """Bind the QUIC port and the HTTP port, join the mesh, start serving."""
        cfg = self.config
        if cfg.listen_all and not self.access.book and not cfg.join:
            raise ConfigError(
                "--listen-all needs API keys: anyone on the network could use this node. "
                "Create one first with `meshllm keys create --scope inference` (it is kept "
                f"in {StatePaths(cfg.state_dir).keys}), then start the node again"
            )
        if cfg.listen_all and not self.access.book:
            log.warning("no API keys yet: requests are refused until the mesh's keys arrive")
        self.records.store.start()
        try:
            host, port = split_addr(cfg.bind)
        except ValueError as exc:
            raise ConfigError(f"--bind: {exc}") from None
        self.quic_addr = await self._bind(host, port)
        addrs = cfg.advertise or advertised_addrs(self.quic_addr)
        creds = self.credentials
        self.token = JoinToken(
            creds.mesh_id, creds.secret, creds.owner, addrs, self.identity.node_id
        ).encode()
        await self._start_http()
        self.gossip.publish(addrs=addrs, http_port=self.http_port)
        self.gossip.start(self.transport, self.seeds)
        if cfg.mdns and not cfg.client:
            self.advertiser = MeshAdvertiser(creds.mesh_id, self.identity.node_id, addrs)
            self._spawn(self.advertiser.start())
        if cfg.mdns and self.seeds:
            self._spawn(self._find_mesh_on_lan())
        if self.serving is not None:
            await self.serving.start()
        self.resources.start()
        self.access.start()
        self._spawn(self._refresh_memory())

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
        await self.gossip.leave()
        await self.resources.stop()
        await self.access.stop()
        if self.advertiser is not None:
            await self.advertiser.close()
        for task in list(self._tasks):
            task.cancel()
        if self.serving is not None:
            await self.serving.stop()
        self.proxy_mesh.close()
        await self.forwarder.close()
        if self.cloud is not None:
            await self.cloud.close()
        await self.transport.close()
        self.events.hub.close()  # open /api/events streams end: nothing holds the server
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.to_thread(self.records.store.close)
        if self._client_dir is not None:
            self._client_dir.cleanup()
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
        return self.gossip.state

    # what the HTTP app sees (meshllm.proxy.NodeAPI)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def status(self) -> dict[str, Any]:
        """``/api/status``: this node, its live peers and the catalog; never a secret."""
        return status_snapshot(
            self.gossip, self.serving, self.resources.view, time.time() - self.started_at
        )

    def _mesh_credentials(self) -> tuple[MeshCredentials, list[Seed]]:
        cfg = self.config
        if cfg.join:
            token = JoinToken.decode(cfg.join)
            if not cfg.client:
                token.credentials.save(cfg.state_dir)
            # The token names the node that printed it: a dial checks that it answers.
            return token.credentials, [Seed(addr, token.node_id) for addr in token.addrs]
        if cfg.client:
            raise ConfigError("--client needs --join TOKEN: a lite client joins an existing mesh")
        saved = MeshCredentials.load(cfg.state_dir)
        if saved is not None:
            return saved, []
        # The seed: a new mesh, owned by a key that stays on this machine.
        owner = OwnerKey.load_or_create(cfg.state_dir)
        created = MeshCredentials.create(owner.public_key)
        created.save(cfg.state_dir)
        return created, []

    def owner_key(self) -> OwnerKey | None:
        """The mesh owner key, if this machine holds it (read afresh: ``meshllm owner import``
        takes effect at once)."""
        if self.config.client:
            return None
        try:
            key = OwnerKey.load(self.config.state_dir)
        except ConfigError as exc:
            log.warning("ignoring the owner key: %s", exc)
            return None
        if key is not None and key.public_key != self.credentials.owner:
            log.warning("ignoring the owner key in %s: not this mesh's", self.config.state_dir)
            return None
        return key

    def _on_mesh_events(self, events: list[StateEvent]) -> None:
        """The mesh changed: requests waiting for a model, and a node waiting for
        something to serve, look again; models a departed node had hot are healed."""
        departed = [e.peer for e in events if isinstance(e, PeerRemoved)]
        for peer in departed:
            self.resources.forget(peer.node_id)
            self.access.forget(peer.node_id)
        self._view_changed()
        if self.serving is not None:
            self.serving.mesh_changed(departed)

    def _view_changed(self) -> None:
        self.proxy_mesh.notify_changed()
        self.events.changed()

    def models(self) -> list[dict[str, Any]]:
        """``GET /api/models``: every model's state on every node."""
        return pool_view(self.state.all(), int(time.time() * 1000))

    async def pool_command(
        self, model: str, action: str, node_id: str | None, seconds: float | None
    ) -> list[str]:
        """``POST /api/models/{name}/{action}`` (see :mod:`meshllm.commands`)."""
        return await self.pool.run(model, action, node_id, seconds)

    # the fleet (meshllm.proxy.fleet_routes.FleetAPI)

    def fleet(self) -> dict[str, Any]:
        """``GET /api/fleet``: the mesh at a glance."""
        seen = {}
        for ann in self.state.all():
            view = self.resources.view(ann.node_id)
            seen[ann.node_id] = ResourceSeen(str(view.state), view.resources, view.age_s)
        return fleet_view(self.state.all(), seen, int(time.time() * 1000))

    async def endpoints(self, refresh: bool = False) -> list[dict[str, Any]]:
        if refresh and self.serving is not None:
            await self.serving.endpoints.refresh()
        return self.endpoint_commands.listed()

    async def add_endpoint(self, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.endpoint_commands.add(fields)

    async def remove_endpoint(self, endpoint_id: str) -> str:
        return await self.endpoint_commands.remove(endpoint_id)

    def _on_owner_statement(self, link: Link, frame: Frame) -> None:
        if statement_kind(frame) == ENDPOINT_KIND:
            self.endpoint_commands.on_statement(link, frame, self._spawn)
        else:
            self.pool.on_statement(link, frame)

    def _on_stream(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        kind = head.get("t")
        if kind == FrameType.TUNNEL:
            self._spawn(self._serve_tunnel(link, stream, head))
        elif kind == FrameType.FILE and self.serving is not None:
            self._spawn(self.serving.handle_file_request(stream, head))
        elif kind == FrameType.LOAD and self.serving is not None:
            self._spawn(answer_load_request(stream, head, self.serving.load_for_peer))
        elif kind == FrameType.RECORDS:
            self._spawn(self.records.answer_peer(stream, head))
        else:
            stream.reset()

    async def _serve_tunnel(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        """Serve a peer's request, and record it (kind ``served``)."""
        mesh, records = self.proxy_mesh, self.records
        model = head.get("model") if isinstance(head.get("model"), str) else None
        headers = head.get("headers")
        keep_alive = headers.get(KEEP_ALIVE_HEADER) if isinstance(headers, dict) else None
        mesh.backend_started(model, keep_alive if isinstance(keep_alive, str) else None)
        loop = asyncio.get_running_loop()
        wall, answer = time.time(), ServedAnswer(records.log_prompts, loop.time())
        # A cloud model costs its price, not this machine's energy.
        mark = None if is_provider_model(model) else records.serving_started()
        try:
            await serve_tunnel(
                stream,
                head,
                mesh.backends,
                limits=self.http_limits,
                budget=self.body_budget,
                answer=answer,
            )
        finally:
            mesh.backend_finished(model)
            energy = records.energy_of(mark) if mark is not None else None  # ends its share
            record = served_record(
                answer,
                head,
                entry_node=link.node_id,
                serving_node=self.identity.node_id,
                wall=wall,
                latency_ms=(loop.time() - answer.started_at) * 1000,
                energy_j=energy if answer.status else None,
            )
            records.request_finished(record, None)

    # drop

    async def drop(self, model: str) -> list[str]:
        """Stop ``model`` where it is served: here if this node serves it (then exit), else,
        when this machine holds the owner key, on every peer serving it, each told by a
        statement signed by that key.  Returns the node ids told to drop it; raises
        :class:`AuthError` when peers serve it and this machine is not the owner."""
        if self.serving is not None and self.serving.serves(model):
            await self.serving.drop(model)
            return [self.identity.node_id]
        nodes = sorted(n for n, p in self.state.peers.items() if model in p.serving)
        if not nodes:
            return []
        owner = self.owner_key()
        if owner is None:
            raise AuthError(
                f"only the mesh owner can drop a model on other nodes ({model} is served by "
                f"{', '.join(nodes)}): this machine has no owner key; run `meshllm owner "
                "import KEY` here with the key `meshllm owner export` prints on the seed"
            )
        for node_id in nodes:
            if (link := self.gossip.link(node_id)) is not None:
                statement = sign_statement(
                    owner,
                    FrameType.DROP.value,
                    {"model": model, "node_id": node_id},
                    time.time(),
                    mesh_id=self.credentials.mesh_id,
                )
                link.send(make_frame(FrameType.DROP, model=model, statement=statement))
        return nodes

    def _on_drop_frame(self, link: Link, frame: Frame) -> None:
        """Drop a model only on a fresh statement, signed by the mesh owner, naming this
        node and that model; anything else is logged and ignored."""
        model = frame.get("model")
        if not (isinstance(model, str) and self.serving is not None):
            return
        if not self.serving.serves(model):
            return
        try:
            body = verify_statement(
                self.credentials.owner,
                frame.get("statement"),
                time.time(),
                mesh_id=self.credentials.mesh_id,
                kind=FrameType.DROP.value,
                seen=self.seen_statements,
            )
            if body.get("node_id") != self.identity.node_id or body.get("model") != model:
                raise AuthError("the owner's statement names another node or model")
        except AuthError as exc:
            log.warning("ignoring a drop of %s from peer %s: %s", model, link.node_id, exc)
            return
        log.warning("the mesh owner asks this node to drop %s (via peer %s)", model, link.node_id)
        self._spawn(self.serving.drop(model))

    async def _find_mesh_on_lan(self) -> None:
        """A join token's addresses may be stale (the seed moved, DHCP): when none has
        answered after LAN_SEARCH_AFTER, look for the mesh over mDNS and dial what is
        found like seeds.  The hello still needs the token's secret: being found on the
        LAN admits nobody."""
        await asyncio.sleep(LAN_SEARCH_AFTER)
        if self.state.peers:
            return
        mesh_id = self.credentials.mesh_id
        try:
            found = await browse(LAN_SEARCH_TIMEOUT, mesh_id=mesh_id)
        except ConfigError as exc:
            log.warning("cannot look for mesh %s on the LAN: %s", mesh_id, exc)
            return
        me = self.identity.node_id  # a joiner advertises too: it finds itself
        seeds = [Seed(addr, f.node_id) for f in found if f.node_id != me for addr in f.addrs]
        seeds = seeds[:LAN_SEEDS_MAX]  # anyone on the LAN may advertise any mesh id
        if seeds:
            log.warning(
                "the join token's addresses did not answer; found mesh %s on the LAN at %s",
                mesh_id,
                ", ".join(s.addr for s in seeds),
            )
            self.gossip.add_seeds(seeds)

    def _exit_soon(self) -> None:
        # Let the HTTP answer and the new announcement go out before leaving.
        asyncio.get_running_loop().call_later(0.3, self.request_exit)

    async def _refresh_memory(self) -> None:
        """Keep ``memory_bytes`` (placement reads it) true, without bumping the
        announcement for every wobble: live figures travel as resource reports."""
        while True:
            await asyncio.sleep(MEMORY_INTERVAL)
            fields = await asyncio.to_thread(memory_fields)
            me = self.gossip.state.me
            step = max(MEMORY_STEP_MIN, me.memory_bytes * MEMORY_STEP_FRACTION)
            moved = abs(fields["memory_bytes"] - me.memory_bytes) >= step
            if moved or fields["memory_kind"] != me.memory_kind:
                self.gossip.publish(**fields)

    # HTTP

    async def _start_http(self) -> None:
        app = create_app(
            self,
            self.proxy_mesh,
            GuardSettings.from_config(self.config),
            events=self.events,
            fleet=self,
            access=self.access,
            keys=self.access,
            records=self.records,
            log=self.records,
            load_timeout=self.config.load_timeout,
            limits=self.http_limits,
            budget=self.body_budget,
        )
        host = "0.0.0.0" if self.config.listen_all else "127.0.0.1"
        self._runner, self.http_port = await start_http(
            app, host, self.config.port, self.http_limits
        )

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def resource_fields() -> dict[str, Any]:
    """This host's resources (as at start: live ones travel as resource reports) and
    the memory it has for models, as announcement fields."""
    resources = host_resources()
    return {"resources": resources, **memory_fields(resources)}


def memory_fields(resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """The memory this host has for models now, and of which kind."""
    resources = host_resources() if resources is None else resources
    return {
        "memory_bytes": model_capacity_bytes(resources),
        "memory_kind": model_memory_kind(resources),
    }


def membership_settings(cfg: Config) -> MembershipSettings:
    """The part of ``cfg`` that membership reads."""
    return MembershipSettings(
        health=HealthSettings(probe_interval=cfg.probe_interval, probe_timeout=cfg.probe_timeout),
        gossip_interval=cfg.gossip_interval,
        reconnect_interval=cfg.reconnect_interval,
        max_peers=cfg.max_peers,
    )


def serving_settings(cfg: Config) -> ServingSettings:
    """The part of ``cfg`` that serving reads; raises ConfigError for a bad pool setting."""
    per_model = load_model_config(cfg.model_config)
    budget = parse_bytes(cfg.memory_budget)
    if budget is None:  # auto
        budget = memory_budget_auto(host_resources())
    return ServingSettings(
        pins=(*cfg.pins, *(name for name, m in per_model.items() if m.pin)),
        idle_ttl=parse_ttl(cfg.ttl),
        max_loaded=cfg.max_loaded or None,
        memory_budget=budget or None,
        model_ports=parse_port_range(cfg.model_ports),
        model_ttls={name: m.ttl for name, m in per_model.items() if m.ttl is not None},
        models_dir=cfg.models_dir,
        state_dir=cfg.state_dir,
        models=tuple(cfg.models),
        endpoints=tuple(cfg.endpoints),
        find_local_ollama=cfg.auto_endpoints,
        endpoint_poll_interval=cfg.endpoint_poll_interval,
        llama_server=cfg.llama_server,
        auto_install=cfg.auto_install,
        joined=cfg.join is not None,
        max_tokens_default=cfg.max_tokens_default,
        embeddings=cfg.embeddings,
    )


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
