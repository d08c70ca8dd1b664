"""The fleet lines above the tabs: who serves what, and the mesh's total VRAM and RAM."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import MeshStatus
from meshllm.console.widgets.render import UNKNOWN, human_bytes, human_pair

_ROLES = ("host", "worker", "client")


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


def totals_line(status: MeshStatus) -> Text:
    """'VRAM 48.0 GiB · RAM 12.0/64.0 GiB · 1 host, 3 workers, 1 client'.

    RAM sums the nodes that reported it; how many did not is said, never guessed.
    """
    vram = sum(n.vram_bytes for n in status.nodes)
    known = [n.resources for n in status.nodes if n.resources is not None]
    unknown = len(status.nodes) - len(known)
    roles = Counter(n.role for n in status.nodes)
    ordered = sorted(roles, key=lambda r: _ROLES.index(r) if r in _ROLES else len(_ROLES))
    sep = (" · ", "grey50")
    out = Text.assemble(
        ("VRAM ", "grey62"),
        (human_bytes(vram) if vram else UNKNOWN, "bold"),
        sep,
        ("RAM ", "grey62"),
    )
    if known:
        ram = human_pair(sum(r.ram_used for r in known), sum(r.ram_total for r in known))
        out.append(ram, style="bold")
        if unknown:
            out.append(f" ({unknown} unknown)", style="grey50")
    else:
        out.append(UNKNOWN, style="bold")
    out.append_text(Text.assemble(sep, (", ".join(_plural(roles[r], r) for r in ordered), "")))
    return out


class FleetSummary(Static):
    """Two lines summing up the mesh; a dash while the node is down."""

    def show_status(self, status: MeshStatus) -> None:
        """Render from a fresh status."""
        first = serving_line(status)
        second = totals_line(status)
        for line in (first, second):
            line.no_wrap = True
            line.overflow = "ellipsis"
        self.update(Text("\n").join([first, second]))

    def clear(self) -> None:
        """No figures when the node does not answer (never stale ones)."""
        self.update(Text(f"{UNKNOWN}\n", style="grey50"))
