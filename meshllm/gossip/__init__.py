"""Gossip membership: announcements, the merged mesh state, probes, the QUIC transport.

Other packages import these names from here, never a module's private helpers.
"""

from meshllm.gossip.announcement import ModelState, PeerAnnouncement, Role
from meshllm.gossip.health import ProbeSchedule
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.gossip.service import Gossip, GossipSettings
from meshllm.gossip.state import (
    MeshState,
    PeerJoined,
    PeerRemoved,
    PeerUpdated,
    SelfRefuted,
    StateEvent,
)
from meshllm.gossip.transport import Link, QuicTransport, split_addr

__all__ = [
    "Gossip",
    "GossipSettings",
    "Link",
    "MeshState",
    "ModelState",
    "PeerAnnouncement",
    "PeerJoined",
    "PeerRemoved",
    "PeerUpdated",
    "ProbeSchedule",
    "QuicFrameStream",
    "QuicTransport",
    "Role",
    "SelfRefuted",
    "StateEvent",
    "split_addr",
]
