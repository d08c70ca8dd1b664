"""The gossip service: pumps frames between the QUIC transport and :class:`MeshState`.

Spreading (DESIGN.md §5): full state both ways when a link comes up; this
node's announcement to every peer on each change; announcements learnt from
one peer forwarded to the others, so news travels transitively and nodes dial
the peers they hear of; a digest to a few random peers every
``gossip_interval`` repairs anything lost.  Health: every linked peer is
pinged every ``probe_interval``; no pong within ``probe_timeout`` means dead,
removed at once and a ``dead`` notice spread.  A stopping node sends ``leave``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshllm.errors import FrameError, HelloError, PeerError
from meshllm.gossip.announcement import PeerAnnouncement
from meshllm.gossip.health import ProbeSchedule
from meshllm.gossip.state import MeshState, PeerJoined, PeerRemoved, SelfRefuted, StateEvent
from meshllm.gossip.transport import Link, QuicFrameStream, QuicTransport
from meshllm.wire import Frame, FrameType, make_frame

log = logging.getLogger(__name__)

ANNOUNCE_BATCH = 32  # announcements per frame, far below the frame cap

FrameHandler = Callable[[Link, Frame], None]
StreamHandler = Callable[[Link, QuicFrameStream, Frame], None]
EventsHandler = Callable[[list[StateEvent]], None]


@dataclass(frozen=True)
class GossipSettings:
    """Timings of gossip and health checks, in seconds."""

    probe_interval: float = 15.0
    probe_timeout: float = 5.0
    gossip_interval: float = 5.0  # anti-entropy: a backstop, changes are pushed at once
    gossip_fanout: int = 3
    load_publish_interval: float = 1.0  # load changes per request: coalesce them
    tick: float = 0.1


class Gossip:
    """Membership and state spreading over a :class:`QuicTransport` (its LinkHandler)."""

    def __init__(
        self,
        state: MeshState,
        settings: GossipSettings,
        on_events: EventsHandler | None = None,
        on_stream: StreamHandler | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.transport: QuicTransport | None = None
        self.probes = ProbeSchedule(settings.probe_interval, settings.probe_timeout)
        self._on_events = on_events or (lambda events: None)
        self._on_stream = on_stream
        self._handlers: dict[str, FrameHandler] = {
            FrameType.ANNOUNCE: self._on_announce,
            FrameType.DIGEST: self._on_digest,
            FrameType.PULL: self._on_pull,
            FrameType.PING: self._on_ping,
            FrameType.PONG: self._on_pong,
            FrameType.DEAD: self._on_dead,
            FrameType.LEAVE: self._on_leave,
            FrameType.ERROR: self._on_error,
        }
        self._dialling: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._load = 0
        self._stopping = False
        self._rng = random.Random()
        self._loop = asyncio.get_running_loop()

    # public API

    def now(self) -> float:
        """The monotonic clock the pure parts are driven with."""
        return self._loop.time()

    def add_handler(self, frame_type: FrameType, handler: FrameHandler) -> None:
        """Handle control frames of ``frame_type`` (e.g. ``drop``, ``file``)."""
        self._handlers[frame_type] = handler

    def start(self, transport: QuicTransport, seeds: Iterable[str]) -> None:
        """Run the timers and dial ``seeds`` (``host:port``)."""
        self.transport = transport
        self._spawn(self._ticker())
        for addr in seeds:
            self._spawn(self._dial_seed(addr))

    async def leave(self) -> None:
        """Tell every peer this node is leaving; then stop the timers."""
        self._stopping = True
        me = self.state.me
        self._broadcast(make_frame(FrameType.LEAVE, node_id=me.node_id, incarnation=me.incarnation))
        await asyncio.sleep(0.05)  # let the frames go out before the links close
        for task in list(self._tasks) + list(self._dialling.values()):
            task.cancel()

    def publish(self, **changes: Any) -> PeerAnnouncement:
        """Change this node's announcement and tell every peer at once."""
        me = self.state.update_me(**changes)
        self._broadcast(self._announce([me]))
        return me

    def set_load(self, load: int) -> None:
        """Record requests in flight; published at most every ``load_publish_interval``."""
        self._load = load  # per request: keep it cheap, the ticker publishes it

    def link(self, node_id: str) -> Link | None:
        """The live link to ``node_id``, if any."""
        link = self.transport.links.get(node_id) if self.transport else None
        return link if link is not None and not link.closed else None

    async def ensure_link(self, node_id: str) -> Link:
        """The link to a known peer, dialling it if needed.  Raises :class:`PeerError`."""
        if (link := self.link(node_id)) is not None:
            return link
        self._dial_peer(node_id)
        task = self._dialling.get(node_id)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        if (link := self.link(node_id)) is not None:
            return link
        raise PeerError(f"peer {node_id} is unreachable")

    # LinkHandler

    def link_up(self, link: Link) -> None:
        self.probes.relinked(link.node_id, self.now())
        anns = self.state.all()
        for i in range(0, len(anns), ANNOUNCE_BATCH):
            link.send(self._announce(anns[i : i + ANNOUNCE_BATCH]))

    def link_down(self, link: Link) -> None:
        if self._stopping:
            return
        # The connection went away without a leave: a replaced duplicate, an idle
        # timeout, or a peer that restarted.  Probes decide; a redial helps them.
        self._spawn(self._redial_later(link.node_id))

    def frame_received(self, link: Link, frame: Frame) -> None:
        self.probes.heard_from(link.node_id, self.now())
        handler = self._handlers.get(frame["t"])
        if handler is None:
            link.send(make_frame(FrameType.ERROR, message=f"unknown frame type {frame['t']!r}"))
            return
        try:
            handler(link, frame)
        except FrameError as exc:
            link.send(make_frame(FrameType.ERROR, message=str(exc)[:200]))
        except Exception:  # nothing a peer sends may take the daemon down
            log.exception("handling %r from %s", frame.get("t"), link.node_id)
            link.send(make_frame(FrameType.ERROR, message="internal error"))

    def stream_opened(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        if self._on_stream is None:
            stream.reset()
            return
        self._on_stream(link, stream, head)

    # frame handlers

    def _on_announce(self, link: Link, frame: Frame) -> None:
        anns = frame.get("anns")
        if not isinstance(anns, list):
            raise FrameError("announce without a list of announcements")
        changed, events = [], []
        for wire in anns:
            try:
                ann = PeerAnnouncement.from_wire(wire)
            except FrameError as exc:
                log.info("bad announcement from %s: %s", link.node_id, exc)
                continue
            event = self.state.apply(ann, self.now())
            if event is not None:
                changed.append(ann)
                events.append(event)
        if changed:
            self._broadcast(self._announce(changed), exclude=link.node_id)
            self._handle_events(events)

    def _on_digest(self, link: Link, frame: Frame) -> None:
        digest = frame.get("d")
        if not isinstance(digest, dict):
            raise FrameError("digest without a map")
        theirs: dict[str, tuple[int, int]] = {}
        for node_id, rank in digest.items():
            if (
                isinstance(rank, list | tuple)
                and len(rank) == 2
                and all(isinstance(x, int) for x in rank)
            ):
                theirs[node_id] = (rank[0], rank[1])
        push, pull = self.state.compare(theirs)
        for i in range(0, len(push), ANNOUNCE_BATCH):
            link.send(self._announce(push[i : i + ANNOUNCE_BATCH]))
        if pull:
            link.send(make_frame(FrameType.PULL, ids=pull))

    def _on_pull(self, link: Link, frame: Frame) -> None:
        ids = frame.get("ids")
        if not isinstance(ids, list):
            raise FrameError("pull without a list of ids")
        anns = [a for i in ids if isinstance(i, str) and (a := self.state.get(i)) is not None]
        for i in range(0, len(anns), ANNOUNCE_BATCH):
            link.send(self._announce(anns[i : i + ANNOUNCE_BATCH]))

    def _on_ping(self, link: Link, frame: Frame) -> None:
        link.send(make_frame(FrameType.PONG, id=frame.get("id")))

    def _on_pong(self, link: Link, frame: Frame) -> None:
        self.probes.pong(link.node_id, frame.get("id"), self.now())

    def _on_dead(self, link: Link, frame: Frame) -> None:
        self._removal_notice(link, frame, "dead")

    def _on_leave(self, link: Link, frame: Frame) -> None:
        self._removal_notice(link, frame, "left")

    def _on_error(self, link: Link, frame: Frame) -> None:
        log.info("peer %s reports: %s", link.node_id, str(frame.get("message"))[:200])

    def _removal_notice(self, link: Link, frame: Frame, reason: str) -> None:
        node_id, incarnation = frame.get("node_id"), frame.get("incarnation")
        if not isinstance(node_id, str) or not isinstance(incarnation, int):
            raise FrameError(f"{frame['t']} notice without node_id and incarnation")
        event = self.state.remove(node_id, incarnation, self.now(), reason)  # type: ignore[arg-type]
        if event is None:
            return
        if isinstance(event, PeerRemoved):
            self._broadcast(frame, exclude=link.node_id)
        self._handle_events([event])

    # events and timers

    def _handle_events(self, events: list[StateEvent]) -> None:
        for event in events:
            if isinstance(event, PeerJoined) and self.link(event.peer.node_id) is None:
                self._dial_peer(event.peer.node_id)
            elif isinstance(event, PeerRemoved):
                self.probes.untrack(event.peer.node_id)
                # Close at once: requests in flight to it fail over now, not at idle timeout.
                if (link := self.link(event.peer.node_id)) is not None:
                    link.close(reason=f"peer {event.reason}")
                log.info("peer %s %s", event.peer.node_id, event.reason)
            elif isinstance(event, SelfRefuted):
                log.warning("refuting a false report of this node's death")
                self._broadcast(self._announce([event.me]))
        self._on_events(events)

    def _declare_dead(self, node_id: str) -> None:
        peer = self.state.peers.get(node_id)
        self.probes.untrack(node_id)
        if (link := self.link(node_id)) is not None:
            link.close(reason="probe timed out")
        if peer is None:
            return
        event = self.state.remove(node_id, peer.incarnation, self.now(), "dead")
        if event is not None:
            self._broadcast(
                make_frame(FrameType.DEAD, node_id=node_id, incarnation=peer.incarnation)
            )
            self._handle_events([event])

    async def _ticker(self) -> None:
        next_gossip = self.now() + self.settings.gossip_interval
        next_load = self.now()
        while True:
            await asyncio.sleep(self.settings.tick)
            now = self.now()
            for node_id, ping_id in self.probes.due(now):
                if (link := self.link(node_id)) is not None:
                    link.send(make_frame(FrameType.PING, id=ping_id))
            for node_id in self.probes.expired(now):
                log.info("peer %s missed its probe", node_id)
                self._declare_dead(node_id)
            if self._load != self.state.me.load and now >= next_load:
                next_load = now + self.settings.load_publish_interval
                self.publish(load=self._load)
            if now >= next_gossip:
                next_gossip = now + self.settings.gossip_interval
                self.state.expire(now)
                self._anti_entropy()

    def _anti_entropy(self) -> None:
        assert self.transport is not None
        links = [link for link in self.transport.links.values() if not link.closed]
        digest = {node_id: list(rank) for node_id, rank in self.state.digest().items()}
        for link in self._rng.sample(links, min(self.settings.gossip_fanout, len(links))):
            link.send(make_frame(FrameType.DIGEST, d=digest))
        for node_id in self.state.peers:  # peers we could not reach yet: try again
            if self.link(node_id) is None:
                self._dial_peer(node_id)

    # dialling

    def _dial_peer(self, node_id: str) -> None:
        if node_id in self._dialling or self._stopping:
            return
        task = asyncio.ensure_future(self._dial_known(node_id))
        self._dialling[node_id] = task
        task.add_done_callback(lambda _: self._dialling.pop(node_id, None))

    async def _dial_known(self, node_id: str) -> None:
        assert self.transport is not None
        peer = self.state.peers.get(node_id)
        for addr in peer.addrs if peer else []:
            try:
                await self.transport.dial(addr, expected_node_id=node_id)
                return
            except (PeerError, OSError, ValueError) as exc:
                log.debug("dial %s at %s: %s", node_id, addr, exc)

    async def _dial_seed(self, addr: str) -> None:
        assert self.transport is not None
        delay = 0.5
        while not self._stopping:
            try:
                await self.transport.dial(addr)
                return
            except HelloError as exc:
                log.error("join refused by %s: %s", addr, exc)
                return
            except (PeerError, OSError) as exc:
                log.warning("cannot reach %s (%s); retrying in %.0f s", addr, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _redial_later(self, node_id: str) -> None:
        await asyncio.sleep(0.2)  # a replaced duplicate is back up by then
        if self.link(node_id) is None and node_id in self.state.peers:
            self._dial_peer(node_id)

    # helpers

    def _announce(self, anns: list[PeerAnnouncement]) -> Frame:
        return make_frame(FrameType.ANNOUNCE, anns=[a.to_wire() for a in anns])

    def _broadcast(self, frame: Frame, exclude: str | None = None) -> None:
        if self.transport is None:
            return
        for node_id, link in list(self.transport.links.items()):
            if node_id != exclude and not link.closed:
                link.send(frame)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
