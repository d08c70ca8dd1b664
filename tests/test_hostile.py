"""Hostile peers against real daemons (issue: hostile membership).

An authenticated member (it holds the mesh secret, as anyone with the token does)
speaks the real protocol over a real QUIC link and tries each attack an earlier
review reproduced against the old membership code.  Each test shows the attack
refused and counted, and the mesh intact afterwards: every node lists exactly the
honest nodes, not suspected, at their current incarnations; every node routes the
served model to the node that serves it; ``/health`` answers; where the attack
was about joining or gossip, a new node still joins and leaves.

The nodes (the Cluster's 1 s probes, the default table of 256 peers) are shared by
the module; the attacks that leave lasting marks (fake peers: dials, deaths, local
health) run last.  Most attacks end with one more ``ping``: frames on the control
stream are handled in order, so its ``pong`` says the victim has handled the attack.
The in-memory twins of these rules are in tests/gossip/test_membership.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from meshllm.gossip import Link
from meshllm.gossip import announcement as signing
from meshllm.gossip.announcement import PeerAnnouncement
from meshllm.gossip.state import DEFAULT_MAX_PEERS
from meshllm.identity import Identity
from meshllm.join_token import JoinToken
from meshllm.testing.cluster import (
    BackendProcess,
    Cluster,
    NodeProcess,
    recording_member_link,
    wait_for,
)
from meshllm.wire import Frame, FrameType, make_frame

CONVERGE = 30.0  # generous: a busy 2-core box; behaviour, not timing
MAX_PEERS = DEFAULT_MAX_PEERS  # the table's cap: the nodes run with the default
MODEL = "hostile-m"
U64_MAX = 2**64 - 1
SANE = 2**62  # signing.MAX_COUNTER: incarnations stay below it
FEW_PROBE_CYCLES = 5.0  # probe 1 s + timeout 1 s + a small mesh's longest suspicion (3 s)
MEASURE_S = 10.0  # how long dial traffic towards fake peers is measured
# Dials to fake peers: at most DIAL_RATE a second (burst: twice that), each a few
# padded QUIC Initials until the hello times out; the old code sent 1.58 MB/s.
DIAL_RATE = 10  # MembershipSettings.dial_rate
MAX_DIAL_BYTES_PER_S = 150_000  # a tenth of that; DIAL_RATE allows ~90 KB/s at most


# --- the mesh under attack -------------------------------------------------------------------


@dataclass
class Mesh:
    cluster: Cluster
    victim: NodeProcess  # every attacker links to it (it seeded the mesh)
    server: NodeProcess  # fronts a fake backend serving MODEL

    @property
    def mesh_id(self) -> str:
        return JoinToken.decode(self.victim.token).mesh_id


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("hostile")
    backend = BackendProcess(root / "backend.log", [MODEL]).start()
    try:
        with Cluster(root) as cluster:
            victim = cluster.add(name="victim")
            server = cluster.add("--endpoint", backend.url, name="server")
            m = Mesh(cluster, victim, server)
            assert_intact(m)
            yield m
    finally:
        backend.kill()


def problems(m: Mesh) -> list[str]:
    """What is wrong with the mesh now (empty: intact)."""
    nodes = m.cluster.live()
    status = {n.node_id: n.status() for n in nodes}
    found = []
    for node in nodes:
        name = node.state_dir.name
        if not node.get("/health").get("ok"):
            found.append(f"{name}: /health is not ok")
        peers = {p["node_id"]: p for p in status[node.node_id]["peers"]}
        if set(peers) != set(status) - {node.node_id}:
            found.append(f"{name} lists {len(peers)} peers, not the {len(status) - 1} honest ones")
        for node_id in set(peers) & set(status):
            peer, own = peers[node_id], status[node_id]
            if peer["suspect"]:
                found.append(f"{name} suspects {node_id}")
            if peer["incarnation"] != own["incarnation"]:
                found.append(f"{name} has {node_id} at incarnation {peer['incarnation']}")
            if peer["serving"] != own["serving"]:
                found.append(f"{name} has {node_id} serving {peer['serving']}")
        if warm_nodes(node) != {m.server.node_id}:
            found.append(f"{name} routes {MODEL} to {sorted(warm_nodes(node))}")
    return found


def assert_intact(m: Mesh) -> None:
    """Wait (generously) for the mesh to be intact; fail saying what is not."""
    seen: list[str] = []

    def intact() -> bool:
        seen[:] = problems(m)
        return not seen

    try:
        wait_for(intact, CONVERGE, interval=0.2, what="the mesh to be intact")
    except TimeoutError:
        pytest.fail("the mesh is not intact: " + "; ".join(seen))


def warm_nodes(node: NodeProcess) -> set[str]:
    """The node ids ``node`` would route MODEL to."""
    for entry in node.get("/v1/models")["data"]:
        if entry["id"] == MODEL and entry["meshllm"]["warm"]:
            return set(entry["meshllm"]["nodes"])
    return set()


def served_by(node: NodeProcess) -> str:
    """Ask ``node`` for MODEL; returns the id of the node that answered."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        node.url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        return resp.headers["x-meshllm-node"]


