"""Frame codec: round trips, caps, garbage."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.errors import FrameError
from meshllm.wire import FrameDecoder, FrameType, encode_frame, make_frame


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
