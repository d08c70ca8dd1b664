"""Election groups, auto-assignment, placement: pure functions over announcements (DESIGN.md §6)."""

from meshllm.election.assignment import (
    Assignment,
    AssignReason,
    StartupChoice,
    assign,
    choose_startup_model,
    estimate_loaded_memory,
    estimate_model_memory,
    fits,
    why_unassigned,
)
from meshllm.election.catalog import catalog, catalog_models
from meshllm.election.groups import ElectionGroup, elect
from meshllm.election.placement import (
    FreeMemory,
    Placement,
    PlacementTier,
    Refusal,
    RefusalReason,
    place,
    rank,
    rendezvous_hash,
    rendezvous_score,
)

__all__ = [
    "AssignReason",
    "Assignment",
    "ElectionGroup",
    "FreeMemory",
    "Placement",
    "PlacementTier",
    "Refusal",
    "RefusalReason",
    "StartupChoice",
    "assign",
    "catalog",
    "catalog_models",
    "choose_startup_model",
    "elect",
    "estimate_loaded_memory",
    "estimate_model_memory",
    "fits",
    "place",
    "rank",
    "rendezvous_hash",
    "rendezvous_score",
    "why_unassigned",
]
