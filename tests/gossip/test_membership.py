"""The membership core, several wired together in memory on a fake clock (tests/gossip/memnet)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshllm.gossip import announcement as signing
from meshllm.gossip.announcement import PeerAnnouncement
from meshllm.gossip.health import HealthSettings
from meshllm.gossip.membership import MAX_CLOCK_AHEAD_MS, MembershipSettings
from meshllm.gossip.state import PeerRemoved, SelfRefuted
from meshllm.identity import Identity
from meshllm.wire import FrameType, make_frame
from tests.gossip.memnet import MESH, Host, MemNet

INTERVAL, TIMEOUT = 2.0, 1.0
SETTINGS = MembershipSettings(
    health=HealthSettings(probe_interval=INTERVAL, probe_timeout=TIMEOUT),
    gossip_interval=1.0,
    reconnect_interval=3.0,
)
# Dead within: one interval until the probe, its timeout, then the suspicion (at most
# its max: 3 x the min, which is the timeout for small meshes); plus slack for steps.
DETECTION = INTERVAL + TIMEOUT + 3 * TIMEOUT + 1.0


def mesh(n: int, settings: MembershipSettings = SETTINGS) -> tuple[MemNet, list[Host]]:
    """``n`` hosts, each joined through the first, converged."""
    net = MemNet(settings)
    first = net.add("h0")
    hosts = [first] + [net.add(f"h{i}", seeds=[first]) for i in range(1, n)]
    net.run_until(lambda: net.converged() and len(net.links) == n * (n - 1) // 2, timeout=10)
    return net, hosts


def removals(host: Host, node_id: str) -> list[PeerRemoved]:
    return [e for e in host.events if isinstance(e, PeerRemoved) and e.peer.node_id == node_id]


# --- spreading -------------------------------------------------------------------------------


def test_push_pull_on_link_up() -> None:
    net = MemNet(SETTINGS)
    a, b = net.add("a"), net.add("b")
    assert a.peer_ids() == set()
    net.link(a, b)
    net.transfer()
    assert a.peer_ids() == {b.node_id} and b.peer_ids() == {a.node_id}


def test_news_spreads_transitively_and_learnt_peers_are_dialled() -> None:
    net = MemNet(SETTINGS)
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.link(a, b)
    net.link(b, c)  # a and c never dialled each other
    net.run(0.5)
    assert c.node_id in a.peer_ids() and a.node_id in c.peer_ids()
    assert frozenset({a.node_id, c.node_id}) in net.links  # learnt, then dialled


def test_ten_nodes_joining_through_one_seed_converge() -> None:
    _net, hosts = mesh(10)
    assert all(len(h.peer_ids()) == 9 for h in hosts)


def test_a_change_reaches_everyone_at_once() -> None:
    net, (a, b, c, d) = mesh(4)
    a.core.publish(net.now, serving={"m": "ready"})
    net.transfer()
    assert all(h.core.state.peers[a.node_id].serving == {"m": "ready"} for h in (b, c, d))


def test_anti_entropy_repairs_a_lost_update() -> None:
    net, (a, b) = mesh(2)
    net.drop = lambda src, dst, frame: frame["t"] == FrameType.ANNOUNCE
    a.core.publish(net.now, load=3)
    net.transfer()
    assert b.core.state.peers[a.node_id].load == 0  # lost
    net.drop = lambda src, dst, frame: False
    net.run(SETTINGS.gossip_interval * 2 + 0.1)
    assert b.core.state.peers[a.node_id].load == 3


def test_load_changes_are_coalesced() -> None:
    net, (a, b) = mesh(2)
    sent = len(b.received)
    for load in range(1, 50):
        a.core.set_load(load)
    net.run(SETTINGS.load_publish_interval * 2)
    announces = [f for _, f in b.received[sent:] if f["t"] == FrameType.ANNOUNCE]
    assert b.core.state.peers[a.node_id].load == 49
    assert len(announces) <= 3


# --- failure detection -----------------------------------------------------------------------


def test_killed_node_is_suspected_then_removed_everywhere() -> None:
    net, hosts = mesh(5)
    victim, survivors = hosts[2], [h for h in hosts if h is not hosts[2]]
    net.kill(victim)
    took = net.run_until(
        lambda: all(victim.node_id not in h.peer_ids() for h in survivors), timeout=DETECTION
    )
    assert took <= DETECTION
    assert all(removals(h, victim.node_id)[0].reason == "dead" for h in survivors)
    assert net.converged(survivors)


def test_a_missed_probe_is_not_a_death_when_others_still_reach_the_peer() -> None:
    net, (a, b, c, x) = mesh(4)
    # a's frames to x are lost (and x's to a): a's direct probes fail, b and c reach x.
    net.drop = lambda src, dst, frame: {src, dst} == {a.node_id, x.node_id}
    net.run(INTERVAL * 8)
    assert x.node_id in a.peer_ids()
    assert all(x.node_id in h.peer_ids() for h in (b, c))
    assert not any(removals(h, x.node_id) for h in (a, b, c))


def test_five_percent_loss_causes_no_false_death() -> None:
    net, hosts = mesh(4)
    rng = __import__("random").Random(5)
    net.drop = lambda src, dst, frame: rng.random() < 0.05
    net.run(40)
    assert net.converged(hosts)
    assert not any(isinstance(e, PeerRemoved) for h in hosts for e in h.events)


def test_a_second_hand_dead_is_only_a_suspicion_to_check() -> None:
    net, (a, liar, x) = mesh(3)
    for kind in (FrameType.DEAD, FrameType.SUSPECT):
        incarnation = a.core.state.peers[x.node_id].incarnation
        frame = make_frame(kind, node_id=x.node_id, incarnation=incarnation)
        a.core.receive(liar.node_id, frame, net.now)
        net.transfer()
        net.run(DETECTION)
        assert x.node_id in a.peer_ids(), f"{kind} about a live node removed it"
    assert not removals(a, x.node_id)


def test_a_suspected_node_refutes_with_a_higher_incarnation() -> None:
    net, (a, b, x) = mesh(3)
    before = x.core.state.me.incarnation
    frame = make_frame(FrameType.SUSPECT, node_id=x.node_id, incarnation=before)
    x.core.receive(a.node_id, frame, net.now)
    net.transfer()
    assert x.core.state.me.incarnation > before
    assert any(isinstance(e, SelfRefuted) for e in x.events)
    assert all(h.core.state.peers[x.node_id].incarnation > before for h in (a, b))


def test_a_broken_data_path_starts_the_suspicion_at_once() -> None:
    net, (a, _b, x) = mesh(3)
    net.kill(x)
    a.core.suspect(x.node_id, "tunnel: no acknowledgement", net.now)
    net.transfer()
    assert a.core.health.is_suspect(x.node_id)
    took = net.run_until(lambda: x.node_id not in a.peer_ids(), timeout=DETECTION)
    assert took < INTERVAL + TIMEOUT  # no wait for the next probe round


def test_a_link_that_closes_and_comes_back_at_once_is_not_suspected() -> None:
    net, (a, b) = mesh(2)
    a.core.link_down(b.node_id, net.now)  # a duplicate connection replaced...
    a.core.link_up(b.node_id, net.now)  # ... by the new one, in the same turn
    net.run(0.2)
    assert not a.core.health.is_suspect(b.node_id)
    assert not any(f["t"] == FrameType.SUSPECT for _, f in b.received)


def test_slow_node_stretches_its_own_timings() -> None:
    net, (a, _b, _c) = mesh(3)
    # a hears nothing at all: no acks, no nacks. It should blame itself, not only b and c.
    net.drop = lambda src, dst, frame: dst == a.node_id
    net.run(INTERVAL * 4)
    assert a.core.health.awareness > 0


# --- leaving and tombstones ------------------------------------------------------------------


def test_signed_leave_is_seen_by_all_at_once() -> None:
    net, (a, b, c) = mesh(3)
    a.core.leave(net.now)
    net.transfer()
    assert all(a.node_id not in h.peer_ids() for h in (b, c))
    assert all(removals(h, a.node_id)[0].reason == "left" for h in (b, c))


def test_leave_for_someone_else_is_refused() -> None:
    net, (a, liar, victim) = mesh(3)
    forged = replace(a.core.state.peers[victim.node_id], leaving=True, seq=10_000)
    envelope = signing.sign(replace(forged, public_key=liar.identity.public_key), liar.identity)
    wire = envelope.to_wire()
    a.core.receive(liar.node_id, make_frame(FrameType.LEAVE, a=wire), net.now)
    net.transfer()
    assert victim.node_id in a.peer_ids()
    assert a.core.counters["bad_announcements"] == 1


def test_tombstone_blocks_stale_news_but_a_restart_is_welcome() -> None:
    net, (a, b) = mesh(2)
    stale = b.core.signed_me
    b.core.leave(net.now)
    net.transfer()
    assert b.node_id not in a.peer_ids()
    other = net.add("other")
    net.link(a, other)
    a.core.receive(other.node_id, make_frame(FrameType.ANNOUNCE, anns=[stale.to_wire()]), net.now)
    assert b.node_id not in a.peer_ids()  # old news cannot bring it back
    restarted = replace(b.core.state.me, incarnation=b.core.state.me.incarnation + 1, leaving=False)
    fresh = signing.sign(restarted, b.identity)
    a.core.receive(other.node_id, make_frame(FrameType.ANNOUNCE, anns=[fresh.to_wire()]), net.now)
    assert b.node_id in a.peer_ids()


# --- healing ---------------------------------------------------------------------------------


def test_a_cut_drops_the_other_half_and_the_healed_mesh_reconverges() -> None:
    net, hosts = mesh(4)
    left, right = hosts[:2], hosts[2:]
    net.cut(left, right)
    net.run_until(lambda: net.converged(left) and net.converged(right), timeout=DETECTION * 2)
    net.heal()
    bound = 2 * (INTERVAL + TIMEOUT) + SETTINGS.reconnect_interval * 1.2 + 1
    took = net.run_until(net.converged, timeout=bound)
    assert took <= bound


def test_a_seed_that_was_down_at_start_is_redialled() -> None:
    net = MemNet(SETTINGS)
    seed = net.add("seed")
    net.kill(seed)
    joiner = net.add("joiner", seeds=[seed])
    net.run(3)
    seed.alive = True
    net.run_until(lambda: net.converged([seed, joiner]), timeout=SETTINGS.reconnect_interval * 2)


def test_a_seed_is_only_accepted_as_the_node_the_token_names() -> None:
    net = MemNet(SETTINGS)
    seed, impostor = net.add("seed"), net.add("impostor")
    net._by_addr[seed.addr] = impostor.node_id  # the token's address now answers as another
    joiner = net.add("joiner", seeds=[seed])
    net.run(3)
    assert frozenset({joiner.node_id, impostor.node_id}) not in net.links


# --- hostile peers ---------------------------------------------------------------------------


def test_forged_announcement_for_another_node_is_refused_and_counted() -> None:
    _net, (a, liar, victim) = mesh(3)
    forged = replace(a.core.state.peers[victim.node_id], seq=2**62, serving={"m": "ready"})
    envelope = signing.sign(replace(forged, public_key=liar.identity.public_key), liar.identity)
    a.core.receive(liar.node_id, make_frame(FrameType.ANNOUNCE, anns=[envelope.to_wire()]), 0)
    tampered = {"p": envelope.payload, "s": victim.core.signed_me.signature}
    a.core.receive(liar.node_id, make_frame(FrameType.ANNOUNCE, anns=[tampered]), 0)
    assert a.core.state.peers[victim.node_id].serving == {}
    assert a.core.counters["bad_announcements"] == 2


def test_dead_with_an_incarnation_of_two_to_the_64_minus_one_harms_nobody() -> None:
    net, (a, liar) = mesh(2)
    frame = make_frame(FrameType.DEAD, node_id=a.node_id, incarnation=2**64 - 1)
    a.core.receive(liar.node_id, frame, net.now)
    net.run(DETECTION)
    assert a.core.state.me.incarnation < 2**62
    assert liar.node_id in a.peer_ids() and a.node_id in liar.peer_ids()


def test_announcement_far_ahead_of_the_clock_is_refused() -> None:
    net, (a, b) = mesh(2)
    stranger = Identity.generate()
    wall_ms = int((net.now + 1_800_000_000.0) * 1000)
    ann = PeerAnnouncement(
        stranger.node_id, MESH, stranger.public_key, incarnation=wall_ms + MAX_CLOCK_AHEAD_MS * 2
    )
    wire = signing.sign(ann, stranger).to_wire()
    a.core.receive(b.node_id, make_frame(FrameType.ANNOUNCE, anns=[wire]), net.now)
    assert stranger.node_id not in a.peer_ids()
    assert a.core.counters["incarnation_ahead"] == 1


def test_pull_repeating_one_id_is_answered_once() -> None:
    net, (a, b) = mesh(2)
    before = len(b.received)
    a.core.receive(b.node_id, make_frame(FrameType.PULL, ids=[a.node_id] * 60_000), net.now)
    net.transfer()
    answers = [f for _, f in b.received[before:] if f["t"] == FrameType.ANNOUNCE]
    assert sum(len(f["anns"]) for f in answers) == 1


def test_peer_table_is_capped_and_dials_are_rate_limited() -> None:
    settings = replace(SETTINGS, max_peers=20, dial_rate=5.0)
    net, (a, b) = mesh(2, settings)
    fakes = []
    for i in range(300):
        key = Identity.generate()
        ann = PeerAnnouncement(
            key.node_id, MESH, key.public_key, addrs=[f"192.0.2.{i % 250}:9"], incarnation=1
        )
        fakes.append(signing.sign(ann, key).to_wire())
    for i in range(0, 300, 100):
        frame = make_frame(FrameType.ANNOUNCE, anns=fakes[i : i + 100])
        a.core.receive(b.node_id, frame, net.now)
    assert len(a.peer_ids()) == 20
    assert a.core.counters["table_full"] == 281
    dials = []
    for _ in range(20):  # one second
        net.now += 0.05
        a.core.tick(net.now)
        dials += [x for x in a.core.take_actions() if type(x).__name__ == "Dial"]
    assert len(dials) <= 2 * 5 + 5 + 1  # the burst, then the rate


@pytest.mark.parametrize(
    "field",
    [{"load": -1}, {"addrs": ["x" * 100]}, {"serving": {"../../etc": "ready"}},
     {"requested_models": ["m"] * 200}, {"resources": {"blob": "x" * 20_000}}],
)  # fmt: skip
def test_announcements_out_of_bounds_are_refused(field: dict[str, object]) -> None:
    key = Identity.generate()
    ann = PeerAnnouncement(key.node_id, MESH, key.public_key, **field)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        signing.sign(ann, key)
    payload = __import__("msgpack").packb(ann.to_wire(), use_bin_type=True)
    net, (a, b) = mesh(2)
    wire = {"p": payload, "s": key.sign(payload)}
    a.core.receive(b.node_id, make_frame(FrameType.ANNOUNCE, anns=[wire]), net.now)
    assert key.node_id not in a.peer_ids()
    assert a.core.counters["bad_announcements"] == 1


def test_digest_bigger_than_the_table_is_refused() -> None:
    net, (a, b) = mesh(2)
    digest = {f"n{i}": [1, 1] for i in range(12_000)}
    a.core.receive(b.node_id, make_frame(FrameType.DIGEST, d=digest), net.now)
    net.transfer()
    assert a.core.counters["offences"] == 1
    assert not any(f["t"] == FrameType.PULL for _, f in b.received)


def test_a_flood_of_frames_is_rate_limited() -> None:
    net, (a, b) = mesh(2)
    for i in range(10_000):
        a.core.receive(b.node_id, make_frame(FrameType.PING, id=i), net.now)
    assert a.core.counters["rate_limited"] >= 10_000 - 2 * SETTINGS.frame_rate


def test_frames_for_other_parts_share_the_links_budget() -> None:
    # drop, pool and resources frames go to the node's handlers, never past the budget.
    net, (a, b) = mesh(2)
    admitted = sum(a.core.admit(b.node_id, net.now) for _ in range(10_000))
    assert admitted <= 2 * SETTINGS.frame_rate
    assert a.core.counters["rate_limited"] == 10_000 - admitted
    assert not a.core.admit("stranger", net.now)  # no link: nothing admitted


def test_too_many_bad_frames_close_the_link() -> None:
    net, (a, b) = mesh(2)
    for _ in range(SETTINGS.max_offences + 1):
        a.core.receive(b.node_id, make_frame(FrameType.PULL, ids="nope"), net.now)
    net.transfer()
    assert frozenset({a.node_id, b.node_id}) not in net.links


def test_a_bug_in_a_handler_is_counted_and_the_node_goes_on(monkeypatch) -> None:
    net, (a, b, _c) = mesh(3)

    def broken(self, sender, frame, now):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    monkeypatch.setitem(type(a.core)._handlers, FrameType.PING, broken)
    a.core.receive(b.node_id, make_frame(FrameType.PING, id=1), net.now)
    monkeypatch.undo()
    assert a.core.counters["handler_errors"] == 1
    a.core.publish(net.now, load=7)
    net.transfer()
    assert b.core.state.peers[a.node_id].load == 7


def test_at_default_timings_a_dead_peer_is_gone_within_about_25_s() -> None:
    """The seed's promise: one probe interval, its timeout and one indirect-probe timeout."""
    net, hosts = mesh(5, MembershipSettings())
    assert net.settings.health.probe_interval == 15 and net.settings.health.probe_timeout == 5
    victim, survivors = hosts[3], [h for h in hosts if h is not hosts[3]]
    net.kill(victim)
    took = net.run_until(
        lambda: all(victim.node_id not in h.peer_ids() for h in survivors), timeout=60, step=0.1
    )
    assert took <= 25 + 1


