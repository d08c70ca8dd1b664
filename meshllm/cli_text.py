"""What the subcommands print: the node's API answers as text for a terminal
(``meshllm status``, ``models``, ``endpoints ls``)."""

from __future__ import annotations

from typing import Any

from meshllm.election.pool_view import node_detail


def format_bytes(n: int | None) -> str:
    """A byte count in decimal units (``-`` for none)."""
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.0f} PB"


def print_status(status: dict) -> None:
    """Human-readable ``meshllm status``."""
    serving = ", ".join(f"{m} ({s})" for m, s in status["serving"].items()) or "nothing"
    print(f"node {status['node_id']}  {status['role']}  serving {serving}")
    memory = status.get("memory_bytes")
    if memory is not None:
        kind = "VRAM" if status.get("memory_kind") == "vram" else "RAM"
        print(f"memory for models {format_bytes(memory)} of {kind}")
    if status.get("idle_reason"):
        print(f"serves nothing yet: {status['idle_reason']}")
    print(f"mesh {status['mesh_id']}  {len(status['peers'])} peer(s)")
    if status["peers"]:
        print(f"\n{'NODE':<18}{'ROLE':<8}{'ADDRESS':<24}{'RTT':>9}  SERVING")
        for p in status["peers"]:
            rtt = f"{p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else "-"
            if p.get("suspect"):  # a probe or a tunnel to it failed: dead unless it answers
                rtt = "suspect"
            served = ", ".join(p["serving"]) or "-"
            addr = p["addrs"][0] if p["addrs"] else "-"
            print(f"{p['node_id']:<18}{p['role']:<8}{addr:<24}{rtt:>9}  {served}")
    if status["catalog"]:
        print(f"\n{'MODEL':<36}{'STATE':<7}{'SIZE':>8}  NODES")
        for m in status["catalog"]:
            state = "warm" if m["warm"] else "cold"
            print(
                f"{m['model']:<36}{state:<7}{format_bytes(m.get('size_bytes')):>8}  "
                f"{len(m['nodes'])}"
            )
    for node_id, model, cause in failures(status):
        print(f"\nfailed: {model} on {node_id}: {cause}")


def print_models(models: list[dict]) -> None:
    """Human-readable ``meshllm models``: one row a model of the pool view
    (:func:`meshllm.election.pool_view.pool_view`), each failure's first line under it."""
    if not models:
        print("no model in the mesh catalog")
        return
    print(f"{'MODEL':<36}{'STATE':<11}{'SIZE':>8}{'RPM':>8}  NODES")
    for m in models:
        cells = []
        for node in m["nodes"]:
            words = [node["state"], node_detail(node), "pinned" if node.get("pinned") else ""]
            cells.append(f"{node['node_id'][:4]}…: {' '.join(w for w in words if w)}")
        rpm = f"{m['rpm']:.1f}" if m.get("rpm") else "-"
        print(
            f"{m['model']:<36}{m['state']:<11}{format_bytes(m.get('size_bytes')):>8}{rpm:>8}  "
            f"{'; '.join(cells) or '-'}"
        )
        for node in m["nodes"]:
            if node["state"] == "failed":
                cause = (node.get("cause") or "").strip().splitlines() or ["no cause given"]
                print(f"  failed on {node['node_id']}: {cause[0]}")


def failures(status: dict) -> list[tuple[str, str, str]]:
    """``(node id, model, cause)`` of every model a node of ``status`` gave up serving."""
    nodes = [status, *status.get("peers", [])]
    return [
        (node["node_id"], model, cause)
        for node in nodes
        for model, cause in sorted((node.get("failures") or {}).items())
    ]


def print_endpoints(endpoints: list[dict[str, Any]]) -> None:
    """``meshllm endpoints ls``: every node's endpoints, their state and models."""
    if not endpoints:
        print("no endpoints: add one with `meshllm endpoints add URL`")
        return
    print(f"{'ID':<14}{'NODE':<18}{'KIND':<8}{'STATE':<11}{'LATENCY':>9}  URL / MODELS")
    for e in endpoints:
        latency = f"{e['latency_ms']:.0f} ms" if e.get("latency_ms") is not None else "-"
        key = " (key)" if e.get("has_api_key") else ""
        print(
            f"{e['id']:<14}{e['node_id']:<18}{e['kind']:<8}{e['state']:<11}{latency:>9}  "
            f"{e.get('url') or e.get('name') or '-'}{key}"
        )
        models = ", ".join(
            f"{m} ({'warm' if d.get('warm') else 'cold'})" for m, d in sorted(e["models"].items())
        )
        print(f"{'':<14}{models or 'no models'}")
        if e.get("error") and e["state"] != "up":
            print(f"{'':<14}last error: {e['error']}")
