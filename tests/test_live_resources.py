"""Live host resources between real nodes: reported, then stale, unknown and gone when a
node is killed with -9 (ephemeral gossip, never a stale figure shown as live)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshllm.testing.cluster import Cluster, NodeProcess, wait_for

FAST_REPORTS = ["--resources-interval", "0.5"]
# Death is detected slowly here, so the figures have time to go stale and unknown first.
# (a suspicion lasts 3 probe timeouts): at least 20 s; unknown comes after 6 s.
SLOW_DEATH = ["--probe-interval", "6", "--probe-timeout", "6"]


def seen(viewer: NodeProcess, node: NodeProcess) -> dict[str, Any] | None:
    """``node`` as ``viewer``'s /api/status lists it (None: not a peer)."""
    return next((p for p in viewer.status()["peers"] if p["node_id"] == node.node_id), None)


def test_resources_are_live_then_stale_unknown_and_gone_after_a_kill(tmp_path: Path) -> None:
    with Cluster(tmp_path, [*FAST_REPORTS, *SLOW_DEATH]) as mesh:
        a = mesh.add(name="a")
        b = mesh.add(name="b")
        wait_for(lambda: (s := seen(a, b)) and s["resources_state"] == "live", 60,
                 what="A to get B's live report")  # fmt: skip
        peer = seen(a, b)
        assert peer is not None
        live = peer["resources"]
        assert live["ram_total"] > 0 and live["cpu_count"] >= 1
        assert "load_avg" in live and isinstance(live["gpus"], list)
        assert peer["resources_age_s"] < 5
        me = a.status()
        assert me["resources_state"] == "live" and me["resources"]["ram_total"] > 0
        rank = peer["seq"]

        # Reports keep coming without bumping B's announcement each time.
        wait_for(lambda: seen(a, b)["resources_age_s"] < 0.6, 30, what="a fresh report")
        assert seen(a, b)["seq"] - rank < 3

        b.kill()
        wait_for(lambda: seen(a, b)["resources_state"] == "stale", 30, what="stale figures")
        stale = seen(a, b)
        assert stale["resources"] is not None and stale["resources_age_s"] >= 1.5
        wait_for(lambda: seen(a, b)["resources_state"] == "unknown", 60, what="unknown figures")
        unknown = seen(a, b)  # still a member (not yet found dead), its figures unknown
        assert unknown["resources"] is None and unknown["resources_age_s"] is None
        wait_for(lambda: seen(a, b) is None, 120, what="B to be gone from A's peers")
