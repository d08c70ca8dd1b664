"""The node's side of its parts' ports, over the gossip service.

:class:`GossipMeshPort` is serving's :class:`~meshllm.serving.port.MeshPort`;
:class:`NodeProxyMesh` is the proxy's :class:`~meshllm.proxy.ProxyMesh`.  The
parts define what they need; only this module and ``node.py`` know both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshllm.cloud import UP, is_provider_model, split_model
from meshllm.election import Placement, catalog, elect, rank
from meshllm.election.demand import DemandMeter
from meshllm.election.pool_view import pool_view
from meshllm.errors import PeerError
from meshllm.events import EventHub, model_events, snapshot_events
from meshllm.gossip import (
    Gossip,
    ModelState,
    PeerAnnouncement,
    ResourceView,
    Role,
    split_addr,
)
from meshllm.proxy import LocalBackends, Target
from meshllm.proxy.anthropic_surface import MESSAGES_PATH
from meshllm.records.metrics import MeshSnapshot
from meshllm.serving.durations import duration
from meshllm.serving.manager import ServingManager, room_of
from meshllm.serving.pool_load import ask_to_load
from meshllm.wire import FrameStream

ASKED_GRACE_S = 10.0  # a node asked to load a model counts as loading it this long,
# until its own announcement says so (or that it failed)
LOAD_CANDIDATES = 3  # nodes in placement order a request asks before it gives up (a
# node takes a peer's ask when it ranks among its own first LOAD_RANK_SLACK: keep <=)
DEMAND_PUBLISH_S = 10.0  # seconds between publishes of this node's demand


class GossipMeshPort:
    """What serving sees of the mesh: this node's announcement, its peers, streams."""

    def __init__(self, gossip: Gossip) -> None:
        self._gossip = gossip

    @property
    def me(self) -> PeerAnnouncement:
        return self._gossip.state.me

    def peers(self) -> Mapping[str, PeerAnnouncement]:
        return self._gossip.state.peers

    def publish(self, **changes: Any) -> None:
        self._gossip.publish(**changes)

    async def open_stream(self, node_id: str) -> FrameStream:
        link = await self._gossip.ensure_link(node_id)
        return await link.open_stream()

    def file_address(self, node_id: str) -> tuple[str, int]:
        # The host we reach it at (its link), the port it announced (file port = QUIC port).
        link = self._gossip.link(node_id)
        if link is None:
            raise PeerError(f"no link to {node_id}")
        host, link_port = split_addr(link.remote_addr)
        peer = self._gossip.state.peers.get(node_id)
        port = split_addr(peer.addrs[0])[1] if peer and peer.addrs else 0
        return host, port or link_port


