"""PeerAnnouncement: its wire form, and the fields a peer may not get wrong."""

from __future__ import annotations

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
