"""Frame codec: round trips, caps, garbage."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.errors import FrameError
from meshllm.gossip.announcement import PeerAnnouncement
from meshllm.gossip.frames import FrameDecoder, FrameType, encode_frame, make_frame


def test_frames_round_trip_in_any_chunking() -> None:
    frames = [make_frame(FrameType.PING, id=i, pad=b"x" * i) for i in range(50)]
    data = b"".join(encode_frame(f) for f in frames)
    for chunk in (1, 7, 1000, len(data)):
        decoder = FrameDecoder()
        out = []
        for i in range(0, len(data), chunk):
            out += decoder.feed(data[i : i + chunk])
        assert out == frames and decoder.pending == 0


def test_oversized_frame_is_refused_both_ways() -> None:
    with pytest.raises(FrameError):
        encode_frame(make_frame(FrameType.PING, pad=b"x" * 200), max_size=100)
    decoder = FrameDecoder(max_size=100)
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(make_frame(FrameType.PING, pad=b"x" * 200)))


@pytest.mark.parametrize(
    "payload", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"x": 1}), msgpack.packb({"t": 5})]
)
def test_payloads_that_are_not_frames_raise_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(len(payload).to_bytes(4, "big") + payload)


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        FrameDecoder(max_size=1000).feed(data)


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