def test_unsafe_names_in_this_nodes_own_announcement_are_left_out_not_fatal() -> None:
    net = MemNet(SETTINGS)
    host = net.add("h", requested_models=["/models/x.gguf", "good-model"])
    assert host.core.state.me.requested_models == ["good-model"]
    assert signing.verify(host.core.signed_me.to_wire()).ann.requested_models == ["good-model"]


def test_an_earlier_run_that_outranks_this_one_is_outranked() -> None:
    net, (a, b) = mesh(2)
    # An announcement of a's from a run whose clock was 5 minutes ahead, still in the mesh.
    ahead = replace(a.core.state.me, incarnation=a.core.state.me.incarnation + 300_000)
    stale = signing.sign(ahead, a.identity).to_wire()
    a.core.receive(b.node_id, make_frame(FrameType.ANNOUNCE, anns=[stale]), net.now)
    net.transfer()
    assert a.core.state.me.incarnation > ahead.incarnation
    assert b.core.state.peers[a.node_id].incarnation == a.core.state.me.incarnation
    # Forged "earlier runs" are refused: only a's key can sign one.
    higher = replace(ahead, incarnation=a.core.state.me.incarnation + 1000)
    forged = {"p": signing.sign(higher, a.identity).payload, "s": b.identity.sign(b"x")}
    a.core.receive(b.node_id, make_frame(FrameType.ANNOUNCE, anns=[forged]), net.now + 1)
    assert a.core.counters["bad_announcements"] == 1
