"""Joining over the LAN: real daemons in network namespaces, mDNS on (issue: "a joining
node whose token's addresses are stale finds its mesh over mDNS and joins; ``meshllm
discover`` lists the meshes on the LAN; being found admits nobody without the secret").

Three hosts on one bridge: host 0 runs the seed A, host 1 a member B that joins with a
token whose addresses are stale, host 2 an intruder that holds A's mesh id (public: it is
advertised) but not its secret.  :class:`~meshllm.testing.netns.Network` starts daemons
without ``--no-mdns``, so every node advertises and a joiner looks on the LAN.  Needs
root: CI runs it as root; elsewhere, as a normal user, it is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshllm.join_token import SECRET_BYTES, JoinToken
from meshllm.node import LAN_SEARCH_AFTER, LAN_SEARCH_TIMEOUT
from meshllm.testing.cluster import wait_for
from meshllm.testing.netns import QUIC_PORT, NetnsNode, Network, missing_requirements

SEED, MEMBER, INTRUDER = 0, 1, 2
STALE_PORT = QUIC_PORT + 1
"""Nothing listens there: the token's address is stale, as after the seed moved."""
JOIN = 40.0
"""Generous: the product waits LAN_SEARCH_AFTER (5 s), browses LAN_SEARCH_TIMEOUT (3 s),
then dials; seconds on a busy CI box, not tens."""
DISCOVER_TIMEOUT = 3.0
PROCESS_TIMEOUT = 30.0
POLL = 0.25
LOG_TAIL = 4000
FOUND_ON_LAN = "found mesh {mesh_id} on the LAN at"
"""What :meth:`meshllm.node.Node._find_mesh_on_lan` logs once mDNS found the mesh."""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """Three hosts on one bridge, the seed A running on host 0 (mDNS on, ``-v`` so that
    its log shows why it closes a hello)."""
    if os.geteuid() != 0 and not os.environ.get("CI"):  # in CI a skip would hide a failure
        pytest.skip(f"{missing_requirements()}: run as root")
    with Network(3, tmp_path_factory.mktemp("netns")) as network:
        network.add_node(SEED, "-v")
        yield network


@pytest.fixture(scope="module")
def seed(net: Network) -> NetnsNode:
    return net.nodes[0]


def _logs(*nodes: NetnsNode) -> str:
    return "".join(
        f"\n--- {n.state_dir.name} ({n.host.addr}, node {n.node_id or '?'}) log tail ---\n"
        f"{n.log()[-LOG_TAIL:]}"
        for n in nodes
    )


@contextlib.contextmanager
def logs_on_failure(*nodes: NetnsNode) -> Iterator[None]:
    """A failed assertion or wait says so with the tails of these nodes' logs."""
    try:
        yield
    except (AssertionError, TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}{_logs(*nodes)}") from None


def _token(seed: NetnsNode, **changes: object) -> str:
    """A's token with ``changes``, its addresses stale: nothing listens there."""
    stale = [f"{seed.host.addr}:{STALE_PORT}"]
    token = JoinToken.decode(seed.token)
    return dataclasses.replace(token, addrs=stale, **changes).encode()  # type: ignore[arg-type]


def _peers(node: NetnsNode) -> set[str]:
    if not node.alive():
        assert node.proc is not None
        raise RuntimeError(f"{node.state_dir.name} exited with {node.proc.returncode}")
    return node.peer_ids()


def test_stale_token_finds_mesh_on_lan_and_joins(net: Network, seed: NetnsNode) -> None:
    token = _token(seed)
    assert JoinToken.decode(token).addrs == [f"{seed.host.addr}:{STALE_PORT}"]
    member = net.add_node(MEMBER, join=token)
    with logs_on_failure(seed, member):
        wait_for(lambda: _peers(member) == {seed.node_id} and member.node_id in _peers(seed),
                 JOIN, interval=POLL, what="B and A to list each other")  # fmt: skip
        mesh_id = JoinToken.decode(seed.token).mesh_id
        found = FOUND_ON_LAN.format(mesh_id=mesh_id)
        line = next((ln for ln in member.log().splitlines() if found in ln), None)
        assert line is not None, f"B's log does not say {found!r}"
        assert f"{seed.host.addr}:{QUIC_PORT}" in line, line
        assert f"{member.host.addr}:" not in line, "B dials its own advertisement"
        assert "dial to itself" not in member.log()


