"""The Nodes tab's resource view: the cursor node's CPU, RAM and GPUs, live, stale or unknown."""

from __future__ import annotations

from pathlib import Path

from meshllm.console.client import parse_status
from meshllm.console.widgets import NodeResources, NodesTable
from meshllm.console.widgets.render import meter

from .fake_node import GPU_BOX, NOW_MS, VLLM, FakeNode, endpoint_status, resources, sample_status
from .helpers import app_for, wait_for


def panel_lines(panel: NodeResources) -> list[str]:
    """The lines the panel shows, as plain text, spaces squeezed."""
    return [" ".join(t.plain.split()) for t in panel.content.renderables]


async def test_node_resources_follow_the_cursor(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.query_one(NodesTable)
        panel = app.query_one(NodeResources)
        await wait_for(pilot, lambda: nodes.row_count == 5, "the nodes")
        await pilot.press("2")
        await wait_for(pilot, lambda: panel.node_id == "a1b2c3d4e5f60718", "this node")
        assert panel_lines(panel) == [
            "▶ a1b2c3d4e5f60718 · host · ● live",
            "CPU 23% 8 cores · load 1.20 0.90 0.80",
            "RAM 37% 11.5/31.3 GiB",
            "GPU0 vram 38% 9.1/24.0 GiB util 31% 58°C 142/450 W RTX 4090",
        ]

        # The CPU-only peer, last heard 21 s ago: its last figures, marked stale.
        await pilot.press("down")
        await wait_for(pilot, lambda: panel.node_id == "b7e4f1029c3d5a66", "the stale peer")
        assert panel_lines(panel) == [
            "b7e4f1029c3d5a66 · worker · ◌ stale (21 s): the last figures heard",
            "CPU 61% 8 cores · load 3.90 3.10 2.40",
            "RAM 33% 5.2/15.6 GiB",
            "GPU no GPU · a CPU-only node: its models use RAM",
        ]

        # The A10 gives no power reading: a dash, the other figures stay.
        await pilot.press("down")
        await wait_for(pilot, lambda: panel.node_id == "c93d0a7be1f24c58", "the A10 peer")
        assert panel_lines(panel)[-1] == "GPU0 vram 85% 20.5/24.0 GiB util 97% 71°C — A10"

        # No report heard at all: said plainly, no figure.
        await pilot.press("down")
        await wait_for(pilot, lambda: panel.node_id == "d0f15e6a7b8c9d21", "the unknown peer")
        assert panel_lines(panel) == [
            "d0f15e6a7b8c9d21 · worker · ? unknown",
            "no figures: it has not reported its CPU, RAM or GPUs",
        ]

        # The peer goes stale while the cursor is on it; then its figures come back.
        await pilot.press("up", "up")
        await wait_for(pilot, lambda: panel.node_id == "b7e4f1029c3d5a66", "back up")
        fake.status["peers"][0].update(resources_state="live", resources_age_s=1.0)
        await wait_for(pilot, lambda: "● live" in panel_lines(panel)[0], "live figures")
        fake.status["peers"][0].update(
            resources=None, resources_state="unknown", resources_age_s=None
        )
        await wait_for(pilot, lambda: "? unknown" in panel_lines(panel)[0], "unknown figures")

        # The node goes away: nothing shown, never stale figures.
        await fake.stop()
        await wait_for(pilot, lambda: app.down_reason is not None, "the node down")
        assert panel.node_id is None


async def test_node_resources_list_the_endpoints_a_node_fronts(state_dir: Path) -> None:
    node = FakeNode(endpoint_status(), endpoints=[GPU_BOX, VLLM])
    await node.start()
    try:
        app = app_for(node.port, state_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(NodeResources)
            await pilot.press("2")
            await wait_for(pilot, lambda: panel.node_id is not None, "this node")
            assert panel_lines(panel)[-1] == "endpoints lab-vllm down"
            await pilot.press("down", "down")
            await wait_for(pilot, lambda: panel.node_id == "c93d0a7be1f24c58", "the A10 peer")
            assert panel_lines(panel)[-1] == "endpoints gpu-box up 12 ms"
    finally:
        await node.stop()


async def test_nodes_table_greys_stale_figures(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.query_one(NodesTable)
        await wait_for(pilot, lambda: nodes.row_count == 5, "the nodes")
        stale_cpu = nodes.get_row_at(1)[5]  # b7e4, last heard 21 s ago
        live_cpu = nodes.get_row_at(2)[5]
        assert stale_cpu.plain.strip() == "61%" and live_cpu.plain.strip() == "88%"
        assert stale_cpu.spans == meter(0.61, 5, stale=True).spans
        assert live_cpu.spans == meter(0.88, 5).spans
        assert stale_cpu.spans != meter(0.61, 5).spans


def test_parse_status_reads_resource_states() -> None:
    status = parse_status(sample_status())
    states = [(n.node_id[:4], n.resources_state, n.resources_age_s) for n in status.nodes]
    assert states == [
        ("a1b2", "live", 0.0),
        ("b7e4", "stale", 21.0),
        ("c93d", "live", 0.7),
        ("d0f1", "unknown", None),
        ("e55a", "live", 0.7),
    ]
    assert status.nodes[1].resources is not None  # stale: the last figures are kept
    assert status.nodes[3].resources is None

    # An older node gives no state: figures are live, none are unknown.
    raw = sample_status()
    for entry in [raw, *raw["peers"]]:
        entry.pop("resources_state")
        entry.pop("resources_age_s")
    raw["peers"][2]["resources"] = {}  # d0f1: an older node sends {} for none
    old = parse_status(raw)
    assert [n.resources_state for n in old.nodes] == ["live"] * 3 + ["unknown", "live"]


def test_null_resources_keep_the_rest_of_the_announcement() -> None:
    """`resources: null` (no figures heard) must not cost the node its endpoints."""
    node = FakeNode(endpoint_status(), endpoints=[GPU_BOX])
    raw = node.current_status()
    raw["peers"][1].update(resources=None, resources_state="unknown")
    status = parse_status(raw)
    a10 = status.announcement("c93d0a7be1f24c58")
    assert a10 is not None and set(a10.endpoints) == {"ep-gpubox"}
    assert a10.memory_kind == "vram"
    fleet = status.fleet(NOW_MS)
    entry = next(n for n in fleet["nodes"] if n["node_id"] == "c93d0a7be1f24c58")
    assert entry["resources_state"] == "unknown" and entry["endpoints"] == ["ep-gpubox"]
    assert fleet["memory"]["unknown_nodes"] == 2  # d0f1 and now c93d


def test_stale_meter_is_grey_and_never_coloured() -> None:
    live, stale = meter(0.9, 10), meter(0.9, 10, stale=True)
    assert live.plain == stale.plain
    assert "#a83a3a" in str(live.spans[0].style)  # nearly full: red
    assert "#a83a3a" not in str(stale.spans[0].style)
    assert meter(None, 6, stale=True).plain.strip() == "—"
    assert resources(1.0, 1.0, 2.0, [])["load_avg"] is None
