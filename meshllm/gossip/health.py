"""Failure detection: SWIM probes with Lifeguard's refinements (pure; ``now`` passed in).

Every tracked peer is pinged every ``probe_interval`` over its link.  A ping
unanswered after ``probe_timeout`` (or a peer with no link when its probe is due,
or a data path that broke) makes it *suspect*: ``k`` other peers are asked to
ping it for us (``ping-req``), and everyone is told (``suspect``), the suspect
included, so a live one refutes.  It is *dead* only when the suspicion times out
with no sign of life: a pong, direct or relayed, or a refutation.

From Lifeguard (memberlist's ``awareness`` and ``suspicion``):

* **dynamic suspicion timeout**: it starts at ``max`` and falls toward ``min`` as
  independent confirmations come in (other nodes' suspicions, and the intermediate
  peers' nacks: they could not reach it either); ``min`` is ``probe_timeout`` scaled
  by log10 of the mesh size, ``max`` a multiple of it.  With no one to ask (two
  nodes) it is ``min`` at once.  Defaults: a dead peer is found within about one
  probe interval, its timeout and one indirect-probe timeout (~25 s);
* **local health awareness**: a node that misses its own acks and nacks (it is the
  slow one) stretches its probe interval and timeout instead of accusing others;
* **buddy system**: the suspect hears of its suspicion directly, to refute it.

A second-hand report (``suspect`` or ``dead`` from a peer) is never a verdict: it
makes us probe the peer at once, and counts as a confirmation if our own probe
fails too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass, field

NACK_FRACTION = 0.8  # an intermediate nacks at this share of the probe timeout (memberlist)


@dataclass(frozen=True)
class HealthSettings:
    """Probe timings, in seconds, and Lifeguard's knobs."""

    probe_interval: float = 15.0
    probe_timeout: float = 5.0
    indirect_probes: int = 3  # k peers asked to ping a suspect for us
    suspicion_max_mult: float = 3.0  # max suspicion timeout = this x min
    awareness_max: int = 8  # local health score cap: timings stretch up to (1 + this) times
    max_relayed_probes: int = 64  # ping-reqs we run for others at once


@dataclass(frozen=True)
class Ping:
    """Send ``ping{id}`` to ``node_id``."""

    node_id: str
    ping_id: int


@dataclass(frozen=True)
class PingReq:
    """Ask ``via`` to ping ``target`` for us: ``ping-req{id, target}``."""

    via: str
    target: str
    ping_id: int


@dataclass(frozen=True)
class RelayAnswer:
    """Tell ``requester`` how our ping of ``target`` for it went: pong or nack."""

    requester: str
    target: str
    ping_id: int
    ok: bool


@dataclass(frozen=True)
class Suspected:
    """We now suspect ``node_id`` (tell everyone, the suspect included)."""

    node_id: str


@dataclass(frozen=True)
class Died:
    """``node_id``'s suspicion timed out: our verdict is dead."""

    node_id: str


@dataclass(frozen=True)
class NeedLink:
    """``node_id`` is due a probe but has no link: dial it."""

    node_id: str


HealthAction = Ping | PingReq | RelayAnswer | Suspected | Died | NeedLink


@dataclass
class _Suspicion:
    started: float
    min_timeout: float
    max_timeout: float
    expected: int  # confirmations that bring the timeout down to min
    confirmations: set[str] = field(default_factory=set)
    nacks: set[str] = field(default_factory=set)  # intermediates that answered "no"
    asked: set[str] = field(default_factory=set)  # the intermediates we asked
    ping_id: int | None = None  # the indirect probes' id

    def deadline(self) -> float:
        c, k = len(self.confirmations), self.expected
        if k <= 0 or c >= k:
            return self.started + self.min_timeout
        frac = math.log(c + 1) / math.log(k + 1)
        return self.started + max(
            self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * frac
        )


@dataclass
class _Peer:
    next_probe: float
    ping_id: int | None = None  # outstanding direct probe
    sent_at: float = -math.inf
    probe_deadline: float = 0.0
    rtt: float | None = None
    last_heard: float = 0.0
    suspicion: _Suspicion | None = None
    reported_by: set[str] = field(default_factory=set)  # second-hand reports before ours


@dataclass
class _Relay:
    requester: str
    target: str
    their_id: int
    nack_at: float


