"""The text ``meshllm fleet`` prints from :func:`~meshllm.election.fleet.fleet_view`'s
dict: the summary, a per-model table, memory, hosts by role, a resource line a node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from meshllm.election.fleet import (
    ENDPOINT_ORDER,
    GIB,
    MEMORY_KINDS,
    ROLES,
    endpoint_label,
)
from meshllm.election.pool_view import pool_state_counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def endpoint_counts(endpoints: Iterable[Mapping[str, Any]]) -> str:
    """'1 warm, 1 down': how the model's endpoints have it ('' when none does)."""
    labels = Counter(endpoint_label(e) for e in endpoints)
    order = {label: i for i, label in enumerate(ENDPOINT_ORDER)}
    ordered = sorted(labels, key=lambda label: order.get(label, len(order)))
    return ", ".join(f"{labels[label]} {label}" for label in ordered)


def memory_line(memory: Mapping[str, Any]) -> str:
    """'VRAM 12.0 of 48.0 GiB free on 2 nodes; RAM 20.1 of 31.0 GiB free on 1 node; 1
    node unknown'."""
    parts = []
    for kind in MEMORY_KINDS:
        sums = memory.get(kind) or {}
        if sums.get("nodes"):
            parts.append(
                f"{kind.upper()} {_gib(sums['free'])} of {_gib(sums['total'])} GiB free"
                f" on {_plural(sums['nodes'], 'node')}"
            )
    if memory.get("stale_nodes"):
        parts.append(f"{_plural(memory['stale_nodes'], 'node')} stale")
    if memory.get("unknown_nodes"):
        parts.append(f"{_plural(memory['unknown_nodes'], 'node')} unknown")
    return "; ".join(parts) if parts else "no node lends memory to models"


def hosts_line(hosts: Mapping[str, int]) -> str:
    """'1 host, 3 workers, 1 client' (roles no node has left out)."""
    parts = [_plural(hosts[role], role) for role in ROLES if hosts.get(role)]
    return ", ".join(parts) or "no nodes"


def gpu_text(gpu: Mapping[str, Any]) -> str:
    """'RTX 4090 12% 9.1/24.0 GiB 61°C 180/450 W' (readings the GPU gives no figure for
    left out)."""
    words = [str(gpu["name"])]
    if gpu.get("util_percent") is not None:
        words.append(f"{gpu['util_percent']:.0f}%")
    if gpu.get("vram_total"):
        words.append(f"{_gib(gpu.get('vram_used') or 0)}/{_gib(gpu['vram_total'])} GiB")
    if gpu.get("temperature_c") is not None:
        words.append(f"{gpu['temperature_c']:.0f}°C")
    if gpu.get("power_w") is not None:
        limit = gpu.get("power_limit_w")
        words.append(f"{gpu['power_w']:.0f}" + (f"/{limit:.0f} W" if limit else " W"))
    return " ".join(words)


def resource_text(node: Mapping[str, Any]) -> str:
    """A node's resources in a line: 'cpu 23% · load 1.20 0.90 0.80 · ram 11.5/31.3 GiB ·
    RTX 4090 12% 9.1/24.0 GiB 61°C 180/450 W'; 'unknown'; 'stale (12 s) · cpu …'."""
    state = node.get("resources_state", "unknown")
    if state == "unknown":
        return "unknown"
    parts = []
    if state == "stale":
        age = node.get("age_s")
        parts.append(f"stale ({age:.0f} s)" if age is not None else "stale")
    cpu = node.get("cpu_percent")
    parts.append(f"cpu {cpu:.0f}%" if cpu is not None else "cpu ?")
    if node.get("load_avg"):
        parts.append("load " + " ".join(f"{x:.2f}" for x in node["load_avg"]))
    if node.get("ram_total"):
        parts.append(f"ram {_gib(node.get('ram_used') or 0)}/{_gib(node['ram_total'])} GiB")
    gpus = node.get("gpus") or []
    parts += [gpu_text(g) for g in gpus] if gpus else ["no GPU"]
    return " · ".join(parts)


def format_fleet(fleet: Mapping[str, Any]) -> str:
    """What ``meshllm fleet`` prints: the summary, a MODEL/STATE/NODES/ENDPOINTS table,
    memory, hosts by role, and a line of resources a node."""
    lines = [str(fleet.get("summary", ""))]
    models = fleet.get("models") or []
    if models:
        rows = [("MODEL", "STATE", "NODES", "ENDPOINTS")]
        for m in models:
            nodes = pool_state_counts({"nodes": m.get("nodes") or []}) or "-"
            rows.append(
                (m["model"], m["state"], nodes, endpoint_counts(m.get("endpoints") or []) or "-")
            )
        lines += ["", *_table(rows)]
    lines += ["", memory_line(fleet.get("memory") or {}), hosts_line(fleet.get("hosts") or {})]
    nodes = fleet.get("nodes") or []
    if nodes:
        rows = []
        for node in nodes:
            text = resource_text(node)
            if node.get("endpoints"):
                text += " · endpoints " + ", ".join(node["endpoints"])
            rows.append((node["node_id"], node.get("role", "?"), text))
        lines += ["", *_table(rows)]
    return "\n".join(lines)