def refused(node: NodeProcess) -> dict[str, int]:
    """What ``node``'s membership refused, by reason."""
    return node.status()["membership"]["refused"]


def count(node: NodeProcess, reason: str) -> int:
    return refused(node).get(reason, 0)


def incarnation_of(node_id: str, at: NodeProcess) -> int | None:
    """``node_id``'s incarnation as ``at`` lists it."""
    return next((p["incarnation"] for p in at.status()["peers"] if p["node_id"] == node_id), None)


def join_and_leave(m: Mesh) -> None:
    """A new node joins through the victim and is listed by all; its leave reaches all."""
    newcomer = m.cluster.add(name=f"newcomer{len(m.cluster.nodes)}")
    nodes = m.cluster.live()
    wait_for(lambda: m.cluster.converged(nodes), CONVERGE, what="the newcomer to be listed")
    assert newcomer.terminate() == 0
    others = [n for n in nodes if n is not newcomer]
    wait_for(
        lambda: all(newcomer.node_id not in n.peer_ids() for n in others),
        CONVERGE,
        what="the newcomer's leave to reach every node",
    )


# --- the attacker's tools --------------------------------------------------------------------


def announce(*wires: Any) -> Frame:
    return make_frame(FrameType.ANNOUNCE, anns=list(wires))


def fresh_peer(m: Mesh, key: Identity | None = None, **fields: Any) -> tuple[Identity, Any]:
    """A validly signed announcement of a new node (a fresh key unless ``key``)."""
    key = key or Identity.generate()
    incarnation = fields.pop("incarnation", int(time.time() * 1000))
    ann = PeerAnnouncement(key.node_id, m.mesh_id, key.public_key, incarnation=incarnation)
    return key, signing.sign(ann, key).to_wire() if not fields else sign_raw(key, ann, **fields)


def sign_raw(key: Identity, ann: PeerAnnouncement | None = None, **fields: Any) -> dict[str, bytes]:
    """``ann`` with ``fields`` changed, signed by ``key`` as is: no bounds checked."""
    data = ann.to_wire() if ann is not None else {}
    payload = msgpack.packb({**data, **fields}, use_bin_type=True)
    return {"p": payload, "s": key.sign(payload)}


def payload_of(wire: dict[str, bytes]) -> dict[str, Any]:
    return msgpack.unpackb(wire["p"], raw=False)


def announcements(frames: list[Frame], node_id: str | None = None) -> list[dict[str, bytes]]:
    """The signed announcements in ``frames`` (of ``node_id`` only, if given)."""
    found = []
    for frame in frames:
        if frame.get("t") == FrameType.ANNOUNCE:
            for wire in frame["anns"]:
                peeked = signing.peek(wire)
                if node_id is None or (peeked is not None and peeked[0] == node_id):
                    found.append(wire)
    return found


async def until(predicate: Callable[[], Any], timeout: float = CONVERGE, what: str = "") -> Any:
    """:func:`wait_for` off the event loop, so the attacker's link stays served."""
    return await asyncio.to_thread(wait_for, predicate, timeout, 0.05, what or "condition")


_ping_ids = itertools.count(1 << 40)