def test_discover_lists_mesh_and_node(net: Network, seed: NetnsNode) -> None:
    """``meshllm discover`` from host B shows A's mesh with every node advertising it
    (the nodes running now, all of A's mesh: A, and B if it runs) and their QUIC
    addresses, A's among them."""
    mesh_id = JoinToken.decode(seed.token).mesh_id
    argv = ["ip", "netns", "exec", net.hosts[MEMBER].netns, sys.executable, "-m", "meshllm",
            "discover", "--timeout", f"{DISCOVER_TIMEOUT:g}"]  # fmt: skip
    with logs_on_failure(*net.nodes):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
        assert proc.returncode == 0, f"discover exited {proc.returncode}: {proc.stderr}"
        rows = [line.split(None, 2) for line in proc.stdout.splitlines()]
        assert rows and rows[0] == ["MESH", "NODES", "ADDRESSES"], proc.stdout
        mine = [row for row in rows[1:] if row[0] == mesh_id]
        assert len(mine) == 1, f"mesh {mesh_id} not listed once:\n{proc.stdout}"
        # Nodes sorted by id, each with its one address (format_meshes, group_by_mesh).
        live = [n.quic_addr for n in sorted(net.nodes, key=lambda n: n.node_id) if n.alive()]
        assert f"{seed.host.addr}:{QUIC_PORT}" in live
        assert mine[0][1:] == [str(len(live)), ", ".join(live)], proc.stdout


def test_wrong_secret_found_on_lan_but_refused(net: Network, seed: NetnsNode) -> None:
    """The intruder holds A's mesh id and owner key but another secret: it finds A over
    mDNS and dials it, and the hello fails on the proof of the secret."""
    refused_before = seed.status()["membership"]["refused"]
    peers_before = _peers(seed)
    token = _token(seed, secret=secrets.token_bytes(SECRET_BYTES))
    intruder = net.add_node(INTRUDER, join=token)
    mesh_id = JoinToken.decode(seed.token).mesh_id
    a_addr = f"{seed.host.addr}:{QUIC_PORT}"
    try:
        with logs_on_failure(seed, intruder):
            # B logs the find, then the refusal; A logs why it closed the hello.
            wait_for(lambda: FOUND_ON_LAN.format(mesh_id=mesh_id) in intruder.log(),
                     LAN_SEARCH_AFTER + LAN_SEARCH_TIMEOUT + JOIN, interval=POLL,
                     what="the intruder to find A's mesh on the LAN")  # fmt: skip
            wait_for(lambda: f"join refused by {a_addr}" in intruder.log(), JOIN,
                     interval=POLL, what="the intruder's hello to A to be refused")  # fmt: skip
            bad_proof = "not a member of this mesh (wrong secret?)"
            wait_for(lambda: bad_proof in seed.log(), JOIN, interval=POLL,
                     what=f"A to log {bad_proof!r}")  # fmt: skip
            assert _peers(intruder) == set(), "the intruder lists peers"
            assert intruder.node_id not in _peers(seed), "A lists the intruder"
            assert _peers(seed) == peers_before
            # A counts the refused hello by its kind, as status pages show it.
            refused = seed.status()["membership"]["refused"]
            before = refused_before.get("hello: bad proof", 0)
            assert refused.get("hello: bad proof", 0) > before, refused
            assert "dial to itself" not in intruder.log()
    finally:
        intruder.terminate(timeout=10)
