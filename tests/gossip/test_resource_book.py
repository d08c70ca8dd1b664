"""Resource reports: their signed wire form, and the book that ages them on a fake clock."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from meshllm.errors import FrameError
from meshllm.gossip import announcement as signing
from meshllm.gossip.announcement import MAX_RESOURCES_BYTES, PeerAnnouncement
from meshllm.gossip.resource_book import (
    FORGET_AFTER_S,
    MAX_NODES,
    REPORT_CONTEXT,
    REPORT_INTERVAL_S,
    STALE_AFTER_S,
    ResourceBook,
    ResourceState,
    ResourceView,
    decode_report,
    encode_report,
)
from meshllm.identity import Identity

RES: dict[str, Any] = {
    "cpu_count": 16, "cpu_percent": 12.5, "load_avg": [1.0, 0.5, 0.25],
    "ram_total": 64 << 30, "ram_used": 8 << 30,
    "gpus": [{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1", "util_percent": 90,
              "vram_total": 141 << 30, "vram_used": 70 << 30, "temperature_c": None,
              "power_w": 512.5, "power_limit_w": 700.0}],
}  # fmt: skip


@pytest.fixture(scope="module")
def key() -> Identity:
    return Identity.generate()


def _resign(key: Identity, data: Any) -> dict[str, bytes]:
    """A report of ``data`` signed properly by ``key``: only the content is wrong."""
    payload = msgpack.packb(data, use_bin_type=True)
    return {"p": payload, "s": key.sign(REPORT_CONTEXT + payload)}


# --- the wire form -------------------------------------------------------------------------


def test_report_round_trip(key: Identity) -> None:
    wire = encode_report(key.node_id, RES, 7, key)

    assert set(wire) == {"p", "s"}
    assert msgpack.unpackb(wire["p"]) == {"node_id": key.node_id, "seq": 7, "resources": RES}
    assert decode_report(wire, key.public_key) == (key.node_id, 7, RES)
    # It survives the frame codec's msgpack as the gossip pump would carry it.
    carried = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)
    assert decode_report(carried, key.public_key) == (key.node_id, 7, RES)


def test_report_with_empty_resources(key: Identity) -> None:
    assert decode_report(encode_report(key.node_id, {}, 0, key), key.public_key)[2] == {}


def test_forged_signature_is_refused(key: Identity) -> None:
    wire = encode_report(key.node_id, RES, 1, key)
    forged = dict(wire, s=bytes(64))
    tampered = dict(wire, p=wire["p"].replace(b"NVIDIA H200", b"NVIDIA B200"))

    for bad in (forged, tampered):
        with pytest.raises(FrameError, match="signature"):
            decode_report(bad, key.public_key)


def test_report_checked_with_another_key_is_refused(key: Identity) -> None:
    other = Identity.generate()
    wire = encode_report(key.node_id, RES, 1, key)

    with pytest.raises(FrameError):
        decode_report(wire, other.public_key)
    # Even signed by its own key, a report that names another node is refused.
    lying = _resign(other, {"node_id": key.node_id, "seq": 1, "resources": RES})
    with pytest.raises(FrameError, match="not its key's"):
        decode_report(lying, other.public_key)


def test_announcement_signature_is_no_report_signature(key: Identity) -> None:
    ann = PeerAnnouncement(key.node_id, "m", key.public_key, resources=RES, seq=3)
    wire = signing.sign(ann, key).to_wire()

    with pytest.raises(FrameError, match="signature"):
        decode_report(wire, key.public_key)
    report = encode_report(key.node_id, RES, 3, key)
    with pytest.raises(FrameError):
        signing.verify(report)


@pytest.mark.parametrize(
    "wire",
    [None, [], b"junk", {}, {"p": b"x"}, {"p": "text", "s": b"s" * 64},
     {"p": b"x", "s": b"short"}, {"p": b"x" * (MAX_RESOURCES_BYTES + 1024), "s": b"s" * 64}],
)  # fmt: skip
def test_garbage_is_refused(key: Identity, wire: Any) -> None:
    with pytest.raises(FrameError):
        decode_report(wire, key.public_key)


@pytest.mark.parametrize("public_key", [b"", b"k" * 31, "not bytes", None])
def test_bad_public_key_is_refused(key: Identity, public_key: Any) -> None:
    with pytest.raises(FrameError):
        decode_report(encode_report(key.node_id, RES, 1, key), public_key)


@pytest.mark.parametrize(
    "data",
    [
        [1, 2, 3],
        {"resources": {}},  # no seq
        {"node_id": 5, "seq": 1, "resources": {}},
        {"node_id": "", "seq": 1, "resources": {}},
        {"node_id": "n", "seq": 1, "resources": {}},  # not the key's node id
        {"seq": -1, "resources": {}},
        {"seq": True, "resources": {}},
        {"seq": 1.5, "resources": {}},
        {"seq": 1 << 63, "resources": {}},
        {"seq": 1, "resources": [1]},
        {"seq": 1, "resources": {}, "extra": 1},
        {"seq": 1, "resources": {"blob": "x" * MAX_RESOURCES_BYTES}},
    ],
)
def test_well_signed_bad_content_is_refused(key: Identity, data: Any) -> None:
    if isinstance(data, dict) and "node_id" not in data:
        data = {"node_id": key.node_id, **data}

    with pytest.raises(FrameError):
        decode_report(_resign(key, data), key.public_key)


def test_undecodable_but_signed_payload_is_refused(key: Identity) -> None:
    payload = b"\xc1\xff\x00"  # 0xc1 is never used in msgpack
    with pytest.raises(FrameError, match="undecodable"):
        decode_report({"p": payload, "s": key.sign(REPORT_CONTEXT + payload)}, key.public_key)


def test_encode_refuses_what_peers_would_refuse(key: Identity) -> None:
    with pytest.raises(ValueError, match="exceed"):
        encode_report(key.node_id, {"blob": "x" * MAX_RESOURCES_BYTES}, 1, key)
    with pytest.raises(ValueError, match="own node"):
        encode_report(Identity.generate().node_id, RES, 1, key)
    with pytest.raises(ValueError, match="seq"):
        encode_report(key.node_id, RES, -1, key)
    with pytest.raises(ValueError):
        encode_report(key.node_id, {"when": object()}, 1, key)


# --- the book ------------------------------------------------------------------------------


def test_constants_order() -> None:
    assert REPORT_INTERVAL_S < STALE_AFTER_S < FORGET_AFTER_S
    assert (REPORT_INTERVAL_S, STALE_AFTER_S, FORGET_AFTER_S) == (5.0, 15.0, 60.0)


def test_unknown_node_view() -> None:
    assert ResourceBook().view("nobody", 0.0) == ResourceView(ResourceState.UNKNOWN, None, None)


def test_live_then_stale_then_unknown_on_a_fake_clock() -> None:
    book = ResourceBook()
    now = 1000.0
    assert book.record("a", 1, RES, now)

    view = book.view("a", now + 3)
    assert (view.state, view.resources, view.age_s) == ("live", RES, 3.0)
    assert book.view("a", now + STALE_AFTER_S).state == ResourceState.LIVE

    stale = book.view("a", now + 20)
    assert (stale.state, stale.resources, stale.age_s) == ("stale", RES, 20.0)

    assert book.view("a", now + FORGET_AFTER_S + 1) == ResourceView("unknown", None, None)


def test_a_fresh_report_makes_stale_figures_live_again() -> None:
    book = ResourceBook()
    book.record("a", 1, RES, 0.0)
    assert book.view("a", 30.0).state == "stale"

    newer = RES | {"cpu_percent": 99.0}
    assert book.record("a", 2, newer, 30.0)
    assert book.view("a", 31.0) == ResourceView(ResourceState.LIVE, newer, 1.0)


def test_seq_replay_or_out_of_order_is_refused() -> None:
    book = ResourceBook()
    assert book.record("a", 5, RES, 0.0)

    assert not book.record("a", 5, {"replayed": True}, 1.0)
    assert not book.record("a", 4, {"older": True}, 2.0)
    view = book.view("a", 2.0)
    assert (view.resources, view.age_s) == (RES, 2.0)  # neither the figures nor the age moved
    assert book.record("a", 6, {}, 3.0)


def test_forget_drops_a_dead_node() -> None:
    book = ResourceBook()
    book.record("a", 9, RES, 0.0)
    book.record("b", 1, RES, 0.0)

    book.forget("a")
    book.forget("never-seen")  # no error

    assert book.view("a", 1.0).state == "unknown"
    assert book.view("b", 1.0).state == "live"
    assert book.record("a", 1, RES, 2.0)  # a restarted node starts a new seq


def test_prune_drops_only_the_long_silent() -> None:
    book = ResourceBook(stale_after=1.0, forget_after=10.0)
    book.record("old", 1, RES, 0.0)
    book.record("new", 1, RES, 5.0)

    assert book.prune(10.0) == []  # exactly forget_after: still kept
    assert book.prune(12.0) == ["old"]
    assert len(book) == 1
    assert book.view("new", 12.0).state == "stale"


def test_clock_going_back_never_gives_a_negative_age() -> None:
    book = ResourceBook()
    book.record("a", 1, RES, 100.0)
    assert book.view("a", 99.0).age_s == 0.0


def test_book_is_bounded_evicting_the_longest_silent() -> None:
    book = ResourceBook(max_nodes=3)
    book.record("a", 1, RES, 0.0)
    book.record("b", 1, RES, 1.0)
    book.record("c", 1, RES, 2.0)
    book.record("a", 2, RES, 3.0)  # a reports again: b is now the longest silent

    assert book.record("d", 1, RES, 4.0)

    assert len(book) == 3
    assert book.view("b", 4.0).state == "unknown"
    assert all(book.view(n, 4.0).state == "live" for n in "acd")


def test_default_bound() -> None:
    book = ResourceBook()
    for i in range(MAX_NODES + 10):
        book.record(f"n{i}", 1, {}, float(i))

    assert len(book) == MAX_NODES == 1024
    assert book.view("n0", float(MAX_NODES)).state == "unknown"
    assert book.view(f"n{MAX_NODES + 9}", float(MAX_NODES + 9)).state == "live"


def test_bad_ages_refused() -> None:
    with pytest.raises(ValueError):
        ResourceBook(stale_after=0.0)
    with pytest.raises(ValueError):
        ResourceBook(stale_after=20.0, forget_after=10.0)


def test_report_to_book_end_to_end(key: Identity) -> None:
    book = ResourceBook()
    node_id, seq, res = decode_report(encode_report(key.node_id, RES, 1, key), key.public_key)
    assert book.record(node_id, seq, res, 0.0)
    replay = decode_report(encode_report(key.node_id, RES, 1, key), key.public_key)
    assert not book.record(*replay, now=1.0)
    assert book.view(key.node_id, 1.0).resources == RES