async def handled(link: Link, frames: list[Frame]) -> None:
    """Wait until the victim has handled every frame sent on ``link`` so far."""
    ping_id = next(_ping_ids)
    link.send(make_frame(FrameType.PING, id=ping_id))
    await until(
        lambda: any(f.get("t") == FrameType.PONG and f.get("id") == ping_id for f in frames),
        what="the victim to handle the attack",
    )


def verdicts(frames: list[Frame], about: set[str]) -> list[Frame]:
    """The ``dead`` frames about ``about`` in ``frames``: a node sends one to every link
    on each verdict of its own."""
    return [f for f in frames if f.get("t") == FrameType.DEAD and f.get("node_id") in about]


def stays_listed(m: Mesh, node: NodeProcess, seconds: float) -> None:
    """Every other node lists ``node`` throughout the next ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for other in m.cluster.live():
            if other is not node:
                assert node.node_id in other.peer_ids(), f"{other.state_dir.name} dropped it"
        time.sleep(0.2)


# --- 1. forged announcements of another node ------------------------------------------------


def test_forged_announcements_for_another_node_are_refused(mesh: Mesh) -> None:
    server_id = mesh.server.node_id
    before = count(mesh.victim, "bad_announcements")

    async def attack() -> None:
        async with recording_member_link(mesh.victim.token) as (link, frames):
            real = (await until(lambda: announcements(frames, server_id), what="push-pull"))[0]
            liar = Identity.generate()
            # The highest rank the clock check lets through: any seq, at its incarnation.
            forged = payload_of(real) | {"seq": SANE, "serving": {"captured": "ready"}}
            link.send(
                announce(
                    sign_raw(liar, **forged | {"public_key": liar.public_key}),  # its own key
                    sign_raw(liar, **forged),  # the server's key, the liar's signature
                    {"p": msgpack.packb(forged), "s": real["s"]},  # a changed payload
                )
            )
            await handled(link, frames)

    asyncio.run(attack())
    entry = next(p for p in mesh.victim.status()["peers"] if p["node_id"] == server_id)
    assert entry["seq"] < SANE and "captured" not in entry["serving"]
    assert count(mesh.victim, "bad_announcements") == before + 3
    assert_intact(mesh)  # the server's own entry, at its own rank, everywhere


# --- 2. leave, dead and suspect about another node ------------------------------------------


def test_a_leave_not_signed_by_the_leaver_is_refused(mesh: Mesh) -> None:
    server_id = mesh.server.node_id
    before = count(mesh.victim, "bad_announcements")

    async def attack() -> None:
        async with recording_member_link(mesh.victim.token) as (link, frames):
            real = (await until(lambda: announcements(frames, server_id), what="push-pull"))[0]
            liar = Identity.generate()
            leaving = payload_of(real) | {"leaving": True, "seq": payload_of(real)["seq"] + 1}
            for wire in (
                sign_raw(liar, **leaving | {"public_key": liar.public_key}),
                sign_raw(liar, **leaving),
                real,  # a real announcement, but not a leaving one
            ):
                link.send(make_frame(FrameType.LEAVE, a=wire))
            await handled(link, frames)

    asyncio.run(attack())
    assert server_id in mesh.victim.peer_ids()
    assert count(mesh.victim, "bad_announcements") == before + 2
    assert_intact(mesh)


def test_second_hand_dead_and_suspect_are_only_suspicions(mesh: Mesh) -> None:
    server_id = mesh.server.node_id

    async def attack() -> list[Frame]:
        async with recording_member_link(mesh.victim.token) as (link, frames):
            for kind in (FrameType.DEAD, FrameType.SUSPECT):
                incarnation = (await asyncio.to_thread(mesh.server.status))["incarnation"]
                link.send(make_frame(kind, node_id=server_id, incarnation=incarnation))
                await handled(link, frames)
                # Over a few probe cycles nobody drops the server: it answers every probe.
                await asyncio.to_thread(stays_listed, mesh, mesh.server, FEW_PROBE_CYCLES / 2)
            return list(frames)

    assert verdicts(asyncio.run(attack()), {server_id}) == []  # the victim never found it dead
    assert_intact(mesh)  # a refutation's new incarnation reached everyone


# --- 3. dead at 2^64 - 1 ---------------------------------------------------------------------


def test_dead_at_two_to_the_64_minus_one_leaves_incarnations_sane(mesh: Mesh) -> None:
    victim, server = mesh.victim, mesh.server
    incarnations = {n.node_id: n.status()["incarnation"] for n in (victim, server)}

    async def attack() -> list[Frame]:
        async with recording_member_link(victim.token) as (link, frames):
            for node_id in incarnations:
                for kind in (FrameType.DEAD, FrameType.SUSPECT):
                    link.send(make_frame(kind, node_id=node_id, incarnation=U64_MAX))
            await handled(link, frames)
            await asyncio.to_thread(stays_listed, mesh, server, FEW_PROBE_CYCLES)
            return list(frames)

    assert verdicts(asyncio.run(attack()), set(incarnations)) == []
    assert {n.node_id: n.status()["incarnation"] for n in (victim, server)} == incarnations
    assert_intact(mesh)

    async def gossip_goes_on() -> dict[str, bytes]:
        async with recording_member_link(victim.token) as (_, frames):
            return (await until(lambda: announcements(frames, victim.node_id)))[0]

    mine = signing.verify(asyncio.run(gossip_goes_on())).ann  # still signs what it says
    assert mine.incarnation == incarnations[victim.node_id] < SANE


# --- 6. oversized announcements --------------------------------------------------------------


def test_oversized_announcements_are_refused_and_new_links_work(mesh: Mesh) -> None:
    before = count(mesh.victim, "bad_announcements")
    liar = Identity.generate()

    async def attack() -> None:
        async with recording_member_link(mesh.victim.token, liar) as (link, frames):
            for blob in ("blob", "version"):  # an unknown field; a known one
                _, wire = fresh_peer(mesh, liar, **{blob: "x" * 600_000})
                link.send(announce(wire))  # ~600 KB: inside a frame, far over 32 KiB
            await handled(link, frames)

    asyncio.run(attack())
    assert all(liar.node_id not in n.peer_ids() for n in mesh.cluster.live())
    assert count(mesh.victim, "bad_announcements") == before + 2
    join_and_leave(mesh)
    assert_intact(mesh)


# --- 7. a pull repeating one id --------------------------------------------------------------


def test_a_pull_repeating_one_id_is_answered_once(mesh: Mesh) -> None:
    server_id = mesh.server.node_id

    async def attack() -> list[dict[str, bytes]]:
        async with recording_member_link(mesh.victim.token) as (link, frames):
            await until(lambda: announcements(frames, server_id), what="push-pull")
            await asyncio.sleep(0.5)  # the push-pull is over
            seen = len(frames)
            link.send(make_frame(FrameType.PULL, ids=[server_id] * 60_000))  # ~1 MB
            await until(lambda: announcements(frames[seen:], server_id), what="the answer")
            await asyncio.sleep(2.0)  # for any more answers to arrive
            return announcements(frames[seen:])

    answers = asyncio.run(attack())
    assert len(answers) == 1 and signing.peek(answers[0])[0] == server_id  # type: ignore[index]
    assert_intact(mesh)


# --- 8. negative load ------------------------------------------------------------------------


def test_negative_load_is_refused_and_routing_is_not_captured(mesh: Mesh) -> None:
    before = count(mesh.victim, "bad_announcements")
    liar = Identity.generate()

    async def attack() -> None:
        async with recording_member_link(mesh.victim.token, liar) as (link, frames):
            _, wire = fresh_peer(mesh, liar, load=-(2**31), serving={MODEL: "ready"})
            link.send(announce(wire))
            await handled(link, frames)
            # While the liar is still linked: the victim routes to the real server.
            answered = [await asyncio.to_thread(served_by, mesh.victim) for _ in range(5)]
            assert set(answered) == {mesh.server.node_id}

    asyncio.run(attack())
    assert all(liar.node_id not in n.peer_ids() for n in mesh.cluster.live())
    assert count(mesh.victim, "bad_announcements") == before + 1
    assert_intact(mesh)


# --- 9. a flood of frames --------------------------------------------------------------------


def test_a_flood_of_frames_is_rate_limited(mesh: Mesh) -> None:
    before = count(mesh.victim, "rate_limited")
    flood = 20_000

    async def attack() -> int:
        async with recording_member_link(mesh.victim.token) as (link, frames):
            for i in range(flood):
                link.send(make_frame(FrameType.PING, id=i))
            assert (await asyncio.to_thread(mesh.victim.get, "/health"))["ok"]  # in the flood

            def pongs() -> int:
                return sum(1 for f in frames if f.get("t") == FrameType.PONG)

            await until(
                lambda: (
                    count(mesh.victim, "rate_limited") >= before + flood // 2
                    or pongs() >= flood // 4
                ),
                what="the flood to be handled",
            )
            await asyncio.sleep(1.0)
            return pongs()

    pongs = asyncio.run(attack())
    assert pongs < flood // 4  # the budget answered, not the flood
    assert_intact(mesh)


# --- 10. garbage the new protocol brings -----------------------------------------------------


def test_garbage_in_signed_announcements_and_digests_is_refused_and_counted(mesh: Mesh) -> None:
    """What tests/test_mesh.py's garbage does not cover: signed envelopes around bad
    payloads, validly signed announcements out of bounds, and oversized lists."""
    victim, server_id = mesh.victim, mesh.server.node_id
    before = refused(victim)
    key = Identity.generate()
    me = PeerAnnouncement(key.node_id, mesh.mesh_id, key.public_key, incarnation=1)

    def signed(payload: bytes) -> dict[str, bytes]:
        return {"p": payload, "s": key.sign(payload)}

    bad = [
        signed(b"\x91" * 30_000 + b"\xc0"),  # nested past msgpack's stack
        signed(msgpack.packb([1, 2, 3])),
        signed(msgpack.packb({1: 2})),
        {"p": "not bytes", "s": b"x" * 64},
        {"p": msgpack.packb(me.to_wire()), "s": b"short"},
        *(
            sign_raw(key, me, **fields)
            for fields in [
                {"load": True}, {"incarnation": 1.5}, {"incarnation": U64_MAX}, {"seq": -1},
                {"public_key": b"k" * 31}, {"node_id": "n" * 200}, {"addrs": ["h:1"] * 9},
                {"serving": {"../../etc/passwd": "ready"}}, {"serving": {"m\r\nX: 1": "ready"}},
                {"requested_models": ["m"] * 200}, {"resources": {"blob": "x" * 20_000}},
            ]
        ),
    ]  # fmt: skip
    stranger = Identity.generate()
    other_mesh = sign_raw(
        stranger, PeerAnnouncement(stranger.node_id, "another-mesh", stranger.public_key)
    )
    _, ahead = fresh_peer(mesh, incarnation=int(time.time() * 1000) + 86_400_000)

    async def attack() -> list[Frame]:
        async with recording_member_link(victim.token) as (link, frames):
            link.send(announce(*bad))
            link.send(announce(other_mesh, ahead))
            link.send(make_frame(FrameType.LEAVE, a=12))
            link.send(announce(*[{"p": b"", "s": b""}] * 300))  # over 256 a frame
            link.send(make_frame(FrameType.DIGEST, d={f"n{i}": [1, 1] for i in range(12_000)}))
            await asyncio.sleep(0.6)  # past the digest gap
            link.send(make_frame(FrameType.DIGEST, d={"x": [U64_MAX, 0], "y": [-1, 0], "z": "?"}))
            link.send(make_frame(FrameType.PING_REQ, id=1, target=victim.node_id))
            for i in range(100):  # more than the victim runs for others at once
                link.send(make_frame(FrameType.PING_REQ, id=100 + i, target=server_id))
            link.send(make_frame(FrameType.PONG, id=5, target="nobody"))
            link.send(make_frame(FrameType.NACK, id="x", target=server_id))
            link.send(make_frame(FrameType.SUSPECT, node_id="n" * 10_000, incarnation=True))
            await handled(link, frames)
            await asyncio.sleep(1.0)  # the relayed probes' answers
            return list(frames)

    frames = asyncio.run(attack())
    after = refused(victim)
    rises = {"bad_announcements": len(bad) + 1, "other_mesh": 1, "incarnation_ahead": 1}
    rises["offences"] = len(bad) + 4  # + the leave, the early clock, the 300 and the 12,000
    for counter, rise in rises.items():
        assert after.get(counter, 0) == before.get(counter, 0) + rise, counter
    kinds = [f.get("t") for f in frames]
    assert FrameType.PULL not in kinds  # a digest of strangers pulls nothing
    assert kinds.count(FrameType.ERROR) <= 5  # error replies are rate-limited, not one a frame
    relayed = [f for f in frames if f.get("t") in (FrameType.PONG, FrameType.NACK)]
    assert len([f for f in relayed if f.get("target") == server_id]) <= 100  # no amplification
    assert any(f.get("t") == FrameType.PONG and f.get("id") == 1 for f in frames)  # "me": pong
    strangers = {key.node_id, stranger.node_id, signing.peek(ahead)[0]}  # type: ignore[index]
    assert all(not strangers & n.peer_ids() for n in mesh.cluster.live())
    assert_intact(mesh)


def test_bad_frames_past_the_budget_close_the_link(mesh: Mesh) -> None:
    async def attack() -> bool:
        async with recording_member_link(mesh.victim.token) as (link, _):
            for _ in range(150):  # max_offences is 100
                link.send(make_frame(FrameType.PULL, ids="nope"))
            await until(lambda: link.closed, what="the victim to close the link")
            return link.closed

    assert asyncio.run(attack())
    assert_intact(mesh)


# --- 4. fake peers at addresses that never answer --------------------------------------------


class UdpSinks:
    """UDP sockets on 127.0.0.1 that never answer: the addresses of fake peers.  Counts
    what each source sends to them, and when."""

    def __init__(self, n: int) -> None:
        self.socks = []
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.received: list[tuple[float, int, bytes]] = []  # (monotonic time, source port, data)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in self.socks]

    def window(self, source: str, start: float, seconds: float) -> tuple[int, int, int]:
        """What ``source`` (host:port) sent in ``[start, start + seconds)``: datagrams,
        bytes, and connections tried (distinct destination connection ids of QUIC
        long-header packets, RFC 9000 §17.2: one a dial)."""
        port = int(source.rsplit(":", 1)[1])
        sent = [d for t, p, d in self.received if p == port and start <= t < start + seconds]
        dials = {d[6 : 6 + d[5]] for d in sent if len(d) > 6 and d[0] & 0x80}
        return len(sent), sum(map(len, sent)), len(dials)

    def __enter__(self) -> UdpSinks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for sock in self.socks:
                sel.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    while True:
                        try:
                            data, (_, port) = key.fileobj.recvfrom(65536)  # type: ignore[union-attr]
                        except BlockingIOError:
                            break
                        self.received.append((time.monotonic(), port, data))


@dataclass
class FakeFlood:
    """What 300 fake peers did to the mesh."""

    fakes: set[str] = field(repr=False)
    table_full: int  # the victim's refusals for a full table, during the attack
    largest_table: int  # the most peers the victim listed
    datagrams: int  # the victim sent towards the fakes, in MEASURE_S seconds
    bytes: int
    dials: int  # connections the victim tried, in those datagrams
    server_bytes: int  # what the server sent them (the fakes were gossiped to it)
    awareness: int  # the victim's local health score once the fakes are gone
    per_second: dict[int, int] = field(default_factory=dict)  # the victim's bytes, by second


@pytest.fixture(scope="module")
def fake_flood(mesh: Mesh) -> FakeFlood:
    before = count(mesh.victim, "table_full")
    with UdpSinks(300) as sinks:
        keys, wires = zip(*(fresh_peer(mesh, addrs=[addr]) for addr in sinks.addrs), strict=True)
        fakes = {k.node_id for k in keys}
        largest = 0

        async def attack() -> float:
            async with recording_member_link(mesh.victim.token) as (link, _):
                start = time.monotonic()
                for i in range(0, len(wires), 100):
                    link.send(announce(*wires[i : i + 100]))
                await asyncio.sleep(1.0)
                return start

        start = asyncio.run(attack())
        while time.monotonic() < start + MEASURE_S:
            largest = max(largest, len(mesh.victim.status()["peers"]))
            time.sleep(0.2)
        wait_for(
            lambda: all(not fakes & n.peer_ids() for n in mesh.cluster.live()),
            90,
            interval=0.5,
            what="the fake peers to be dropped as dead",
        )
        datagrams, sent, dials = sinks.window(mesh.victim.quic_addr, start, MEASURE_S)
        _, server_sent, _ = sinks.window(mesh.server.quic_addr, start, MEASURE_S)
        seconds = range(int(MEASURE_S))
        per_second = {s: sinks.window(mesh.victim.quic_addr, start + s, 1)[1] for s in seconds}
    status = mesh.victim.status()
    return FakeFlood(
        fakes=fakes,
        table_full=status["membership"]["refused"].get("table_full", 0) - before,
        largest_table=largest,
        datagrams=datagrams,
        bytes=sent,
        dials=dials,
        server_bytes=server_sent,
        awareness=status["membership"]["awareness"],
        per_second=per_second,
    )


def test_fake_peers_are_bounded_and_dropped_as_dead(mesh: Mesh, fake_flood: FakeFlood) -> None:
    print(f"\n{fake_flood}")  # the figures, for pytest -s
    assert fake_flood.largest_table <= MAX_PEERS
    assert fake_flood.table_full >= 300 - MAX_PEERS
    assert fake_flood.dials > 0  # the fakes were dialled: the measurement measures
    assert fake_flood.dials <= 2 * DIAL_RATE + DIAL_RATE * MEASURE_S  # the burst, then the rate
    assert fake_flood.bytes / MEASURE_S < MAX_DIAL_BYTES_PER_S
    assert_intact(mesh)
    join_and_leave(mesh)


def test_fake_peers_do_not_make_the_node_distrust_itself(fake_flood: FakeFlood) -> None:
    assert fake_flood.awareness <= 1


# --- 5. twelve thousand announcements --------------------------------------------------------


def test_twelve_thousand_announcements_keep_the_table_bounded(mesh: Mesh) -> None:
    victim, server = mesh.victim, mesh.server
    before = count(victim, "table_full")
    wires = [fresh_peer(mesh, addrs=[f"192.0.2.{i % 254 + 1}:9"])[1] for i in range(12_000)]
    fakes = {signing.peek(w)[0] for w in wires}  # type: ignore[index]

    async def attack() -> int:
        async with recording_member_link(victim.token) as (link, frames):
            for i in range(0, len(wires), 250):
                link.send(announce(*wires[i : i + 250]))
            await handled(link, frames)
            return len((await asyncio.to_thread(victim.status))["peers"])  # at its fullest

    assert asyncio.run(attack()) <= MAX_PEERS
    assert count(victim, "table_full") >= before + 12_000 - MAX_PEERS
    # A change on an honest node still arrives while the table is full: a restart.
    incarnation = server.status()["incarnation"]
    server.kill()
    server.start()
    assert server.status()["incarnation"] > incarnation
    wait_for(
        lambda: incarnation_of(server.node_id, at=victim) == server.status()["incarnation"],
        CONVERGE,
        what="the victim to hear of the restart",
    )
    assert len(victim.status()["peers"]) <= MAX_PEERS
    wait_for(
        lambda: all(not fakes & n.peer_ids() for n in mesh.cluster.live()),
        90,
        interval=0.5,
        what="the fake peers to be dropped as dead",
    )
    assert_intact(mesh)
    join_and_leave(mesh)


# --- found here: answering for a dead node ---------------------------------------------------


def test_a_killed_node_is_dropped_though_a_member_answers_for_it(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        node, doomed = cluster.add(), cluster.add()
        wait_for(cluster.converged, CONVERGE, what="two nodes")

        async def attack() -> None:
            async with recording_member_link(node.token) as (link, _):
                doomed.kill()
                gone = asyncio.ensure_future(
                    until(lambda: doomed.node_id not in node.peer_ids(), 15, what="the drop")
                )
                while not gone.done():  # "it answered me": a relayed pong, 5 a second
                    link.send(make_frame(FrameType.PONG, target=doomed.node_id))
                    await asyncio.sleep(0.2)
                await gone

        asyncio.run(attack())
