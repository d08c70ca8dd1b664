"""Real ``meshllm`` daemons on 127.0.0.1 talking real QUIC (issue: mesh core)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import msgpack
import pytest

from meshllm.join_token import JoinToken
from meshllm.testing.cluster import Cluster, NodeProcess, member_link, wait_for
from meshllm.wire import FrameType, encode_frame, make_frame

CONVERGE = 30.0  # generous: these are behaviour tests, timings live in scripts/bench_gossip.py


@pytest.fixture
def cluster(tmp_path: Path):
    with Cluster(tmp_path) as c:
        yield c


def test_five_nodes_converge(cluster: Cluster) -> None:
    for _ in range(5):
        cluster.add()
    wait_for(cluster.converged, CONVERGE, what="5 nodes to list each other")
    status = cluster.nodes[2].status()
    assert len(status["peers"]) == 4
    assert all(p["role"] == "worker" and p["addrs"] for p in status["peers"])
    # The token names the mesh and an address of the node that printed it.
    token = JoinToken.decode(cluster.nodes[3].token)
    assert token.node_id == cluster.nodes[3].node_id
    assert token.addrs == [cluster.nodes[3].quic_addr]


def test_kill_is_noticed_by_all_once_its_suspicion_times_out(cluster: Cluster) -> None:
    nodes = [cluster.add() for _ in range(4)]
    wait_for(cluster.converged, CONVERGE, what="convergence")
    victim = nodes[1]
    victim.kill()
    survivors = [n for n in nodes if n is not victim]
    # Probe interval 1 s + timeout 1 s, then a suspicion of 1-3 s (shorter as others
    # confirm it); the rest is slack for a busy 2-core CI box.
    wait_for(
        lambda: all(victim.node_id not in n.peer_ids() for n in survivors),
        timeout=10,
        what="the killed node to be dropped",
    )
    assert cluster.converged(survivors)


def test_sigterm_leave_is_noticed_at_once(tmp_path: Path) -> None:
    # Probes every 60 s: only the leave notice can explain a fast removal.
    with Cluster(tmp_path, ["--probe-interval", "60", "--probe-timeout", "30"]) as c:
        nodes = [c.add() for _ in range(3)]
        wait_for(c.converged, CONVERGE, what="convergence")
        assert nodes[2].terminate() == 0
        t0 = time.monotonic()
        wait_for(
            lambda: all(nodes[2].node_id not in n.peer_ids() for n in nodes[:2]),
            timeout=10,
            what="the leaving node to be dropped",
        )
        assert time.monotonic() - t0 < 30  # far below any probe: it was the leave


def test_restarted_node_rejoins(cluster: Cluster) -> None:
    seed = cluster.add()
    other = cluster.add()
    wait_for(cluster.converged, CONVERGE, what="convergence")
    node_id = other.node_id
    other.kill()
    other.start()  # same state dir: same key, same mesh; a new incarnation
    assert other.node_id == node_id
    wait_for(lambda: seed.peer_ids() == {node_id} and other.peer_ids() == {seed.node_id},
             CONVERGE, what="the restarted node to rejoin")  # fmt: skip
    inc = {p["node_id"]: p["incarnation"] for p in seed.status()["peers"]}
    assert inc[node_id] == other.status()["incarnation"]


def test_wrong_secret_is_admitted_nowhere_and_learns_nothing(cluster: Cluster) -> None:
    a, b = cluster.add(), cluster.add()
    wait_for(cluster.converged, CONVERGE, what="convergence")
    real = JoinToken.decode(a.token)
    forged = JoinToken(real.mesh_id, os.urandom(32), real.owner, real.addrs, real.node_id).encode()
    intruder = cluster.add("--join", forged)
    time.sleep(3)  # give it every chance to get in
    assert intruder.status()["peers"] == []
    assert intruder.status()["catalog"] == []
    assert a.peer_ids() == {b.node_id} and b.peer_ids() == {a.node_id}
    assert "join refused" in intruder.log()


def test_bad_token_gives_one_line_error(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", ["--join", "mesh1-garbage", "--bind", "127.0.0.1:0"])
    node.start(wait=False)
    assert node.proc is not None and node.proc.wait(30) == 2
    assert node.log().strip().splitlines() == [
        "meshllm: bad join token: it is truncated or corrupted"
    ]


async def _abuse(token: str) -> None:
    """Join as a real member, then send garbage of every kind."""
    rng = random.Random(7)
    async with member_link(token) as link:
        junk = [
            make_frame(FrameType.ANNOUNCE, anns=[{"node_id": 3}, "x", None, {"mesh_id": []}]),
            make_frame(FrameType.ANNOUNCE, anns="nope"),
            make_frame(FrameType.DIGEST, d={"a": "b", "c": [1]}),
            make_frame(FrameType.PULL, ids=[1, None, {"x": 1}]),
            make_frame(FrameType.DEAD, node_id=5),
            make_frame(FrameType.LEAVE),
            make_frame(FrameType.PING, id={"deep": [1, 2]}),
            make_frame(FrameType.PONG, id="zz"),
            {"t": "no-such-type", "v": 99},
            make_frame(FrameType.TUNNEL, k="head"),
            make_frame(FrameType.FILE, name=None),
        ]
        for frame in junk:
            link.send(frame)
        for _ in range(20):  # random maps of random fields
            link.send(
                {"t": rng.choice(list(FrameType)), **{str(i): os.urandom(i) for i in range(5)}}
            )
        for _ in range(5):  # request streams with garbage heads
            stream = await link.open_stream()
            await stream.send({"t": "tunnel", "k": rng.random()})
            await stream.send(make_frame(FrameType.ERROR, message=os.urandom(10)))
            await stream.end()
        conn = link._conn
        raw = link._conn.quic
        stream_id = raw.get_next_available_stream_id()
        raw.send_stream_data(stream_id, os.urandom(100), end_stream=True)  # undecodable
        payload = msgpack.packb({"t": "ping", "id": 1})
        raw.send_stream_data(0, len(payload).to_bytes(4, "big") + payload[:3])  # truncated
        raw.send_stream_data(0, encode_frame(make_frame(FrameType.PING))[:2] + b"\xff" * 8)
        conn.transmit()
        await asyncio.sleep(1.0)


def test_garbage_from_an_authenticated_peer_does_not_crash_the_daemon(cluster: Cluster) -> None:
    a, b = cluster.add(), cluster.add()
    wait_for(cluster.converged, CONVERGE, what="convergence")
    asyncio.run(_abuse(a.token))
    assert a.alive() and b.alive()
    assert a.get("/health")["ok"]
    c = cluster.add()  # the mesh still works as before
    wait_for(lambda: cluster.converged([a, b, c]), CONVERGE, what="convergence after abuse")
