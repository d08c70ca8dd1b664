"""Gossip membership: signed announcements, the merged mesh state, SWIM health, the
membership core and the pump that runs it on the QUIC transport.

Other packages import these names from here, never a module's private helpers.
"""

from meshllm.gossip.announcement import (
    SERVING_STATE,
    ModelState,
    PeerAnnouncement,
    PoolState,
    Role,
    SignedAnnouncement,
    is_model_name,
)
from meshllm.gossip.connection import Link
from meshllm.gossip.health import HealthSettings
from meshllm.gossip.membership import Membership, MembershipSettings, Seed
from meshllm.gossip.pump import Gossip
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.gossip.resource_book import ResourceState, ResourceView
from meshllm.gossip.resource_feed import ResourceFeed
from meshllm.gossip.state import (
    MeshState,
    PeerJoined,
    PeerRemoved,
    PeerUpdated,
    SelfRefuted,
    StateEvent,
)
from meshllm.gossip.transport import QuicTransport, split_addr

__all__ = [
    "SERVING_STATE",
    "Gossip",
    "HealthSettings",
    "Link",
    "Membership",
    "MembershipSettings",
    "MeshState",
    "ModelState",
    "PeerAnnouncement",
    "PeerJoined",
    "PeerRemoved",
    "PeerUpdated",
    "PoolState",
    "QuicFrameStream",
    "QuicTransport",
    "ResourceFeed",
    "ResourceState",
    "ResourceView",
    "Role",
    "Seed",
    "SelfRefuted",
    "SignedAnnouncement",
    "StateEvent",
    "is_model_name",
    "split_addr",
]
