"""Frame codec: length-prefixed msgpack maps ``{"t": type, "v": 1, ...}``.

Every message between nodes, on every QUIC stream, is one frame: a 4-byte
big-endian length, then a msgpack map of at most :data:`MAX_FRAME_SIZE` bytes.
Unknown fields are ignored by readers; unknown types are answered with an
``error`` frame by the dispatcher.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Any

import msgpack

from meshllm.errors import FrameError

PROTOCOL_VERSION = 1
MAX_FRAME_SIZE = 1 << 20  # 1 MiB: far above any announcement, well below memory trouble
_LENGTH = struct.Struct(">I")

Frame = dict[str, Any]


class FrameType(StrEnum):
    """Frame types on the wire.  Append only: peers of older versions answer unknown ones."""

    HELLO = "hello"
    PROOF = "proof"
    ANNOUNCE = "announce"
    DIGEST = "digest"
    PULL = "pull"
    PING = "ping"
    PONG = "pong"
    DEAD = "dead"
    LEAVE = "leave"
    TUNNEL = "tunnel"
    FILE = "file"
    DROP = "drop"
    ERROR = "error"
    PING_REQ = "ping-req"
    NACK = "nack"
    SUSPECT = "suspect"
    LOAD = "load"
    POOL = "pool"
    RESOURCES = "resources"
    KEYS = "keys"
    USAGE = "usage"
    RECORDS = "records"


def make_frame(frame_type: FrameType, **fields: Any) -> Frame:
    """A frame dict of ``frame_type`` carrying ``fields``."""
    return {"t": str(frame_type), "v": PROTOCOL_VERSION, **fields}


def encode_frame(frame: Frame, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """Length-prefixed msgpack bytes of ``frame``."""
    payload = msgpack.packb(frame, use_bin_type=True)
    if len(payload) > max_size:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the {max_size}-byte cap")
    return _LENGTH.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Frame:
    """Decode one frame body; the result is a map with a string ``t``."""
    try:
        frame = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types for garbage
        raise FrameError(f"undecodable frame: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise FrameError("frame is not a map with a string 't'")
    return frame


class FrameDecoder:
    """Incremental decoder: feed stream bytes, take whole frames out."""

    def __init__(self, max_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame now complete.  Raises :class:`FrameError`."""
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self._max_size:
                raise FrameError(f"frame of {length} bytes exceeds the {self._max_size}-byte cap")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            frames.append(decode_payload(payload))
        return frames

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return len(self._buffer)
