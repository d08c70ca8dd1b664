"""The live resources of the node under the Nodes table's cursor: CPU, RAM, each GPU.

One bar a figure, drawn from the node's entry in the fleet view
(`meshllm.election.fleet.fleet_view`); stale figures are greyed and say how old they
are, unknown ones say so plainly, and a CPU-only node says it has no GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from meshllm.console.widgets.render import (
    ROLE_STYLE,
    UNKNOWN,
    human_pair,
    meter,
    resources_mark,
)

BAR = 24
"""Width of the CPU and RAM bars."""
GPU_BAR = 12
"""Width of each GPU's VRAM and utilisation bars."""
_LABEL = 6
_ENDPOINT_STYLE = {"up": "green", "probation": "yellow", "draining": "grey62", "down": "red"}


def _line(*parts: Any) -> Text:
    line = Text.assemble(*parts)
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def _fraction(used: float | None, total: float | None) -> float | None:
    return None if used is None or not total else used / total


def _label(text: str) -> tuple[str, str]:
    return (text.ljust(_LABEL), "bold")


def cpu_line(node: Mapping[str, Any], stale: bool) -> Text:
    """'CPU   [bar 23%]  8 cores · load 1.20 0.90 0.80'."""
    cpu = node.get("cpu_percent")
    words = []
    if node.get("cpu_count"):
        words.append(f"{node['cpu_count']:.0f} cores")
    if node.get("load_avg"):
        words.append("load " + " ".join(f"{x:.2f}" for x in node["load_avg"]))
    return _line(
        _label("CPU"),
        meter(None if cpu is None else cpu / 100, BAR, stale=stale),
        ("  " + " · ".join(words), "grey70"),
    )


def ram_line(node: Mapping[str, Any], stale: bool) -> Text:
    """'RAM   [bar 37%]  11.5/31.3 GiB'."""
    used, total = node.get("ram_used"), node.get("ram_total")
    pair = human_pair(int(used or 0), int(total)) if total else UNKNOWN
    return _line(
        _label("RAM"), meter(_fraction(used, total), BAR, stale=stale), (f"  {pair}", "grey70")
    )


def gpu_line(gpu: Mapping[str, Any], stale: bool) -> Text:
    """'GPU0  [vram 38%] 9.1/24.0 GiB  [util 12%]  61°C 180/450 W  RTX 4090'.

    A reading the GPU does not give (utilisation, temperature, power) is a dash.
    """
    used, total = gpu.get("vram_used"), gpu.get("vram_total")
    vram = _fraction(used, total)
    util = gpu.get("util_percent")
    pair = human_pair(int(used or 0), int(total)) if total else UNKNOWN
    temp = f"{gpu['temperature_c']:.0f}°C" if gpu.get("temperature_c") is not None else UNKNOWN
    power = UNKNOWN
    if gpu.get("power_w") is not None:
        limit = gpu.get("power_limit_w")
        power = f"{gpu['power_w']:.0f}" + (f"/{limit:.0f} W" if limit else " W")
    return _line(
        _label(f"GPU{gpu.get('index', '')}"),
        meter(vram, GPU_BAR, None if vram is None else f"vram {vram * 100:.0f}%", stale=stale),
        (f" {pair:<13} ", "grey70"),
        meter(
            None if util is None else util / 100,
            GPU_BAR,
            "util —" if util is None else f"util {util:.0f}%",
            stale=stale,
        ),
        (f"  {temp} {power}  ", "grey70"),
        (str(gpu.get("name", "")), "bold"),
    )


def endpoints_line(endpoints: Mapping[str, Mapping[str, Any]]) -> Text:
    """'endpoints gpu-box up 12 ms · vllm down': the endpoints the node fronts."""
    out = _line(("endpoints ", "bold"))
    for i, (endpoint_id, entry) in enumerate(sorted(endpoints.items())):
        state = str(entry.get("state", "?"))
        out.append(" · " if i else "", style="grey50")
        out.append(str(entry.get("name") or endpoint_id), style="bold")
        out.append(f" {state}", style=_ENDPOINT_STYLE.get(state, ""))
        if state == "up" and entry.get("latency_ms") is not None:
            out.append(f" {entry['latency_ms']:.0f} ms", style="grey70")
    return out


class NodeResources(Static):
    """The resources of one node, a bar a figure; a dash before any node is picked."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.node_id: str | None = None
        """The node shown, None while nothing is."""

    def show_node(
        self,
        node: Mapping[str, Any] | None,
        endpoints: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        is_self: bool = False,
    ) -> None:
        """Show `node` (its fleet view entry) and the `endpoints` it fronts (its
        announcement's); None shows nothing."""
        if node is None:
            self.node_id = None
            self.update(Text(UNKNOWN, style="grey50"))
            return
        self.node_id = node["node_id"]
        state = node["resources_state"]
        mark = resources_mark(state, node.get("age_s"))
        if state == "stale":
            mark.append(": the last figures heard", style="yellow")
        title = _line(
            ("▶ " if is_self else "", "bold cyan"),
            (node["node_id"], "bold"),
            (" · ", "grey50"),
            (node["role"], ROLE_STYLE.get(node["role"], "")),
            (" · ", "grey50"),
            mark,
        )
        lines = [title]
        if state == "unknown":
            lines.append(
                _line(("no figures: it has not reported its CPU, RAM or GPUs", "italic grey62"))
            )
        else:
            stale = state == "stale"
            lines += [cpu_line(node, stale), ram_line(node, stale)]
            gpus = node.get("gpus") or []
            lines += [gpu_line(g, stale) for g in gpus]
            if not gpus:
                note = (
                    " · a CPU-only node: its models use RAM" if node["memory_kind"] == "ram" else ""
                )
                lines.append(_line(_label("GPU"), ("no GPU", "grey62"), (note, "grey50")))
        if endpoints:
            lines.append(endpoints_line(endpoints))
        self.update(Group(*lines))

    def clear(self) -> None:
        """Nothing shown (the node does not answer)."""
        self.show_node(None)
