"""The pump: runs the pure :class:`~meshllm.gossip.membership.Membership` core on the
QUIC transport (the transport's :class:`~meshllm.gossip.transport.LinkHandler`).

Link events and frames go into the core with the loop's clock; the core's actions
come out and are carried out here: frames sent, links closed, peers dialled, state
events handed to the node.  One timer wakes the core at its next deadline.  This
is the only part of membership that touches asyncio or the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshllm.errors import HelloError, PeerError
from meshllm.gossip.announcement import PeerAnnouncement, Signer
from meshllm.gossip.connection import Link
from meshllm.gossip.dials import Dial
from meshllm.gossip.membership import (
    Broadcast,
    Changed,
    Close,
    Membership,
    MembershipSettings,
    Seed,
    Send,
)
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.gossip.state import MeshState, StateEvent
from meshllm.gossip.transport import QuicTransport
from meshllm.wire import Frame, FrameType

log = logging.getLogger(__name__)

FrameHandler = Callable[[Link, Frame], None]
StreamHandler = Callable[[Link, QuicFrameStream, Frame], None]
EventsHandler = Callable[[list[StateEvent]], None]


class Gossip:
    """Membership and state spreading over a :class:`QuicTransport`."""

    def __init__(
        self,
        me: PeerAnnouncement,
        signer: Signer,
        settings: MembershipSettings,
        on_events: EventsHandler | None = None,
        on_stream: StreamHandler | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.settings = settings
        self.core = Membership(
            me, signer, settings, now=self.now(), wall_offset=time.time() - self.now()
        )
        self.transport: QuicTransport | None = None
        self._on_events = on_events or (lambda events: None)
        self._on_stream = on_stream
        self._handlers: dict[str, FrameHandler] = {}
        self._dialling: dict[str, asyncio.Task[bool]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopping = False

    # what the node and its parts use

    @property
    def state(self) -> MeshState:
        return self.core.state

    @property
    def counters(self) -> Mapping[str, int]:
        """What membership refused from peers, and why, with the hellos the transport
        refused (for status pages and tests)."""
        refused = dict(self.core.refusals())
        if self.transport is not None:
            refused.update(self.transport.refused)
        return refused

    def now(self) -> float:
        """The monotonic clock the core runs on."""
        return self._loop.time()

    def add_handler(self, frame_type: FrameType, handler: FrameHandler) -> None:
        """Handle control frames of ``frame_type`` that are not membership's (``drop``)."""
        self._handlers[frame_type] = handler

    def start(self, transport: QuicTransport, seeds: Iterable[Seed]) -> None:
        """Run on ``transport``; join through ``seeds``."""
        self.transport = transport
        now = self.now()
        for seed in seeds:
            self.core.add_seed(seed, now)
        self._flush()

    async def leave(self) -> None:
        """Tell every peer this node is leaving (signed), then stop."""
        self.core.leave(self.now())
        self._flush()
        self._stopping = True
        await asyncio.sleep(0.05)  # let the frames go out before the links close
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._dialling.values()):
            task.cancel()

    def publish(self, **changes: Any) -> PeerAnnouncement:
        """Change this node's announcement and tell every peer at once."""
        me = self.core.publish(self.now(), **changes)
        self._flush()
        return me

    def set_load(self, load: int) -> None:
        """Requests in flight; coalesced by the core (per request: kept cheap)."""
        due = self.core.set_load(load)
        if due is not None and (self._timer_at is None or due < self._timer_at):
            self._schedule()

    def suspect(self, node_id: str, reason: str) -> None:
        """The data path to ``node_id`` broke: start a suspicion at once."""
        self.core.suspect(node_id, reason, self.now())
        self._flush()

    def add_seeds(self, seeds: Iterable[Seed]) -> None:
        """Join through ``seeds`` too (found after start: on the LAN, say)."""
        now = self.now()
        for seed in seeds:
            self.core.add_seed(seed, now)
        self._flush()

    def broadcast(self, frame: Frame, exclude: str | None = None) -> set[str]:
        """Send ``frame`` to every linked peer now but ``exclude`` (ephemeral news: nothing
        is relayed or retried); the node ids it went to."""
        sent = set()
        for node_id, link in list(self.transport.links.items() if self.transport else ()):
            if not link.closed and node_id != exclude:
                link.send(frame)
                sent.add(node_id)
        return sent

    def link(self, node_id: str) -> Link | None:
        """The live link to ``node_id``, if any."""
        link = self.transport.links.get(node_id) if self.transport else None
        return link if link is not None and not link.closed else None

    async def ensure_link(self, node_id: str) -> Link:
        """The link to a known peer, dialled now if needed.  Raises :class:`PeerError`."""
        if (link := self.link(node_id)) is not None:
            return link
        peer = self.state.peers.get(node_id)
        if peer is None or not peer.addrs:
            raise PeerError(f"peer {node_id} is unknown")
        task = self._dial(node_id, tuple(peer.addrs), node_id)
        with contextlib.suppress(Exception):
            await asyncio.shield(task)
        if (link := self.link(node_id)) is not None:
            return link
        raise PeerError(f"peer {node_id} is unreachable")

    def rtt(self, node_id: str) -> float | None:
        """Last measured round-trip time to ``node_id``, in seconds."""
        return self.core.health.rtt(node_id)

    def last_heard(self, node_id: str) -> float | None:
        """When ``node_id`` was last heard from (:meth:`now`'s clock)."""
        return self.core.health.last_heard(node_id)

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score: 0 is healthy; higher stretches probe timings."""
        return self.core.health.awareness

    def is_suspect(self, node_id: str) -> bool:
        return self.core.health.is_suspect(node_id)

    # LinkHandler

    def link_up(self, link: Link) -> None:
        self.core.link_up(link.node_id, self.now())
        self._flush()

    def link_down(self, link: Link) -> None:
        if self._stopping:
            return
        self.core.link_down(link.node_id, self.now())
        self._flush()

    def frame_received(self, link: Link, frame: Frame) -> None:
        handler = self._handlers.get(frame["t"])
        if handler is None:
            self.core.receive(link.node_id, frame, self.now())
            self._flush()
            return
        if not self.core.admit(link.node_id, self.now()):
            return
        try:
            handler(link, frame)
        except Exception:  # nothing a peer sends may take the daemon down
            log.exception("handling %r from %s", frame.get("t"), link.node_id)

    def stream_opened(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        if self._on_stream is None:
            stream.reset()
            return
        self._on_stream(link, stream, head)

    # carrying out the core's actions

    def _flush(self) -> None:
        for action in self.core.take_actions():
            try:
                self._carry_out(action)
            except Exception:  # one failed action must not lose the others
                log.exception("carrying out %r", action)
        self._schedule()

    def _carry_out(self, action: object) -> None:
        if isinstance(action, Send):
            if (link := self.link(action.node_id)) is not None:
                link.send(action.frame)
        elif isinstance(action, Broadcast):
            for node_id, link in list(self.transport.links.items() if self.transport else ()):
                if node_id not in action.exclude and not link.closed:
                    link.send(action.frame)
        elif isinstance(action, Changed):
            self._on_events(list(action.events))
        elif isinstance(action, Close):
            if (link := self.link(action.node_id)) is not None:
                link.close(reason=action.reason)
        elif isinstance(action, Dial) and not self._stopping:
            self._dial(action.key, action.addrs, action.node_id)

    def _schedule(self) -> None:
        if self._stopping:
            return
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer) if deadline else None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.core.tick(self.now())
        except Exception:  # the loop never dies: log, count, and carry on
            self.core.counters["tick_errors"] += 1
            log.exception("membership tick")
        self._flush()

    # dialling

    def _dial(self, key: str, addrs: tuple[str, ...], node_id: str | None) -> asyncio.Task[bool]:
        task = self._dialling.get(key)
        if task is None:
            task = asyncio.ensure_future(self._dial_addrs(key, addrs, node_id))
            self._dialling[key] = task
            task.add_done_callback(lambda _: self._dialling.pop(key, None))
        return task

    async def _dial_addrs(self, key: str, addrs: tuple[str, ...], node_id: str | None) -> bool:
        assert self.transport is not None
        ok = False
        for addr in addrs:
            try:
                await self.transport.dial(addr, expected_node_id=node_id)
                ok = True
                break
            except HelloError as exc:
                if key.startswith("seed:"):
                    log.error("join refused by %s: %s", addr, exc)
                    self.core.seed_refused(key)
                    return False
                log.info("dial %s at %s: %s", node_id, addr, exc)
            except (PeerError, OSError, ValueError) as exc:
                level = logging.WARNING if key.startswith("seed:") else logging.DEBUG
                log.log(level, "cannot reach %s at %s: %s", node_id or "seed", addr, exc)
        if not self._stopping:
            self.core.dial_done(key, ok, self.now())
            self._flush()
        return ok
