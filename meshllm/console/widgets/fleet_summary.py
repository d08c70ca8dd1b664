"""The fleet lines above the tabs: which models are hot where, the memory free, the roles.

They render the fleet view (`meshllm.election.fleet.fleet_view`), the same the node's
`/api/fleet` and `meshllm fleet` show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import MeshStatus
from meshllm.console.widgets.render import UNKNOWN
from meshllm.election.fleet import GIB, MEMORY_KINDS, ROLES, summary_parts

_SEP = (" · ", "grey50")
ENDPOINT_STATES = ("up", "probation", "draining", "down")
_ENDPOINT_STYLE = {"up": "green", "probation": "yellow", "draining": "grey62", "down": "red"}
_STATE_STYLE = {"stale": "yellow", "unknown": "grey62"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_line(fleet: Mapping[str, Any]) -> Text:
    """'3 hosts have gemma…, 1 has qwen…': the fleet's summary, counts and models marked."""
    parts = summary_parts(fleet["models"])
    if not parts:
        return Text(fleet["summary"], style="italic grey62")
    out = Text()
    for i, (n, words, model) in enumerate(parts):
        out.append(", " if i else "")
        out.append(str(n), style="bold")
        out.append(words)
        out.append(model, style="bold green")
    return out


def memory_line(fleet: Mapping[str, Any]) -> Text:
    """'VRAM 18.4/48.0 GiB free on 2 nodes · RAM 10.4/15.6 GiB free on 1 node': live memory
    for models, VRAM and RAM apart, over the nodes with figures (the next line counts
    those without)."""
    memory = fleet["memory"]
    out = Text()
    for kind in MEMORY_KINDS:
        sums = memory[kind]
        if not sums["nodes"]:
            continue
        if out:
            out.append(*_SEP)
        out.append(f"{kind.upper()} ", style="grey62")
        out.append(f"{sums['free'] / GIB:.1f}", style="bold")
        out.append(f"/{sums['total'] / GIB:.1f} GiB free on {_plural(sums['nodes'], 'node')}")
    if not out:
        out.append("memory for models ", style="grey62")
        out.append(UNKNOWN, style="bold")
    return out


def nodes_line(fleet: Mapping[str, Any], status: MeshStatus) -> Text:
    """'1 host, 3 workers, 1 client · 1 stale, 1 unknown · endpoints 1 up, 1 down': roles,
    the nodes whose resources are not live, the endpoints by state."""
    hosts = fleet["hosts"]
    out = Text(", ".join(_plural(hosts[r], r) for r in ROLES if hosts.get(r)) or "no nodes")
    freshness = Counter(n["resources_state"] for n in fleet["nodes"])
    marks = [(f"{freshness[s]} {s}", _STATE_STYLE[s]) for s in ("stale", "unknown") if freshness[s]]
    for i, (text, style) in enumerate(marks):
        out.append(*(_SEP if i == 0 else (", ", "")))
        out.append(text, style=style)
    states = Counter(
        str(e.get("state")) for a in status.announcements for e in a.endpoints.values()
    )
    out.append(*_SEP)
    if not states:
        out.append("no endpoints", style="grey62")
        return out
    out.append("endpoints ", style="grey62")
    for i, state in enumerate(s for s in ENDPOINT_STATES if states[s]):
        out.append(", " if i else "")
        out.append(f"{states[state]} {state}", style=_ENDPOINT_STYLE[state])
    return out


class FleetSummary(Static):
    """Three lines summing up the mesh; a dash while the node is down."""

    def show_fleet(self, fleet: Mapping[str, Any], status: MeshStatus) -> None:
        """Render the fleet view of a fresh status."""
        lines = [summary_line(fleet), memory_line(fleet), nodes_line(fleet, status)]
        for line in lines:
            line.no_wrap = True
            line.overflow = "ellipsis"
        self.update(Text("\n").join(lines))

    def clear(self) -> None:
        """No figures when the node does not answer (never stale ones)."""
        self.update(Text(f"{UNKNOWN}\n\n", style="grey50"))
