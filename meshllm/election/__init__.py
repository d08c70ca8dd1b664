"""Election groups and auto-assignment: pure functions over announcements (DESIGN.md §6)."""

from meshllm.election.assignment import (
    Assignment,
    AssignReason,
    StartupChoice,
    assign,
    choose_startup_model,
    estimate_model_memory,
    fits,
    why_unassigned,
)
from meshllm.election.catalog import catalog, catalog_models
from meshllm.election.groups import ElectionGroup, elect

__all__ = [
    "AssignReason",
    "Assignment",
    "ElectionGroup",
    "StartupChoice",
    "assign",
    "catalog",
    "catalog_models",
    "choose_startup_model",
    "elect",
    "estimate_model_memory",
    "fits",
    "why_unassigned",
]
