"""NodeProxyMesh: what the proxy routes see of the node (the ``ProxyMesh`` protocol)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from meshllm.api import catalog
from meshllm.gossip.announcement import ModelState, Role
from meshllm.gossip.service import Gossip
from meshllm.gossip.stream import FrameStream
from meshllm.proxy import Forwarder, Target
from meshllm.serving.manager import ServingManager


class NodeProxyMesh:
    """Routing inputs from the mesh state, load accounting, and streams to peers."""

    def __init__(self, gossip: Gossip, serving: ServingManager | None, forwarder: Forwarder):
        self.gossip = gossip
        self.serving = serving
        self.forwarder = forwarder
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
