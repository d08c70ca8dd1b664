"""Several membership cores wired together in memory, on a fake clock.

As aioquic tests QUIC with two ``QuicConnection`` objects and a ``transfer()``, this
carries each core's actions to the others: :meth:`MemNet.transfer` delivers frames
over the links that exist, dials succeed when the network lets them, and
:meth:`MemNet.run` moves the clock forward, waking every core at its deadlines.
Hosts can be killed (they go silent, their links stay up as QUIC's would until
an idle timeout), cut off from each other, and healed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshllm.gossip.announcement import PeerAnnouncement
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
from meshllm.gossip.state import StateEvent
from meshllm.identity import Identity
from meshllm.wire import Frame, decode_payload, encode_frame

MESH = "mesh-test"
WALL_OFFSET = 1_800_000_000.0  # the fake wall clock: seconds since the epoch at now=0


@dataclass
class Host:
    """One node: its core, its identity, its address and what it saw."""

    name: str
    identity: Identity
    core: Membership
    addr: str
    alive: bool = True
    events: list[StateEvent] = field(default_factory=list)
    received: list[tuple[str, Frame]] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def peer_ids(self) -> set[str]:
        return set(self.core.state.peers)


class MemNet:
    """A network of membership cores on one fake clock."""

    def __init__(self, settings: MembershipSettings | None = None, seed: int = 1) -> None:
        self.settings = settings or MembershipSettings()
        self.now = 0.0
        self.hosts: dict[str, Host] = {}  # by node id
        self.links: set[frozenset[str]] = set()
        self.cuts: set[frozenset[str]] = set()  # pairs the network does not carry
        self.drop: Callable[[str, str, Frame], bool] = lambda src, dst, frame: False
        self._rng = random.Random(seed)
        self._by_addr: dict[str, str] = {}

    # building

    def add(self, name: str, seeds: Iterable[Host] = (), **fields: object) -> Host:
        identity = Identity.generate()
        addr = f"10.0.0.{len(self.hosts) + 1}:9338"
        me = PeerAnnouncement(
            node_id=identity.node_id,
            mesh_id=MESH,
            public_key=identity.public_key,
            addrs=[addr],
            incarnation=int((self.now + WALL_OFFSET) * 1000),
            **fields,  # type: ignore[arg-type]
        )
        core = Membership(
            me,
            identity,
            self.settings,
            now=self.now,
            wall_offset=WALL_OFFSET,
            rng=random.Random(self._rng.random()),
        )
        host = Host(name, identity, core, addr)
        self.hosts[host.node_id] = host
        self._by_addr[addr] = host.node_id
        for seed in seeds:
            core.add_seed(Seed(seed.addr, seed.node_id), self.now)
        self.transfer()
        return host

    def link(self, a: Host, b: Host) -> None:
        """Both sides see an authenticated link come up (as after a hello)."""
        pair = frozenset({a.node_id, b.node_id})
        if pair in self.links:
            return
        self.links.add(pair)
        a.core.link_up(b.node_id, self.now)
        b.core.link_up(a.node_id, self.now)

    def unlink(self, a: Host, b: Host) -> None:
        pair = frozenset({a.node_id, b.node_id})
        if pair in self.links:
            self.links.discard(pair)
            a.core.link_down(b.node_id, self.now)
            b.core.link_down(a.node_id, self.now)

    # failures

    def kill(self, host: Host) -> None:
        """kill -9: it goes silent; its links look up to the others for now."""
        host.alive = False

    def cut(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """The network stops carrying anything between the two sides; their links break
        (as QUIC's would once its idle timeout passes: here at once, worst case)."""
        for a in side_a:
            for b in side_b:
                self.cuts.add(frozenset({a.node_id, b.node_id}))
                self.unlink(a, b)

    def heal(self) -> None:
        self.cuts.clear()

    def reachable(self, a: str, b: str) -> bool:
        return self.hosts[a].alive and self.hosts[b].alive and frozenset({a, b}) not in self.cuts

    # running

    def transfer(self) -> None:
        """Carry out every core's actions until none is left."""
        for _ in range(10_000):
            busy = False
            for host in list(self.hosts.values()):
                if not host.alive:
                    host.core.take_actions()
                    continue
                for action in host.core.take_actions():
                    busy = True
                    self._carry_out(host, action)
            if not busy:
                return
        raise AssertionError("the cores never went quiet")

    def run(self, seconds: float, step: float = 0.05) -> None:
        """Move the clock ``seconds`` on, waking each core at its deadlines."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for host in self.hosts.values():
                deadline = host.core.next_deadline()
                if host.alive and deadline is not None and deadline <= self.now:
                    host.core.tick(self.now)
            self.transfer()

    def run_until(self, predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
        """Run until ``predicate()``; returns the fake seconds it took."""
        start = self.now
        while not predicate():
            if self.now - start > timeout:
                raise AssertionError(f"not true after {timeout} fake seconds")
            self.run(step, step)
        return self.now - start

    def converged(self, hosts: Iterable[Host] | None = None) -> bool:
        group = list(hosts if hosts is not None else self.hosts.values())
        ids = {h.node_id for h in group}
        return all(h.peer_ids() == ids - {h.node_id} for h in group)

    # internals

    def _carry_out(self, host: Host, action: object) -> None:
        if isinstance(action, Send):
            self._deliver(host, action.node_id, action.frame)
        elif isinstance(action, Broadcast):
            for pair in list(self.links):
                if host.node_id in pair:
                    (other,) = pair - {host.node_id}
                    if other not in action.exclude:
                        self._deliver(host, other, action.frame)
        elif isinstance(action, Changed):
            host.events.extend(action.events)
        elif isinstance(action, Close):
            self.unlink(host, self.hosts[action.node_id])
        elif isinstance(action, Dial):
            self._dial(host, action)

    def _deliver(self, src: Host, dst_id: str, frame: Frame) -> None:
        if frozenset({src.node_id, dst_id}) not in self.links:
            return
        if not self.reachable(src.node_id, dst_id) or self.drop(src.node_id, dst_id, frame):
            return
        dst = self.hosts[dst_id]
        frame = decode_payload(encode_frame(frame)[4:])  # what the wire would carry
        dst.received.append((src.node_id, frame))
        dst.core.receive(src.node_id, frame, self.now)

    def _dial(self, host: Host, dial: Dial) -> None:
        for addr in dial.addrs:
            target = self._by_addr.get(addr)
            if target is None or target == host.node_id:
                continue
            if dial.node_id is not None and dial.node_id != target:
                continue  # the hello would refuse it
            if self.reachable(host.node_id, target):
                self.link(host, self.hosts[target])
                host.core.dial_done(dial.key, True, self.now)
                return
        host.core.dial_done(dial.key, False, self.now)
