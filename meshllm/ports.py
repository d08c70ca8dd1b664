"""The node's side of its parts' ports, over the gossip service.

:class:`GossipMeshPort` is serving's :class:`~meshllm.serving.port.MeshPort`;
:class:`NodeProxyMesh` is the proxy's :class:`~meshllm.proxy.ProxyMesh`.  The
parts define what they need; only this module and ``node.py`` know both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from meshllm.election import catalog, elect
from meshllm.errors import PeerError
from meshllm.gossip import Gossip, ModelState, PeerAnnouncement, Role, split_addr
from meshllm.proxy import Forwarder, Target
from meshllm.serving.manager import ServingManager
from meshllm.wire import FrameStream


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
        self, gossip: Gossip, forwarder: Forwarder, serving: ServingManager | None = None
    ) -> None:
        self.gossip = gossip
        self.forwarder = forwarder
        self.serving = serving  # None on a lite client
        self.in_flight: Counter[str] = Counter()  # node id -> our requests to it
        self.backend_load = 0  # requests our own backend is answering (ours and peers')
        self._changed = asyncio.Event()

    def catalog(self) -> list[dict[str, Any]]:
        return catalog(self.gossip.state.all())

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
        # A suspect replica (a probe or a tunnel to it failed) is tried only when no other is.
        for model, replicas in targets.items():
            trusted = [t for t in replicas if t.local or not self.gossip.is_suspect(t.node_id)]
            if trusted:
                targets[model] = trusted
        return targets

    def warming(self, model: str | None) -> dict[str, str]:
        warming = {}
        for ann in self.gossip.state.all():
            if ann.role == Role.CLIENT:
                continue
            for name, state in ann.serving.items():
                if state in _WARMING and (model is None or name == model):
                    warming[ann.node_id] = state
        return warming

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

    def local_base_url(self, model: str) -> str | None:
        return self.serving.local_base_url(model) if self.serving is not None else None

    async def open_stream(self, node_id: str) -> FrameStream:
        link = await self.gossip.ensure_link(node_id)
        return await link.open_stream()

    def suspect(self, node_id: str, reason: str) -> None:
        """The data path to ``node_id`` broke: the membership starts its suspicion now."""
        self.gossip.suspect(node_id, reason)

    def request_started(self, target: Target) -> None:
        self.in_flight[target.node_id] += 1
        if target.local:
            self.backend_started()

    def request_finished(self, target: Target) -> None:
        self.in_flight[target.node_id] -= 1
        if self.in_flight[target.node_id] <= 0:
            del self.in_flight[target.node_id]
        if target.local:
            self.backend_finished()

    def backend_started(self) -> None:
        """A request reached this node's backend (from our proxy or through a tunnel)."""
        self.backend_load += 1
        self.gossip.set_load(self.backend_load)

    def backend_finished(self) -> None:
        self.backend_load -= 1
        self.gossip.set_load(self.backend_load)


_WARMING = (ModelState.STARTING, ModelState.FETCHING)


def status_snapshot(
    gossip: Gossip, serving: ServingManager | None, uptime_s: float
) -> dict[str, Any]:
    """``/api/status``: this node, its live peers and the mesh catalog (DESIGN.md §4).
    No join token here, nor anything else derived from the mesh secret."""
    state, now = gossip.state, gossip.now()
    peers = []
    for peer in sorted(state.peers.values(), key=lambda p: p.node_id):
        rtt, heard = gossip.rtt(peer.node_id), gossip.last_heard(peer.node_id)
        peers.append(
            {
                **peer.to_json(),
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
        "uptime_s": round(uptime_s, 1),
        # What membership refused from peers, and why (bad signatures, rate limits, ...).
        "membership": {"refused": dict(gossip.counters), "awareness": gossip.awareness},
        # Why auto-assignment serves nothing on this node (None: it serves, or was told what).
        "idle_reason": serving.idle_reason if serving is not None else None,
        "peers": peers,
        "catalog": entries,
    }
