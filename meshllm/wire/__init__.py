"""The codec every part speaks: length-prefixed msgpack frames, and streams of them.

Gossip, the proxy's tunnels and model copies all use it; it depends on nothing else
of meshllm but the error tree.
"""

from meshllm.wire.frames import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    decode_payload,
    encode_frame,
    make_frame,
)
from meshllm.wire.stream import FrameStream, MemoryFrameStream, memory_stream_pair

__all__ = [
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameStream",
    "FrameType",
    "MemoryFrameStream",
    "decode_payload",
    "encode_frame",
    "make_frame",
    "memory_stream_pair",
]
