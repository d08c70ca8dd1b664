"""Election groups: which nodes serve a model, and which of them hosts it (DESIGN.md §6).

Pure: a function of the announcements it is given, computed afresh wherever a view
needs it (``/api/status`` today); nothing is carried over from a previous result, so
two nodes with the same view of the mesh always agree on every group and host.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from meshllm.gossip import ModelState, PeerAnnouncement, Role


@dataclass(frozen=True, slots=True)
class ElectionGroup:
    """The nodes serving one model.

    ``members`` is in election order (most ``memory_bytes`` first, then lowest node id),
    so ``members[0] == host`` and ``members[1]`` would take over if the host left.
    """

    model: str
    host: str
    members: tuple[str, ...]


def elect(announcements: Iterable[PeerAnnouncement]) -> dict[str, ElectionGroup]:
    """Group the non-client nodes by the models they serve and elect each group's host.

    A node belongs to a model's group when the model is in its ``serving`` in any state
    but ``failed``.  The host is the member with the most ``memory_bytes`` (memory for
    models: VRAM, or RAM on a CPU-only node); ties go to the lowest node id (string
    order).  Expects one announcement per node, as MeshState holds them.  The result is
    keyed and ordered by model name and does not depend on the order of ``announcements``.
    """
    members: dict[str, list[PeerAnnouncement]] = defaultdict(list)
    for ann in announcements:
        if ann.role == Role.CLIENT:
            continue  # DESIGN §3: a client serves nothing and is never elected
        for model, state in ann.serving.items():
            if state != ModelState.FAILED:
                members[model].append(ann)
    groups = {}
    for model in sorted(members):
        ranked = sorted(members[model], key=_election_key)
        ids = tuple(ann.node_id for ann in ranked)
        groups[model] = ElectionGroup(model=model, host=ids[0], members=ids)
    return groups


def _election_key(ann: PeerAnnouncement) -> tuple[int, str]:
    # Most memory for models first: the host of a future split holds the most layers.
    return (-ann.memory_bytes, ann.node_id)