class Health:
    """Liveness of every tracked peer."""

    def __init__(
        self,
        settings: HealthSettings,
        rng: random.Random | None = None,
        linked: Collection[str] = (),
    ) -> None:
        """``linked``: a live view of the peers this node holds a link to (only they can
        be pinged, or asked to ping for us)."""
        self.settings = settings
        self.awareness = 0  # Lifeguard's local health score: 0 is healthy
        self._linked = linked
        self._peers: dict[str, _Peer] = {}
        self._relays: dict[int, _Relay] = {}  # our ping id -> a probe we run for another
        self._rng = rng or random.Random()
        # Ids a member cannot predict from the ones it sees (tests pass a seeded rng).
        self._id_rng = rng or random.SystemRandom()
        self._actions: list[HealthAction] = []
        self._last_refuted = -math.inf

    # what the membership core tells us

    def track(self, node_id: str, now: float) -> None:
        """Start probing ``node_id`` (no-op if tracked); the first probe is spread over
        one interval so a mesh does not ping in bursts."""
        if node_id not in self._peers:
            first = now + self._rng.uniform(0.5, 1.0) * self._interval()
            self._peers[node_id] = _Peer(next_probe=first, last_heard=now)

    def untrack(self, node_id: str) -> None:
        """Stop probing ``node_id`` (it is dead or gone)."""
        self._peers.pop(node_id, None)

    def heard_from(self, node_id: str, now: float) -> None:
        """Any frame from the peer is a sign of life (not a refutation of a suspicion)."""
        if (peer := self._peers.get(node_id)) is not None:
            peer.last_heard = now

    def alive(self, node_id: str, now: float) -> None:
        """Proof of life that ends a suspicion: a new authenticated link, or an
        announcement refuting it."""
        if (peer := self._peers.get(node_id)) is not None:
            self._clear_suspicion(peer, now)

    def suspect(self, node_id: str, now: float, reporter: str | None = None) -> None:
        """Evidence against ``node_id``: ``reporter`` None is our own (a broken data
        path), else a peer's report, which makes us probe at once."""
        peer = self._peers.get(node_id)
        if peer is None:
            return
        if reporter is None:
            self._start_suspicion(node_id, peer, now)
        elif peer.suspicion is not None:
            peer.suspicion.confirmations.add(reporter)
        else:
            peer.reported_by.add(reporter)
        if peer.ping_id is None and now - peer.sent_at >= self._timeout():
            peer.next_probe = now  # check for ourselves, now (at most once a timeout)

    def pong(self, node_id: str, ping_id: object, now: float) -> None:
        """A ``pong`` from ``node_id``: answers our probe, or one we run for another."""
        relay = self._relays.get(ping_id) if isinstance(ping_id, int) else None
        if relay is not None and relay.target == node_id:  # only the target answers for itself
            del self._relays[ping_id]
            self._actions.append(RelayAnswer(relay.requester, node_id, relay.their_id, True))
        peer = self._peers.get(node_id)
        if peer is None or peer.ping_id is None or ping_id != peer.ping_id:
            return
        peer.rtt = now - peer.sent_at
        self._answered(peer, now)
        self._adjust(-1)

    def relayed_answer(self, via: str, target: str, ping_id: object, ok: bool, now: float) -> None:
        """``via`` answers our ping-req: ``target`` answered it (ok) or not (a nack)."""
        peer = self._peers.get(target)
        suspicion = peer.suspicion if peer is not None else None
        if suspicion is None or suspicion.ping_id is None or suspicion.ping_id != ping_id:
            return
        if via not in suspicion.asked:  # only those we asked may answer for it
            return
        if ok:
            self._answered(peer, now)
        else:
            peer.suspicion.nacks.add(via)
            peer.suspicion.confirmations.add(via)

    def ping_req(
        self, requester: str, target: str, their_id: object, now: float, linked: bool
    ) -> None:
        """``requester`` asks us to ping ``target``; we answer pong or nack."""
        if not isinstance(their_id, int) or len(self._relays) >= self.settings.max_relayed_probes:
            return
        if not linked:
            self._actions.append(RelayAnswer(requester, target, their_id, False))
            return
        ping_id = self._new_id()
        nack_at = now + NACK_FRACTION * self._timeout()
        self._relays[ping_id] = _Relay(requester, target, their_id, nack_at)
        self._actions.append(Ping(target, ping_id))

    # timers

    def tick(self, now: float) -> list[HealthAction]:
        """Everything due by ``now``."""
        for ping_id, relay in list(self._relays.items()):
            if relay.nack_at <= now:
                del self._relays[ping_id]
                self._actions.append(
                    RelayAnswer(relay.requester, relay.target, relay.their_id, False)
                )
        for node_id, peer in list(self._peers.items()):
            if peer.suspicion is not None and peer.suspicion.deadline() <= now:
                del self._peers[node_id]
                # Intermediates that said nothing at all point at us being the slow one.
                self._adjust(peer.suspicion.expected - len(peer.suspicion.nacks))
                self._actions.append(Died(node_id))
                continue
            if peer.ping_id is not None and peer.probe_deadline <= now:
                peer.ping_id = None  # missed: our own evidence
                peer.next_probe = now + self._interval()
                self._start_suspicion(node_id, peer, now)
            if peer.ping_id is None and peer.next_probe <= now:
                if node_id in self._linked:
                    peer.ping_id, peer.sent_at = self._new_id(), now
                    peer.probe_deadline = now + self._timeout()
                    self._actions.append(Ping(node_id, peer.ping_id))
                else:
                    self._actions.append(NeedLink(node_id))
                    peer.next_probe = now + self._interval()
                    self._start_suspicion(node_id, peer, now)
        return self.pending()

    def pending(self) -> list[HealthAction]:
        """Actions not yet handed over (those made outside :meth:`tick`: answers to
        ping-reqs, the probes of a suspicion)."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do."""
        times = [r.nack_at for r in self._relays.values()]
        for peer in self._peers.values():
            times.append(peer.probe_deadline if peer.ping_id is not None else peer.next_probe)
            if peer.suspicion is not None:
                times.append(peer.suspicion.deadline())
        return min(times, default=None)

    # what status pages show

    def rtt(self, node_id: str) -> float | None:
        """Last measured round-trip time, in seconds."""
        peer = self._peers.get(node_id)
        return peer.rtt if peer else None

    def last_heard(self, node_id: str) -> float | None:
        """When the peer was last heard from."""
        peer = self._peers.get(node_id)
        return peer.last_heard if peer else None

    def is_suspect(self, node_id: str) -> bool:
        peer = self._peers.get(node_id)
        return peer is not None and peer.suspicion is not None

    def self_refuted(self, now: float) -> None:
        """Others suspected us: maybe we are the slow one (Lifeguard).  Counted once a
        probe interval at most, so a member repeating suspicions cannot make us deaf."""
        if now - self._last_refuted >= self.settings.probe_interval:
            self._last_refuted = now
            self._adjust(+1)

    # internals

    def _start_suspicion(self, node_id: str, peer: _Peer, now: float) -> None:
        if peer.suspicion is not None:
            return
        others = [
            n
            for n, p in self._peers.items()
            if n != node_id and n in self._linked and p.suspicion is None
        ]
        k = min(self.settings.indirect_probes, len(others))
        min_timeout = self.settings.probe_timeout * max(1.0, math.log10(len(self._peers) + 1))
        suspicion = _Suspicion(
            started=now,
            min_timeout=min_timeout,
            max_timeout=min_timeout * self.settings.suspicion_max_mult,
            expected=k,
            confirmations=set(peer.reported_by),
        )
        peer.suspicion = suspicion
        self._actions.append(Suspected(node_id))
        # One more direct ping beside the indirect ones (memberlist adds a TCP ping):
        # a single lost frame must not be enough for a death.
        peer.ping_id, peer.sent_at = self._new_id(), now
        peer.probe_deadline = suspicion.started + suspicion.max_timeout
        self._actions.append(Ping(node_id, peer.ping_id))
        if k:
            suspicion.ping_id = self._new_id()
            suspicion.asked = set(self._rng.sample(others, k))
            for via in sorted(suspicion.asked):
                self._actions.append(PingReq(via, node_id, suspicion.ping_id))
        else:
            self._adjust(+1)

    def _answered(self, peer: _Peer, now: float) -> None:
        peer.ping_id = None
        peer.next_probe = now + self._interval()
        self._clear_suspicion(peer, now)

    def _clear_suspicion(self, peer: _Peer, now: float) -> None:
        peer.suspicion = None
        peer.reported_by.clear()
        peer.last_heard = now

    def _new_id(self) -> int:
        # Random, not a counter: an id a member could guess would let it answer for others.
        return self._id_rng.getrandbits(62)

    def _adjust(self, delta: int) -> None:
        self.awareness = min(max(self.awareness + delta, 0), self.settings.awareness_max)

    def _interval(self) -> float:
        return self.settings.probe_interval * (1 + self.awareness)

    def _timeout(self) -> float:
        return self.settings.probe_timeout * (1 + self.awareness)
