"""The fleet lines above the tabs: who serves what, the memory for models, RAM in use."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import MEMORY_KINDS, MeshStatus
from meshllm.console.widgets.render import UNKNOWN, human_bytes, human_pair

_ROLES = ("host", "worker", "client")
_MEMORY_LABEL = {"vram": "VRAM ", "ram": "RAM for models "}
_SEP = (" · ", "grey50")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def serving_line(status: MeshStatus) -> Text:
    """'3 nodes serve gemma…, 1 serves qwen…' over the warm models, most served first."""
    warm = sorted(
        (e for e in status.catalog if e.warm and e.nodes), key=lambda e: (-len(e.nodes), e.model)
    )
    if not warm:
        return Text("no model is served yet", style="italic grey62")
    out = Text()
    for i, entry in enumerate(warm):
        n = len(entry.nodes)
        noun = ("node " if n == 1 else "nodes ") if i == 0 else ""
        out.append(", " if i else "")
        out.append(f"{n} ", style="bold")
        out.append(noun + ("serves " if n == 1 else "serve "))
        out.append(entry.model, style="bold green")
    return out


def memory_for_models(status: MeshStatus) -> dict[str, int]:
    """Bytes the serving nodes can give to models, summed by kind ('vram', then 'ram').

    Only the kinds some non-client node announced are keys: a CPU-only fleet has no
    'vram' key at all.  Clients serve nothing and are left out.
    """
    totals: dict[str, int] = {}
    for kind in MEMORY_KINDS:
        nodes = [n for n in status.nodes if n.role != "client" and n.memory_kind == kind]
        if nodes:
            totals[kind] = sum(n.memory_bytes for n in nodes)
    return totals


def capacity_line(status: MeshStatus) -> Text:
    """'VRAM 48 GiB · RAM for models 8.8 GiB · 1 host, 3 workers, 1 client'.

    Memory for models is labelled by its kind: GPU nodes add up as VRAM, CPU-only nodes
    as RAM for models, and only the kinds present are shown.
    """
    out = Text()
    totals = memory_for_models(status)
    for i, (kind, total) in enumerate(totals.items()):
        if i:
            out.append(*_SEP)
        out.append_text(
            Text.assemble((_MEMORY_LABEL[kind], "grey62"), (human_bytes(total), "bold"))
        )
    if not totals:
        out.append_text(Text.assemble(("memory for models ", "grey62"), (UNKNOWN, "bold")))
    roles = Counter(n.role for n in status.nodes)
    ordered = sorted(roles, key=lambda r: _ROLES.index(r) if r in _ROLES else len(_ROLES))
    out.append_text(Text.assemble(_SEP, ", ".join(_plural(roles[r], r) for r in ordered)))
    return out


def ram_use_line(status: MeshStatus) -> Text:
    """'RAM in use 45.7/85.9 GiB (1 unknown)', over every node.

    RAM sums the nodes that reported it; how many did not is said, never guessed.
    """
    known = [n.resources for n in status.nodes if n.resources is not None]
    unknown = len(status.nodes) - len(known)
    out = Text("RAM in use ", style="grey62")
    if not known:
        out.append(UNKNOWN, style="bold")
        return out
    ram = human_pair(sum(r.ram_used for r in known), sum(r.ram_total for r in known))
    out.append(ram, style="bold")
    if unknown:
        out.append(f" ({unknown} unknown)", style="grey50")
    return out


class FleetSummary(Static):
    """Three lines summing up the mesh; a dash while the node is down."""

    def show_status(self, status: MeshStatus) -> None:
        """Render from a fresh status."""
        lines = [serving_line(status), capacity_line(status), ram_use_line(status)]
        for line in lines:
            line.no_wrap = True
            line.overflow = "ellipsis"
        self.update(Text("\n").join(lines))

    def clear(self) -> None:
        """No figures when the node does not answer (never stale ones)."""
        self.update(Text(f"{UNKNOWN}\n\n", style="grey50"))
