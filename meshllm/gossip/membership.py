"""The membership core: who is in the mesh, and what each node says (pure, sans-I/O).

Frames, link events and ``now`` go in; actions come out (:class:`Send`,
:class:`Broadcast`, :class:`Dial`, :class:`Close`, :class:`Changed`) with the next
deadline, as aioquic's ``QuicConnection`` does for QUIC.  :mod:`meshllm.gossip.pump`
runs it on the transport; tests wire several cores together in memory.

Spreading (DESIGN.md §5): full state both ways when a link comes up (push-pull);
this node's signed announcement to every peer on each change; announcements new
to us forwarded to a few random peers (so news reaches nodes we are not linked
to); a digest to a few random peers every ``gossip_interval`` repairs what was
lost.  Health is :class:`~meshllm.gossip.health.Health` (SWIM + Lifeguard): a
peer is removed only on our own verdict, or on its own signed ``leaving``
announcement.  Healing: seeds and the last addresses of removed peers are
redialled every ``reconnect_interval``, so a split mesh reconverges by itself.

Everything a peer sends is hostile until checked: signatures, bounds, a frame
budget per link, offences counted (too many close the link), and no reply is
bigger than what asked for it.  Nothing a peer sends raises out of
:meth:`Membership.receive`.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from meshllm.errors import FrameError
from meshllm.gossip import announcement as signing
from meshllm.gossip.announcement import PeerAnnouncement, SignedAnnouncement, Signer
from meshllm.gossip.dials import Dial, Dials, TokenBucket
from meshllm.gossip.health import (
    Died,
    Health,
    HealthAction,
    HealthSettings,
    NeedLink,
    Ping,
    PingReq,
    RelayAnswer,
    Suspected,
)
from meshllm.gossip.state import (
    DEFAULT_MAX_PEERS,
    MeshState,
    PeerJoined,
    PeerRemoved,
    PeerUpdated,
    StateEvent,
)
from meshllm.wire import MAX_FRAME_SIZE, Frame, FrameType, make_frame

log = logging.getLogger(__name__)

ANNOUNCE_BATCH_BYTES = MAX_FRAME_SIZE // 2  # signed announcements per frame, by size
MAX_ANNOUNCEMENTS_PER_FRAME = 256
MAX_CLOCK_AHEAD_MS = 10 * 60 * 1000  # an incarnation (ms at start) this far past our clock is a lie
DIGEST_MIN_GAP = 0.5  # seconds between two digests from one peer that we answer
REFUTE_MIN_GAP = 0.5  # seconds between two refutations of suspicions about us
ERROR_MIN_GAP = 1.0  # seconds between two error frames to one peer


@dataclass(frozen=True)
class Seed:
    """An address to join through, and the node id expected there (from the token)."""

    addr: str
    node_id: str | None = None


@dataclass(frozen=True)
class MembershipSettings:
    """Timings (seconds) and budgets of membership; every one a documented setting."""

    health: HealthSettings = field(default_factory=HealthSettings)
    gossip_interval: float = 5.0  # anti-entropy: a backstop, changes are pushed at once
    gossip_fanout: int = 3  # peers a digest, or news learnt second-hand, goes to
    load_publish_interval: float = 1.0  # load changes per request: coalesce them
    reconnect_interval: float = 30.0  # redial seeds and removed peers this often
    reconnect_timeout: float = 24 * 3600.0  # ... for this long after they went
    max_peers: int = DEFAULT_MAX_PEERS
    dial_rate: float = 10.0  # dials per second, at most (burst: twice that)
    # Control frames per second from one peer (burst: twice): room for a full table's
    # worth of probe traffic (ping-req and nack per peer) in one burst.
    frame_rate: float = 500.0
    max_offences: int = 100  # bad frames from one link before it is closed


@dataclass(frozen=True)
class Send:
    """Send ``frame`` to ``node_id`` over its link."""

    node_id: str
    frame: Frame


@dataclass(frozen=True)
class Broadcast:
    """Send ``frame`` to every linked peer but those in ``exclude``."""

    frame: Frame
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Close:
    """Close the link to ``node_id``."""

    node_id: str
    reason: str


@dataclass(frozen=True)
class Changed:
    """The mesh state changed (for routing, serving and the console)."""

    events: tuple[StateEvent, ...]


Action = Send | Broadcast | Dial | Close | Changed


@dataclass
class _LinkBook:
    bucket: TokenBucket
    offences: int = 0
    last_digest: float = -math.inf
    last_error: float = -math.inf


class Membership:
    """One node's view of the mesh, and the protocol that keeps it true."""

    def __init__(
        self,
        me: PeerAnnouncement,
        signer: Signer,
        settings: MembershipSettings,
        *,
        now: float,
        wall_offset: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        """``wall_offset``: wall-clock seconds minus ``now`` (incarnations are wall ms)."""
        self.settings = settings
        fields = ("addrs", "serving", "failures", "available_models", "requested_models")
        me = replace(me, **_fit({f: getattr(me, f) for f in fields}))
        self.state = MeshState(me, settings.max_peers)
        self.linked: set[str] = set()
        self.health = Health(settings.health, rng, linked=self.linked)
        self.counters: Counter[str] = Counter()  # what was refused, and why
        self._signer = signer
        self._wall_offset = wall_offset
        self._rng = rng or random.Random()
        self._signed_me = signing.sign(me, signer)
        self._actions: list[Action] = []
        self._books: dict[str, _LinkBook] = {}
        self.dials = Dials(
            rate=settings.dial_rate,
            reconnect_interval=settings.reconnect_interval,
            reconnect_timeout=settings.reconnect_timeout,
            max_plans=2 * settings.max_peers,
            now=now,
            rng=self._rng,
        )
        self._unlinked: dict[str, float] = {}  # linked peers whose link just went
        # Peers worth redialling once removed, oldest first, at most 4 x max_peers.
        self._ever_linked: dict[str, None] = {}
        self._load = me.load
        self._next_load = now
        self._next_gossip = now + settings.gossip_interval
        self._last_refute = -math.inf
        self._buddy_told: dict[str, float] = {}  # suspect -> when we last told it
        self._stopping = False

    # --- outputs ---------------------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        """Everything to do now, in order; the list is handed over."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        times = [self._next_gossip, *self._unlinked.values()]
        if self._load != self.state.me.load:
            times.append(self._next_load)
        if (dials := self.dials.next_deadline()) is not None:
            times.append(dials)
        if (health := self.health.next_deadline()) is not None:
            times.append(health)
        return min(times)

    def refusals(self) -> dict[str, int]:
        """What was refused from peers, and why, with the dials put off or dropped."""
        dials = {"dials_deferred": self.dials.deferred, "dials_dropped": self.dials.dropped}
        return {**self.counters, **{k: v for k, v in dials.items() if v}}

    @property
    def signed_me(self) -> SignedAnnouncement:
        return self._signed_me

    # --- inputs: this node -----------------------------------------------------------------

    def publish(self, now: float, **changes: Any) -> PeerAnnouncement:
        """Change this node's announcement and tell every peer at once."""
        fitted = _fit(changes)
        if "load" in fitted:
            self._load = fitted["load"]
        self.state.update_me(**fitted)
        self._resign()
        return self.state.me

    def add_seed(self, seed: Seed, now: float) -> None:
        """Join through ``seed``; it is redialled whenever we hold no link to it."""
        self.dials.seed(seed.addr, seed.node_id, now)

    def set_load(self, load: int) -> float | None:
        """Requests in flight; published at most every ``load_publish_interval``.  Returns
        when it is due to be (None: nothing new to publish), so that a caller on a hot path
        need not ask for the whole :meth:`next_deadline`."""
        self._load = max(0, load)
        return self._next_load if self._load != self.state.me.load else None

    def suspect(self, node_id: str, reason: str, now: float) -> None:
        """The data path to ``node_id`` broke (a tunnel, a stream): suspect it at once."""
        if node_id in self.state.peers and not self.health.is_suspect(node_id):
            log.info("suspecting %s: %s", node_id, reason)
            self.health.suspect(node_id, now)
            self._collect(self.health.pending(), now)

    def leave(self, now: float) -> None:
        """Say goodbye: a signed ``leaving`` announcement to every peer."""
        self._stopping = True
        self.dials.clear()
        self.state.update_me(leaving=True)
        self._signed_me = signing.sign(self.state.me, self._signer)
        self._actions.append(Broadcast(make_frame(FrameType.LEAVE, a=self._signed_me.to_wire())))

    # --- inputs: links ---------------------------------------------------------------------

    def link_up(self, node_id: str, now: float) -> None:
        """An authenticated link to ``node_id`` (the hello checked): push-pull."""
        self.linked.add(node_id)
        self._ever_linked.pop(node_id, None)
        self._ever_linked[node_id] = None
        if len(self._ever_linked) > 4 * self.settings.max_peers:
            del self._ever_linked[next(iter(self._ever_linked))]
        self._books[node_id] = _LinkBook(TokenBucket(self.settings.frame_rate, now))
        self._unlinked.pop(node_id, None)
        self.state.revive(node_id)  # a live link beats a tombstone
        self.health.alive(node_id, now)
        self.dials.forget(node_id)  # seeds stay: they are checked again, slowly
        self._push(node_id, [self._signed_me, *self.state.signed.values()])
        # Our verdicts too: a node we found dead that the peer can reach hears of it
        # through the peer and refutes, so a healed partition merges (SWIM).
        for dead, incarnation in self.state.tombstones(now).items():
            frame = make_frame(FrameType.DEAD, node_id=dead, incarnation=incarnation)
            self._actions.append(Send(node_id, frame))

    def link_down(self, node_id: str, now: float) -> None:
        """The link to ``node_id`` is gone: unless a new one replaces it at once, that
        is a broken data path (suspicion), and it is redialled."""
        self.linked.discard(node_id)
        self._books.pop(node_id, None)
        if not self._stopping and node_id in self.state.peers:
            self._unlinked[node_id] = now

    def dial_done(self, key: str, ok: bool, now: float) -> None:
        """The pump's report on a :class:`Dial`."""
        self.dials.done(key, ok, now)

    def seed_refused(self, key: str) -> None:
        """A seed answered but is not of this mesh (or not the node the token names):
        no point redialling it."""
        self.dials.refused(key)

    # --- inputs: frames --------------------------------------------------------------------

    def admit(self, node_id: str, now: float) -> bool:
        """Whether a frame from ``node_id`` for another part (``drop``, ``pool``,
        ``resources``) fits the link's frame budget: they share it with membership's, so
        no frame type lets a peer send more.  A refusal is counted."""
        book = self._books.get(node_id)
        if book is None:
            return False
        if not book.bucket.take(now):
            self.counters["rate_limited"] += 1
            return False
        self.health.heard_from(node_id, now)
        return True

    def receive(self, node_id: str, frame: Frame, now: float) -> None:
        """A control frame from the linked peer ``node_id``.  Never raises."""
        book = self._books.get(node_id)
        if book is None:
            return
        if not book.bucket.take(now):
            self.counters["rate_limited"] += 1
            return
        self.health.heard_from(node_id, now)
        handler = self._handlers.get(frame.get("t"))
        try:
            if handler is None:
                raise FrameError(f"unknown frame type {str(frame.get('t'))[:40]!r}")
            handler(self, node_id, frame, now)
        except FrameError as exc:
            self._offence(node_id, book, str(exc), now)
        except Exception:  # a bug here must not end the node: log, count, go on
            self.counters["handler_errors"] += 1
            log.exception("handling %r from %s", frame.get("t"), node_id)
        self._collect(self.health.pending(), now)

    # --- timers ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run everything due by ``now``."""
        for node_id, since in list(self._unlinked.items()):
            if since <= now:
                del self._unlinked[node_id]
                if node_id in self.state.peers and node_id not in self.linked:
                    self.suspect(node_id, "its link closed", now)
                    self._want_link(node_id, now)
        self._collect(self.health.tick(now), now)
        if self._load != self.state.me.load and now >= self._next_load:
            self._next_load = now + self.settings.load_publish_interval
            self.publish(now, load=self._load)
        if now >= self._next_gossip:
            self._next_gossip = now + self.settings.gossip_interval
            self.state.expire(now)
            self._anti_entropy()
        if not self._stopping:
            self._actions += self.dials.due(now, self.linked)

    # --- frame handlers --------------------------------------------------------------------

    def _on_announce(self, sender: str, frame: Frame, now: float) -> None:
        wires = frame.get("anns")
        if not isinstance(wires, list) or len(wires) > MAX_ANNOUNCEMENTS_PER_FRAME:
            raise FrameError("announce without a list of at most 256 announcements")
        fresh: list[SignedAnnouncement] = []
        events: list[StateEvent] = []
        for wire in wires:
            signed = self._check(sender, wire, now)
            if signed is None:
                continue
            event = self.state.apply(signed.ann, now, signed)
            if event is not None:
                fresh.append(signed)
                events.append(event)
        self._spread(sender, fresh)
        self._changed(events, now)

    def _on_leave(self, sender: str, frame: Frame, now: float) -> None:
        signed = self._check(sender, frame.get("a"), now)
        if signed is None or not signed.ann.leaving:
            return
        event = self.state.apply(signed.ann, now, signed)
        if event is None:
            return
        for node_id in self._fanout(exclude={sender, signed.ann.node_id}):
            self._actions.append(Send(node_id, frame))
        self._changed([event], now)

    def _on_digest(self, sender: str, frame: Frame, now: float) -> None:
        digest = frame.get("d")
        if not isinstance(digest, dict) or len(digest) > self.settings.max_peers + 1:
            raise FrameError("digest without a map of at most max_peers entries")
        book = self._books[sender]
        if now - book.last_digest < DIGEST_MIN_GAP:
            self.counters["digest_too_soon"] += 1
            return
        book.last_digest = now
        theirs: dict[str, tuple[int, int]] = {}
        for node_id, rank in digest.items():
            if isinstance(node_id, str) and _is_rank(rank):
                theirs[node_id] = (rank[0], rank[1])
        push, pull = self.state.compare(theirs, now)
        self._push_known(sender, push)
        if pull:
            self._actions.append(Send(sender, make_frame(FrameType.PULL, ids=pull)))

    def _on_pull(self, sender: str, frame: Frame, now: float) -> None:
        ids = frame.get("ids")
        if not isinstance(ids, list):
            raise FrameError("pull without a list of ids")
        wanted = dict.fromkeys(i for i in ids[: self.settings.max_peers + 1] if isinstance(i, str))
        self._push_known(sender, wanted)

    def _on_ping(self, sender: str, frame: Frame, now: float) -> None:
        ping_id = frame.get("id")
        if not isinstance(ping_id, int):
            raise FrameError("ping without an integer id")
        self._actions.append(Send(sender, make_frame(FrameType.PONG, id=ping_id)))

    def _on_pong(self, sender: str, frame: Frame, now: float) -> None:
        target = frame.get("target")
        if target is None:
            self.health.pong(sender, frame.get("id"), now)
        elif isinstance(target, str):
            self.health.relayed_answer(sender, target, frame.get("id"), True, now)

    def _on_nack(self, sender: str, frame: Frame, now: float) -> None:
        target = frame.get("target")
        if isinstance(target, str):
            self.health.relayed_answer(sender, target, frame.get("id"), False, now)

    def _on_ping_req(self, sender: str, frame: Frame, now: float) -> None:
        target, ping_id = frame.get("target"), frame.get("id")
        if not isinstance(target, str) or not isinstance(ping_id, int):
            raise FrameError("ping-req without a target and an integer id")
        if target == self.state.node_id:
            self._actions.append(
                Send(sender, make_frame(FrameType.PONG, id=ping_id, target=target))
            )
            return
        self.health.ping_req(sender, target, ping_id, now, linked=target in self.linked)

    def _on_suspect(self, sender: str, frame: Frame, now: float) -> None:
        node_id, incarnation = frame.get("node_id"), frame.get("incarnation")
        if not isinstance(node_id, str) or not isinstance(incarnation, int):
            raise FrameError(f"{frame['t']} without node_id and incarnation")
        if node_id == self.state.node_id:
            self._refute(incarnation, now)
            return
        peer = self.state.peers.get(node_id)
        if peer is None or peer.incarnation != incarnation:
            return
        self.health.suspect(node_id, now, reporter=sender)  # a report, never a verdict
        if node_id in self.linked and now - self._buddy_told.get(node_id, -math.inf) >= 1.0:
            # Lifeguard's buddy system: the suspect hears of it, to refute it.
            self._buddy_told[node_id] = now
            frame = make_frame(FrameType.SUSPECT, node_id=node_id, incarnation=incarnation)
            self._actions.append(Send(node_id, frame))

    def _on_error(self, sender: str, frame: Frame, now: float) -> None:
        log.info("peer %s reports: %s", sender, str(frame.get("message"))[:200])

    _handlers = {
        FrameType.ANNOUNCE: _on_announce,
        FrameType.LEAVE: _on_leave,
        FrameType.DIGEST: _on_digest,
        FrameType.PULL: _on_pull,
        FrameType.PING: _on_ping,
        FrameType.PONG: _on_pong,
        FrameType.NACK: _on_nack,
        FrameType.PING_REQ: _on_ping_req,
        FrameType.SUSPECT: _on_suspect,
        FrameType.DEAD: _on_suspect,  # second-hand: a suspicion to check
        FrameType.ERROR: _on_error,
    }

    # --- internals -------------------------------------------------------------------------

    def _check(self, sender: str, wire: Any, now: float) -> SignedAnnouncement | None:
        """A signed announcement worth merging, or None (old news, or refused and counted)."""
        peeked = signing.peek(wire)
        if peeked is not None and peeked[0] == self.state.node_id:
            if peeked[1] > self.state.me.rank:
                self._outranked(sender, wire, now)
            return None
        if peeked is not None and not self.state.is_new(*peeked, now):
            if (
                peeked[0] not in self.state.peers
                and len(self.state.peers) >= self.settings.max_peers
            ):
                self.counters["table_full"] += 1
            return None  # old news (or no room): not worth a signature check
        try:
            signed = signing.verify(wire)
        except FrameError as exc:
            self.counters["bad_announcements"] += 1
            self._offence(sender, self._books.get(sender), str(exc), now, reply=False)
            return None
        ann = signed.ann
        if ann.mesh_id != self.state.me.mesh_id:
            self.counters["other_mesh"] += 1
            return None
        if ann.incarnation > self._wall_ms(now) + MAX_CLOCK_AHEAD_MS:
            self.counters["incarnation_ahead"] += 1
            self._offence(sender, self._books.get(sender), "incarnation ahead of the clock", now)
            return None
        return signed

    def _changed(self, events: Sequence[StateEvent], now: float) -> None:
        if not events:
            return
        for event in events:
            if isinstance(event, PeerJoined):
                self.health.track(event.peer.node_id, now)
                if event.peer.node_id not in self.linked:
                    self._want_link(event.peer.node_id, now)
            elif isinstance(event, PeerUpdated):
                if event.new.incarnation > event.old.incarnation:
                    self.health.alive(event.new.node_id, now)  # a refutation, or a restart
            elif isinstance(event, PeerRemoved):
                gone = event.peer.node_id
                self.health.untrack(gone)
                self._buddy_told.pop(gone, None)
                self._unlinked.pop(gone, None)
                if event.reason == "left":  # it said goodbye: nothing to redial
                    self.dials.forget(gone)
                    self._ever_linked.pop(gone, None)
                log.info("peer %s %s", gone, event.reason)
        self._actions.append(Changed(tuple(events)))

    def _collect(self, actions: list[HealthAction], now: float) -> None:
        for action in actions:
            if isinstance(action, Ping):
                self._send(action.node_id, make_frame(FrameType.PING, id=action.ping_id))
            elif isinstance(action, PingReq):
                frame = make_frame(FrameType.PING_REQ, id=action.ping_id, target=action.target)
                self._send(action.via, frame)
            elif isinstance(action, RelayAnswer):
                kind = FrameType.PONG if action.ok else FrameType.NACK
                frame = make_frame(kind, id=action.ping_id, target=action.target)
                self._send(action.requester, frame)
            elif isinstance(action, Suspected):
                peer = self.state.peers.get(action.node_id)
                # Told to all, the suspect included, to refute it; about a peer we never
                # reached, only our own probes speak (no refutation could reach us anyway,
                # and a table of fakes must not turn into a storm of suspicions).
                if peer is not None and action.node_id in self._ever_linked:
                    frame = make_frame(
                        FrameType.SUSPECT, node_id=peer.node_id, incarnation=peer.incarnation
                    )
                    self._actions.append(Broadcast(frame))
            elif isinstance(action, Died):
                self._declare_dead(action.node_id, now)
            elif isinstance(action, NeedLink):
                self._want_link(action.node_id, now)

    def _declare_dead(self, node_id: str, now: float) -> None:
        peer = self.state.peers.get(node_id)
        event = self.state.remove(node_id, now)
        if peer is None or event is None:
            return
        log.info("peer %s is dead: its suspicion timed out", node_id)
        dead = make_frame(FrameType.DEAD, node_id=node_id, incarnation=peer.incarnation)
        self._actions.append(Broadcast(dead, exclude=frozenset({node_id})))
        if node_id in self.linked:
            self._actions.append(Close(node_id, "peer dead"))
        self.dials.forget(node_id)
        if node_id in self._ever_linked:
            self.dials.removed(node_id, tuple(peer.addrs), now)
        self._changed([event], now)

    def _refute(self, incarnation: int, now: float) -> None:
        if incarnation != self.state.me.incarnation:
            return  # about another life of ours
        if self._raise_incarnation(now, "refuting a suspicion of this node"):
            self.health.self_refuted(now)

    def _outranked(self, sender: str, wire: Any, now: float) -> None:
        """The mesh holds an announcement of ours that outranks this run's (an earlier run
        whose clock was ahead): outrank it, or peers would keep the old one."""
        try:
            old = signing.verify(wire)  # our own key's: nobody else can make one
        except FrameError as exc:
            self.counters["bad_announcements"] += 1
            self._offence(sender, self._books.get(sender), str(exc), now, reply=False)
            return
        self._raise_incarnation(now, "an earlier run of this node outranks it", old.ann.incarnation)

    def _raise_incarnation(self, now: float, why: str, past: int = -1) -> bool:
        """Outrank every announcement of ours in the mesh (at most once a REFUTE_MIN_GAP);
        whether it was done."""
        if now - self._last_refute < REFUTE_MIN_GAP:
            return False
        self._last_refute = now
        event = self.state.refute(self._wall_ms(now), past=past)
        log.warning("%s: incarnation now %d", why, event.me.incarnation)
        self._resign()
        self._actions.append(Changed((event,)))
        return True

    def _resign(self) -> None:
        self._signed_me = signing.sign(self.state.me, self._signer)
        self._actions.append(Broadcast(_announce([self._signed_me])))

    def _spread(self, sender: str, fresh: list[SignedAnnouncement]) -> None:
        if not fresh:
            return
        origins = {s.ann.node_id for s in fresh}
        for node_id in self._fanout(exclude={sender, *origins}):
            self._push(node_id, fresh)

    def _fanout(self, exclude: set[str]) -> list[str]:
        candidates = sorted(self.linked - exclude)
        return self._rng.sample(candidates, min(self.settings.gossip_fanout, len(candidates)))

    def _anti_entropy(self) -> None:
        digest = {node_id: list(rank) for node_id, rank in self.state.digest().items()}
        for node_id in self._fanout(exclude=set()):
            self._send(node_id, make_frame(FrameType.DIGEST, d=digest))

    def _push(self, node_id: str, signed: list[SignedAnnouncement]) -> None:
        """Send ``signed`` to ``node_id`` in frames well inside the frame cap."""
        batch: list[SignedAnnouncement] = []
        size = 0
        for item in signed:
            if batch and (
                size + item.size > ANNOUNCE_BATCH_BYTES or len(batch) >= MAX_ANNOUNCEMENTS_PER_FRAME
            ):
                self._send(node_id, _announce(batch))
                batch, size = [], 0
            batch.append(item)
            size += item.size
        if batch:
            self._send(node_id, _announce(batch))

    def _push_known(self, node_id: str, ids: Iterable[str]) -> None:
        """Send ``node_id`` the signed announcements we hold of ``ids`` (ours included)."""
        mine = {self.state.node_id: self._signed_me}
        self._push(node_id, [s for i in ids if (s := mine.get(i) or self.state.signed.get(i))])

    def _send(self, node_id: str, frame: Frame) -> None:
        if node_id in self.linked:
            self._actions.append(Send(node_id, frame))

    def _offence(
        self, node_id: str, book: _LinkBook | None, message: str, now: float, reply: bool = True
    ) -> None:
        self.counters["offences"] += 1
        log.info("bad frame from %s: %s", node_id, message[:200])
        if book is None:
            return
        book.offences += 1
        if book.offences > self.settings.max_offences:
            self._actions.append(Close(node_id, "too many bad frames"))
        elif reply and now - book.last_error >= ERROR_MIN_GAP:
            book.last_error = now
            self._send(node_id, make_frame(FrameType.ERROR, message=message[:200]))

    # dialling

    def _want_link(self, node_id: str, now: float) -> None:
        peer = self.state.peers.get(node_id)
        if peer is not None and node_id not in self.linked:
            self.dials.peer(node_id, tuple(peer.addrs), now)

    def _wall_ms(self, now: float) -> int:
        return int((now + self._wall_offset) * 1000)


def _fit(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to this node's announcement as peers accept them (a log line for what
    was left out: a name from outside, say an endpoint's, that is not a safe name)."""
    fitted, dropped = signing.fit(**changes)
    if dropped:
        log.warning("not announcing unsafe model names: %s", ", ".join(map(repr, dropped)))
    return fitted


def _announce(signed: list[SignedAnnouncement]) -> Frame:
    return make_frame(FrameType.ANNOUNCE, anns=[s.to_wire() for s in signed])


def _is_rank(rank: Any) -> bool:
    return (
        isinstance(rank, list | tuple)
        and len(rank) == 2
        and all(isinstance(x, int) and 0 <= x <= signing.MAX_COUNTER for x in rank)
    )