class NodeProxyMesh:
    """Routing inputs from the mesh state, load accounting, and streams to peers."""

    def __init__(
        self,
        gossip: Gossip,
        backends: LocalBackends,
        serving: ServingManager | None = None,
        cloud_models: Sequence[str] = (),
    ) -> None:
        """``cloud_models``: the provider models the catalog lists while a node holds
        their provider's key (the price table's: any other is reached by name too)."""
        self.gossip = gossip
        self.cloud_models = [m for m in cloud_models if is_provider_model(m)]
        self.backends = backends  # this node's llama-servers, endpoints and cloud providers
        self.serving = serving  # None on a lite client
        self.in_flight: Counter[str] = Counter()  # node id -> our requests to it
        self.backend_load = 0  # requests our own backend is answering (ours and peers')
        self.demand = DemandMeter()
        self._changed = asyncio.Event()
        self._asked: dict[str, tuple[str, float]] = {}  # model -> (node asked, until)
        self._demand_timer: asyncio.TimerHandle | None = None

    def catalog(self) -> list[dict[str, Any]]:
        """The catalog, each entry with its mesh-wide pool ``state`` and, in ``pool``,
        its state on every node that has it (:func:`pool_view`)."""
        anns = list(self.gossip.state.all())
        views = {v["model"]: v for v in pool_view(anns, _wall_ms())}
        entries = catalog(anns)
        digests = {m: d for a in anns for m, d in a.model_sha256.items()}
        for entry in entries:
            view = views.get(entry["model"])
            entry["state"] = view["state"] if view else "cold"
            entry["pool"] = view["nodes"] if view else []
            entry["sha256"] = digests.get(entry["model"], "")
        return entries + self._cloud_entries(anns)

    def _cloud_entries(self, anns: list[PeerAnnouncement]) -> list[dict[str, Any]]:
        """Catalog entries of the cloud models some node can reach (state ``cloud``)."""
        holders: dict[str, list[str]] = {}
        for ann in anns:
            for provider, state in ann.providers.items():
                if state == UP:
                    holders.setdefault(provider, []).append(ann.node_id)
        entries = []
        for model in self.cloud_models:
            nodes = holders.get(model.partition(":")[0])
            if nodes:
                entries.append(
                    {"model": model, "warm": True, "nodes": sorted(nodes), "state": "cloud",
                     "pool": [], "sha256": ""}
                )  # fmt: skip
        return entries

    def targets(self) -> Mapping[str, Sequence[Target]]:
        me = self.gossip.state.me
        targets: dict[str, list[Target]] = {}
        for ann in self.gossip.state.all():
            if ann.role == Role.CLIENT:
                continue
            local = ann.node_id == me.node_id
            for model in ann.ready_models:
                if local and (self.serving is None or not self.serving.local_base_url(model)):
                    continue
                load = self.in_flight[ann.node_id] + (0 if local else ann.load)
                targets.setdefault(model, []).append(Target(ann.node_id, model, local, load))
        return {model: self._trusted_first(replicas) for model, replicas in targets.items()}

    def _trusted_first(self, targets: list[Target]) -> list[Target]:
        """``targets`` without the suspect ones (a probe or a tunnel to it failed), unless
        all are: a suspect is tried only when no other is."""
        trusted = [t for t in targets if t.local or not self.gossip.is_suspect(t.node_id)]
        return trusted or targets

    def provider_targets(self, model: str) -> list[Target] | None:
        """The nodes whose key for ``model``'s provider is up (a suspect one only when no
        other is); None when ``model`` names no provider.  Raises ValueError for a
        provider model whose name is no plain model id."""
        split = split_model(model)
        if split is None:
            return None
        me = self.gossip.state.me.node_id
        targets = []
        for ann in self.gossip.state.all():
            local = ann.node_id == me
            if ann.providers.get(split[0]) != UP or (local and not self.backends.serves(model)):
                continue
            load = self.in_flight[ann.node_id] + (0 if local else ann.load)
            targets.append(Target(ann.node_id, model, local, load))
        return self._trusted_first(targets)

    def speaks(self, target: Target, path: str) -> bool:
        """Anthropic's ``/v1/messages`` is spoken by a model on Anthropic's cloud and by
        llama-server (a pool model, not an endpoint's); a build without the route
        answers 404, and the proxy asks again, translated."""
        if path != MESSAGES_PATH:
            return False
        try:
            split = split_model(target.model)
        except ValueError:
            return False
        if split is not None:
            return split[0] == "anthropic"
        ann = self.gossip.state.get(target.node_id)
        return (
            ann is not None
            and target.model in ann.pool
            and not any(target.model in e.get("models", {}) for e in ann.endpoints.values())
        )

    def provider_refusals(self, provider: str) -> dict[str, str]:
        return {
            ann.node_id: ann.providers[provider]
            for ann in self.gossip.state.all()
            if ann.providers.get(provider, UP) != UP
        }

    def warming(self, model: str | None) -> dict[str, str]:
        warming = {}
        now = time.monotonic()
        peers = {a.node_id: a for a in self.gossip.state.all()}
        for name, (node_id, until) in list(self._asked.items()):
            ann = peers.get(node_id)
            if now >= until or ann is None or ann.serving.get(name) == ModelState.FAILED:
                del self._asked[name]
            elif (model is None or name == model) and name not in ann.serving:
                warming[node_id] = "asked to load"
        for ann in peers.values():
            if ann.role == Role.CLIENT:
                continue
            for name, state in ann.serving.items():
                if state in _WARMING and (model is None or name == model):
                    warming[ann.node_id] = state
        return warming

    async def load(self, model: str) -> str | None:
        """Have ``model``, hot nowhere, loaded where the mesh's placement rule puts it
        (DESIGN.md §6): here, or asked of that node over the mesh; the next in
        placement order when one refuses.  None once a load is under way; else why no
        node can take it, for the 503."""
        asked = self._asked.get(model)
        if asked is not None and time.monotonic() < asked[1]:
            return None
        anns = list(self.gossip.state.all())
        order = rank(model, anns, free_memory=room_of)
        if not order:
            if self.serving is not None:
                refusal = self.serving.placement(model)
                if isinstance(refusal, str):
                    return refusal
            return f"no node can load {model}"
        me = self.gossip.state.me.node_id
        why: list[str] = []
        for node_id in order[:LOAD_CANDIDATES]:
            if node_id == me and self.serving is not None:
                target = self.serving.placement(model)
                sources = target.fetch_from if isinstance(target, Placement) else ()
                refused = self.serving.load(model, sources)
            else:
                try:
                    refused = await ask_to_load(await self.open_stream(node_id), model)
                except PeerError as exc:
                    refused = str(exc)
            if refused is None:
                self._asked[model] = (node_id, time.monotonic() + ASKED_GRACE_S)
                self.notify_changed()
                return None
            why.append(f"{node_id}: {refused}")
        return f"no node could load {model}: " + "; ".join(why)

    def routed(self, model: str) -> None:
        """A request for ``model`` was routed by this node: its demand."""
        self.demand.record(model, time.time())
        if self._demand_timer is None:
            loop = asyncio.get_running_loop()
            self._demand_timer = loop.call_later(DEMAND_PUBLISH_S, self._publish_demand)

    def _publish_demand(self) -> None:
        self._demand_timer = None
        demand = self.demand.fields(time.time())
        if demand != self.gossip.state.me.demand:
            self.gossip.publish(demand=demand)
        if demand:  # the rate decays as the window moves on: publish again
            loop = asyncio.get_running_loop()
            self._demand_timer = loop.call_later(DEMAND_PUBLISH_S, self._publish_demand)

    def close(self) -> None:
        """Stop the demand timer."""
        if self._demand_timer is not None:
            self._demand_timer.cancel()

    def failures(self, model: str) -> dict[str, str]:
        return {
            ann.node_id: ann.failures[model]
            for ann in self.gossip.state.all()
            if model in ann.failures
        }

    def notify_changed(self) -> None:
        """What is served may have changed (gossip events, local serving states)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def open_stream(self, node_id: str) -> FrameStream:
        link = await self.gossip.ensure_link(node_id)
        return await link.open_stream()

    def suspect(self, node_id: str, reason: str) -> None:
        """The data path to ``node_id`` broke: the membership starts its suspicion now."""
        self.gossip.suspect(node_id, reason)

    def request_started(self, target: Target, keep_alive: str | None = None) -> None:
        self.in_flight[target.node_id] += 1
        if target.local:
            self.backend_started(target.model, keep_alive)

    def request_finished(self, target: Target) -> None:
        self.in_flight[target.node_id] -= 1
        if self.in_flight[target.node_id] <= 0:
            del self.in_flight[target.node_id]
        if target.local:
            self.backend_finished(target.model)

    def backend_started(self, model: str | None, keep_alive: str | None = None) -> None:
        """A request for ``model`` reached this node's backend (from our proxy or through
        a tunnel); ``keep_alive`` (a peer's word: garbage is ignored) sets its TTL."""
        self.backend_load += 1
        self.gossip.set_load(self.backend_load)
        if self.serving is not None and model is not None:
            try:
                duration(keep_alive, "keep_alive") if keep_alive is not None else None
            except ValueError:
                keep_alive = None
            self.serving.request_started(model, keep_alive)

    def backend_finished(self, model: str | None) -> None:
        self.backend_load -= 1
        self.gossip.set_load(self.backend_load)
        if self.serving is not None and model is not None:
            self.serving.request_finished(model)


_WARMING = (ModelState.STARTING, ModelState.FETCHING)


class MeshEventFeed:
    """``/api/events``' source: the mesh's model states, diffed on every change."""

    def __init__(self, gossip: Gossip) -> None:
        self.hub = EventHub()
        self._gossip = gossip
        self._view: dict[str, PeerAnnouncement] = self._now_view()

    def changed(self) -> None:
        """Something in the mesh (a peer, or this node's own announcement) changed."""
        after = self._now_view()
        events = model_events(self._view, after, _wall_ms())
        self._view = after
        if events:
            self.hub.publish(events)

    def snapshot(self) -> list[dict[str, Any]]:
        return snapshot_events(self._now_view(), _wall_ms())

    def _now_view(self) -> dict[str, PeerAnnouncement]:
        return {a.node_id: a for a in self._gossip.state.all()}


def _live_resources(view: ResourceView) -> dict[str, Any]:
    age = round(view.age_s, 1) if view.age_s is not None else None
    return {
        "resources": view.resources,
        "resources_state": str(view.state),
        "resources_age_s": age,
    }


def _wall_ms() -> int:
    return int(time.time() * 1000)


def status_snapshot(
    gossip: Gossip,
    serving: ServingManager | None,
    resources: Callable[[str], ResourceView],
    uptime_s: float,
) -> dict[str, Any]:
    """``/api/status``: this node, its live peers and the mesh catalog (DESIGN.md §4).
    Each node's ``resources`` are its live report (``resources_state`` live or stale,
    ``resources_age_s``), or null when it has gone quiet: never a stale figure passed
    off as live.  No join token here, nor anything else derived from the mesh secret."""
    state, now = gossip.state, gossip.now()
    peers = []
    for peer in sorted(state.peers.values(), key=lambda p: p.node_id):
        rtt, heard = gossip.rtt(peer.node_id), gossip.last_heard(peer.node_id)
        peers.append(
            {
                **peer.to_json(),
                **_live_resources(resources(peer.node_id)),
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
                "last_seen_s": round(now - heard, 3) if heard is not None else None,
                "linked": gossip.link(peer.node_id) is not None,
                "suspect": gossip.is_suspect(peer.node_id),
            }
        )
    groups = elect(state.all())
    entries = catalog(state.all())
    for entry in entries:
        group = groups.get(entry["model"])
        entry["host"] = group.host if group else None
    return {
        **state.me.to_json(),
        **_live_resources(resources(state.me.node_id)),
        "uptime_s": round(uptime_s, 1),
        # What membership refused from peers, and why (bad signatures, rate limits, ...).
        "membership": {"refused": dict(gossip.counters), "awareness": gossip.awareness},
        # Why auto-assignment serves nothing on this node (None: it serves, or was told what).
        "idle_reason": serving.idle_reason if serving is not None else None,
        # This node's pool: requests in flight, TTLs and pins per model, what is held.
        "pool_detail": serving.runner.snapshot() if serving is not None else None,
        "peers": peers,
        "catalog": entries,
    }


def metric_snapshot(
    gossip: Gossip,
    frames: Mapping[tuple[str, str], int],
    serving: ServingManager | None,
    history: Mapping[str, int],
) -> MeshSnapshot:
    """What ``/metrics`` reads of the other parts at scrape time: peers by health,
    gossip frames and refusals, this node's pool, model copies, history writes."""
    peers: Counter[str] = Counter(
        "suspect" if gossip.is_suspect(node_id) else "alive" for node_id in gossip.state.peers
    )
    fields: dict[str, Any] = {}
    if serving is not None:
        runner = serving.runner
        pool = runner.fields().get("pool", {})
        fields = {
            "models": Counter((model, entry["state"]) for model, entry in pool.items()),
            "model_loads": dict(runner.loads),
            "model_unloads": dict(runner.unloads),
            "copies": serving.copies.done,
            "copy_bytes": serving.copies.bytes,
            "copies_failed": serving.copies.failed,
        }
    return MeshSnapshot(
        peers={"alive": peers["alive"], "suspect": peers["suspect"]},
        frames=dict(frames),
        refused=dict(gossip.counters),
        history_written=history.get("written", 0),
        history_dropped=history.get("dropped", 0),
        history_queued=history.get("queued", 0),
        **fields,
    )
