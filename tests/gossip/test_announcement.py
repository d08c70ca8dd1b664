"""PeerAnnouncement: its wire form, and the fields a peer may not get wrong."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshllm.errors import FrameError
from meshllm.gossip.announcement import PeerAnnouncement


def test_announcement_round_trip_and_unknown_fields_ignored() -> None:
    a = PeerAnnouncement("n", "m", addrs=["1.2.3.4:9"], serving={"x": "ready"}, seq=3)
    wire = a.to_wire() | {"future_field": [1, 2]}
    assert PeerAnnouncement.from_wire(wire) == a


@pytest.mark.parametrize(
    "bad",
    [None, [], {"node_id": 5, "mesh_id": "m"}, {"node_id": "n", "mesh_id": "m", "seq": -1},
     {"node_id": "n", "mesh_id": "m", "role": "king"}, {"node_id": "n", "mesh_id": "m",
     "serving": {"x": 1}}, {"node_id": "n"}],
)  # fmt: skip
def test_bad_announcements_raise_frame_error(bad: object) -> None:
    with pytest.raises(FrameError):
        PeerAnnouncement.from_wire(bad)


def test_announcement_carries_its_cloud_providers() -> None:
    a = PeerAnnouncement("n", "m", providers={"anthropic": "refused", "openai": "up"})
    assert PeerAnnouncement.from_wire(a.to_wire()) == a


def test_announcement_carries_failures_and_digests() -> None:
    a = PeerAnnouncement(
        "n", "m", serving={"x": "failed"}, failures={"x": "SIGILL while loading"},
        model_sha256={"x": "ab" * 32}, memory_bytes=8 << 30, memory_kind="ram",
    )  # fmt: skip
    assert PeerAnnouncement.from_wire(a.to_wire()) == a


@pytest.mark.parametrize(
    "field",
    [
        {"failures": {"x": 1}},
        {"failures": {"x": "y" * 2001}},  # a cause is a few log lines, not a payload
        {"failures": {f"m{i}": "cause" for i in range(65)}},
        {"model_sha256": {"x": "not-hex"}},
        {"model_sha256": {"x": "AB" * 32}},  # lowercase hex only: one spelling per digest
        {"memory_bytes": -1},
        {"memory_kind": "swap"},
        {"providers": {"openai": "maybe"}},  # a state the mesh routes by: up or refused
        {"providers": {"Open AI": "up"}},
        {"providers": {f"p{i}": "up" for i in range(9)}},
        {"providers": ["openai"]},
        {"providers": {"openai": "up", "x" * 33: "up"}},
    ],
)
def test_bad_serving_fields_raise_frame_error(field: dict[str, object]) -> None:
    with pytest.raises(FrameError):
        PeerAnnouncement.from_wire({"node_id": "n", "mesh_id": "m", **field})


# --- signed announcements --------------------------------------------------------------------


def _signed_pair():  # type: ignore[no-untyped-def]
    from meshllm.identity import Identity

    key = Identity.generate()
    ann = PeerAnnouncement(key.node_id, "m", key.public_key, addrs=["10.0.0.1:9338"], seq=4)
    return key, ann


def test_signed_announcement_verifies_whoever_relays_it() -> None:
    from meshllm.gossip import announcement as signing

    key, ann = _signed_pair()
    wire = signing.sign(ann, key).to_wire()
    assert signing.verify(wire).ann == ann
    assert signing.peek(wire) == (ann.node_id, (0, 4))


def test_tampered_or_foreign_announcements_are_refused() -> None:
    import msgpack

    from meshllm.gossip import announcement as signing
    from meshllm.identity import Identity

    key, ann = _signed_pair()
    signed = signing.sign(ann, key)
    data = msgpack.unpackb(signed.payload)
    data["load"] = 0
    data["seq"] = 99
    tampered = {"p": msgpack.packb(data, use_bin_type=True), "s": signed.signature}
    with pytest.raises(FrameError, match="signature"):
        signing.verify(tampered)
    other = Identity.generate()  # a valid signature, by a key that is not the node id's
    impostor = replace(ann, public_key=other.public_key)
    payload = msgpack.packb(impostor.to_wire(), use_bin_type=True)
    with pytest.raises(FrameError, match="node id"):
        signing.verify({"p": payload, "s": other.sign(payload)})
    with pytest.raises(FrameError):
        signing.verify({"p": b"\xc1" * 10, "s": b"x"})
    with pytest.raises(FrameError, match="exceeds"):
        signing.verify({"p": b"\x00" * (signing.MAX_ANNOUNCEMENT_BYTES + 1), "s": b""})


def test_fit_leaves_out_unsafe_names_and_caps_maps() -> None:
    from meshllm.gossip import announcement as signing

    fitted, dropped = signing.fit(
        serving={"ok-model": "ready", "../../etc/passwd": "ready", "a\r\nSet-Cookie: x": "ready"},
        requested_models=[f"m{i}" for i in range(500)],
    )
    assert fitted["serving"] == {"ok-model": "ready"}
    assert len(dropped) == 2
    assert len(fitted["requested_models"]) == signing.MAX_MODELS


@pytest.mark.parametrize(
    "name", ["gemma-3-270m-q4_k_m", "qwen2.5:7b", "meta-llama/Llama-3.1-8B", "openai:gpt-4o"]
)
def test_real_model_names_are_safe(name: str) -> None:
    from meshllm.gossip import is_model_name

    assert is_model_name(name)


@pytest.mark.parametrize("name", ["", "..", "a/../b", "/etc", "a\nb", "x" * 129, "a//b"])
def test_unsafe_model_names_are_refused(name: str) -> None:
    from meshllm.gossip import is_model_name

    assert not is_model_name(name)


# --- pool, demand and pool_room ---------------------------------------------------------------

_NOW_MS = 1_750_000_000_000


def _pool_fields() -> dict[str, object]:
    return {
        "pool": {
            "hot-model": {"state": "hot", "since": _NOW_MS - 5000, "pinned": True},
            "cooling/model": {"state": "cooling", "since": 0, "until": _NOW_MS + 60_000},
            "qwen2.5:7b": {"state": "warming", "since": _NOW_MS, "eta": 12.5},
            "fetched": {"state": "fetching", "since": _NOW_MS, "eta": 3},  # an int is a float
            "bye": {"state": "unloading"},  # only state is required
            "broken": {"state": "failed", "since": _NOW_MS, "pinned": False},
        },
        "demand": {
            "hot-model": {"rpm": 12.3, "last": _NOW_MS - 250},
            "qwen2.5:7b": {"rpm": 0.0},
            "other": {"rpm": 4, "last": 0},
        },
        "pool_room": 6 << 30,
    }


def test_pool_fields_default_to_nothing() -> None:
    a = PeerAnnouncement("n", "m")
    assert (a.pool, a.demand, a.pool_room) == ({}, {}, None)
    assert PeerAnnouncement.from_wire(a.to_wire()) == a


def test_pool_fields_round_trip_through_the_wire() -> None:
    a = PeerAnnouncement("n", "m", serving={"hot-model": "ready"}, **_pool_fields())  # type: ignore[arg-type]
    assert PeerAnnouncement.from_wire(a.to_wire()) == a


@pytest.mark.parametrize("room", [None, 0, 1, 1 << 60])
def test_pool_fields_round_trip_signed(room: int | None) -> None:
    from meshllm.gossip import announcement as signing

    key, ann = _signed_pair()
    ann = ann.bump(**(_pool_fields() | {"pool_room": room}))
    wire = signing.sign(ann, key).to_wire()
    got = signing.verify(wire).ann
    assert got == ann
    assert (got.pool, got.demand, got.pool_room) == (ann.pool, ann.demand, room)


def test_pool_fields_at_their_bound_are_accepted() -> None:
    from meshllm.gossip import announcement as signing

    key, ann = _signed_pair()
    many = {f"m{i}": {"state": "hot"} for i in range(signing.MAX_MODELS)}
    rpm = {f"m{i}": {"rpm": 1.0} for i in range(signing.MAX_MODELS)}
    ann = ann.bump(pool=many, demand=rpm)
    assert signing.verify(signing.sign(ann, key).to_wire()).ann == ann


_BAD_POOL_ENTRIES = {
    "unknown state": {"state": "warm"},
    "cold is never announced": {"state": "cold"},
    "state upper case": {"state": "HOT"},
    "missing state": {"since": 1},
    "empty entry": {},
    "unknown key": {"state": "hot", "owner": "me"},
    "state not a str": {"state": 1},
    "state a list": {"state": ["hot"]},
    "since bool": {"state": "hot", "since": True},
    "since float": {"state": "hot", "since": 1.5},
    "since str": {"state": "hot", "since": "1"},
    "since negative": {"state": "hot", "since": -1},
    "since too big": {"state": "hot", "since": 1 << 62},
    "until negative": {"state": "cooling", "until": -5},
    "until bool": {"state": "cooling", "until": False},
    "eta str": {"state": "warming", "eta": "1.5"},
    "eta bool": {"state": "warming", "eta": True},
    "eta nan": {"state": "warming", "eta": float("nan")},
    "eta inf": {"state": "warming", "eta": float("inf")},
    "eta -inf": {"state": "warming", "eta": float("-inf")},
    "eta too big": {"state": "warming", "eta": 1e30},
    "pinned int": {"state": "hot", "pinned": 1},
    "pinned str": {"state": "hot", "pinned": "true"},
    "pinned none": {"state": "hot", "pinned": None},
}
_BAD_DEMAND_ENTRIES = {
    "missing rpm": {"last": 1},
    "empty entry": {},
    "unknown key": {"rpm": 1.0, "node": "x"},
    "rpm bool": {"rpm": True},
    "rpm str": {"rpm": "3"},
    "rpm none": {"rpm": None},
    "rpm nan": {"rpm": float("nan")},
    "rpm inf": {"rpm": float("inf")},
    "last negative": {"rpm": 1.0, "last": -1},
    "last float": {"rpm": 1.0, "last": 1.0},
    "last bool": {"rpm": 1.0, "last": True},
    "last str": {"rpm": 1.0, "last": "now"},
}
_BAD_POOL_FIELDS = {
    **{f"pool: {k}": {"pool": {"m": v}} for k, v in _BAD_POOL_ENTRIES.items()},
    **{f"demand: {k}": {"demand": {"m": v}} for k, v in _BAD_DEMAND_ENTRIES.items()},
    "pool entry not a map": {"pool": {"m": "hot"}},
    "demand entry not a map": {"demand": {"m": 3.0}},
    "pool not a map": {"pool": [{"state": "hot"}]},
    "demand not a map": {"demand": "m"},
    "pool too many": {"pool": {f"m{i}": {"state": "hot"} for i in range(129)}},
    "demand too many": {"demand": {f"m{i}": {"rpm": 1.0} for i in range(129)}},
    "pool bad name": {"pool": {"../etc/passwd": {"state": "hot"}}},
    "pool empty name": {"pool": {"": {"state": "hot"}}},
    "pool name with a newline": {"pool": {"a\nb": {"state": "hot"}}},
    "pool name too long": {"pool": {"x" * 129: {"state": "hot"}}},
    "demand bad name": {"demand": {"a/../b": {"rpm": 1.0}}},
    "demand header injection": {"demand": {"a\r\nSet-Cookie: x": {"rpm": 1.0}}},
    "pool_room negative": {"pool_room": -1},
    "pool_room bool": {"pool_room": True},
    "pool_room false": {"pool_room": False},
    "pool_room float": {"pool_room": 1.5},
    "pool_room str": {"pool_room": "8G"},
    "pool_room too big": {"pool_room": (1 << 60) + 1},
}


@pytest.mark.parametrize("field", _BAD_POOL_FIELDS.values(), ids=_BAD_POOL_FIELDS.keys())
def test_bad_pool_fields_raise_frame_error(field: dict[str, object]) -> None:
    with pytest.raises(FrameError, match="bad field"):
        PeerAnnouncement.from_wire({"node_id": "n", "mesh_id": "m", **field})


@pytest.mark.parametrize("field", _BAD_POOL_FIELDS.values(), ids=_BAD_POOL_FIELDS.keys())
def test_bad_pool_fields_are_refused_signed(field: dict[str, object]) -> None:
    # A hostile node signs its own garbage: the signature is good, the fields are not.
    import msgpack

    from meshllm.gossip import announcement as signing

    key, ann = _signed_pair()
    payload = msgpack.packb(ann.to_wire() | field, use_bin_type=True)
    with pytest.raises(FrameError, match="bad field"):
        signing.verify({"p": payload, "s": key.sign(payload)})
    with pytest.raises(ValueError, match="bad field"):
        signing.sign(replace(ann, **field), key)  # nor does this node sign them


def test_pool_with_a_non_string_model_key_is_refused() -> None:
    import msgpack

    from meshllm.gossip import announcement as signing

    with pytest.raises(FrameError):
        PeerAnnouncement.from_wire({"node_id": "n", "mesh_id": "m", "pool": {5: {"state": "hot"}}})
    key, ann = _signed_pair()
    payload = msgpack.packb(ann.to_wire() | {"demand": {5: {"rpm": 1.0}}}, use_bin_type=True)
    with pytest.raises(FrameError):
        signing.verify({"p": payload, "s": key.sign(payload)})


def test_fit_caps_pool_and_demand_and_leaves_out_unsafe_names() -> None:
    from meshllm.gossip import announcement as signing

    fitted, dropped = signing.fit(
        pool={"ok": {"state": "hot"}, "../x": {"state": "hot"}},
        demand={f"m{i}": {"rpm": 1.0} for i in range(200)},
    )
    assert fitted["pool"] == {"ok": {"state": "hot"}}
    assert dropped == ["../x"]
    assert len(fitted["demand"]) == signing.MAX_MODELS


@pytest.mark.parametrize(
    "field",
    [{"demand": {"m": {"rpm": -1.0}}}, {"pool": {"m": {"state": "warming", "eta": -5.0}}}],
    ids=["rpm", "eta"],
)
def test_negative_rates_and_etas_are_refused(field: dict[str, object]) -> None:
    with pytest.raises(FrameError):
        PeerAnnouncement.from_wire({"node_id": "n", "mesh_id": "m", **field})
