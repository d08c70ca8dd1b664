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
