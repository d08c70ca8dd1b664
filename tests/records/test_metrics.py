"""meshllm.records.metrics: the families, their figures, bounded labels, promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshllm.records.metrics import (
    MAX_LABEL_LENGTH,
    MAX_LABEL_VALUES,
    MeshSnapshot,
    Metrics,
    label_value,
    status_label,
)
from meshllm.records.record import RecordKind, RequestRecord

PROMTOOL = "/usr/bin/promtool"


def record(**fields: object) -> RequestRecord:
    row: dict[str, object] = {
        "request_id": "0123456789abcdef",
        "time": 1_700_000_000.0,
        "kind": RecordKind.LOCAL,
        "entry_node": "n1",
        "serving_node": "n1",
        "model": "gemma",
        "path": "/v1/chat/completions",
        "status": 200,
        "latency_ms": 250.0,
        "ttft_ms": 40.0,
        "tokens_in": 12,
        "tokens_out": 30,
    }
    row.update(fields)
    return RequestRecord(**row)  # type: ignore[arg-type]


def full_snapshot() -> MeshSnapshot:
    return MeshSnapshot(
        peers={"alive": 3, "suspect": 1},
        frames={("in", "ping"): 10, ("out", "pong"): 9},
        refused={"bad_hmac": 2},
        models={("gemma", "hot"): 1, ("qwen", "warming"): 1},
        model_loads={"gemma": 2},
        model_unloads={"gemma": 1},
        copies=1,
        copy_bytes=253_000_000,
        copies_failed=1,
        history_written=40,
        history_dropped=2,
        history_queued=5,
    )


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a render, by (sample name, labels)."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def promtool_check(text: bytes) -> subprocess.CompletedProcess[str]:
    if shutil.which(PROMTOOL) is None:
        pytest.fail(
            f"{PROMTOOL} is missing: install Debian's prometheus package "
            "(apt-get install prometheus)"
        )
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def busy_metrics() -> Metrics:
    metrics = Metrics("node-1", full_snapshot)
    metrics.request_started("gemma")
    metrics.request_finished(record())
    metrics.request_finished(
        record(
            kind=RecordKind.ROUTED,
            serving_node="",
            status=503,
            error="no node serves it",
            ttft_ms=None,
        )
    )
    metrics.request_finished(record(status=200, error="stream cut off"))
    metrics.refused(401, "no_key")
    metrics.refused(429, "rate_tokens")
    metrics.load_wait("gemma", 3.5)
    return metrics


def test_metrics_render_passes_promtool() -> None:
    result = promtool_check(busy_metrics().render())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_metrics_empty_render_passes_promtool() -> None:
    result = promtool_check(Metrics("node-1", MeshSnapshot).render())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_metrics_request_figures_move_with_calls() -> None:
    metrics = busy_metrics()
    local = {"model": "gemma", "node": "n1", "route": "local"}
    assert value(metrics, "meshllm_requests_total", **local, status="200") == 2
    routed = {"model": "gemma", "node": "none", "route": "routed"}
    assert value(metrics, "meshllm_requests_total", **routed, status="503") == 1
    assert value(metrics, "meshllm_request_errors_total", **routed, reason="server_error") == 1
    assert value(metrics, "meshllm_request_errors_total", **local, reason="interrupted") == 1
    assert value(metrics, "meshllm_tokens_total", **local, direction="in") == 24
    assert value(metrics, "meshllm_tokens_total", **local, direction="out") == 60
    assert value(metrics, "meshllm_request_duration_seconds_count", **local) == 2
    assert value(metrics, "meshllm_request_duration_seconds_sum", **local) == pytest.approx(0.5)
    assert value(metrics, "meshllm_request_duration_seconds_bucket", **local, le="0.1") == 0
    assert value(metrics, "meshllm_request_duration_seconds_bucket", **local, le="0.25") == 2
    assert value(metrics, "meshllm_time_to_first_token_seconds_count", **local) == 2
    # a failed request has no first token worth timing
    assert value(metrics, "meshllm_time_to_first_token_seconds_count", **routed) == 0
    assert value(metrics, "meshllm_requests_in_flight", model="gemma") == 1
    metrics.request_ended("gemma")
    assert value(metrics, "meshllm_requests_in_flight", model="gemma") == 0
    assert value(metrics, "meshllm_model_load_wait_seconds_count", model="gemma") == 1
    assert value(metrics, "meshllm_model_load_wait_seconds_sum", model="gemma") == 3.5
    assert value(metrics, "meshllm_access_refusals_total", status="401", reason="no_key") == 1
    metrics.refused(401, "no_key")
    assert value(metrics, "meshllm_access_refusals_total", status="401", reason="no_key") == 2
    assert value(metrics, "meshllm_node_info", node_id="node-1", version="0.1.0") == 1


def test_metrics_refusal_reason_and_status_are_bounded() -> None:
    metrics = Metrics("n", MeshSnapshot)
    metrics.refused(403, "something else")
    metrics.refused(418, "scope")
    metrics.refused(9999, "scope")
    assert value(metrics, "meshllm_access_refusals_total", status="403", reason="other") == 1
    assert value(metrics, "meshllm_access_refusals_total", status="4xx", reason="scope") == 1
    assert value(metrics, "meshllm_access_refusals_total", status="other", reason="scope") == 1


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (200, "200"),
        (206, "2xx"),
        (429, "429"),
        (418, "4xx"),
        (503, "503"),
        (599, "5xx"),
        (0, "other"),
        (600, "other"),
        (-1, "other"),
    ],
)
def test_status_label_exact_or_class(status: int, label: str) -> None:
    assert status_label(status) == label


def test_metrics_snapshot_families() -> None:
    metrics = Metrics("n", full_snapshot)
    assert value(metrics, "meshllm_peers", state="alive") == 3
    assert value(metrics, "meshllm_peers", state="suspect") == 1
    assert value(metrics, "meshllm_gossip_frames_total", direction="in", type="ping") == 10
    assert value(metrics, "meshllm_gossip_refused_total", reason="bad_hmac") == 2
    assert value(metrics, "meshllm_models", model="qwen", state="warming") == 1
    assert value(metrics, "meshllm_model_loads_total", model="gemma") == 2
    assert value(metrics, "meshllm_model_unloads_total", model="gemma") == 1
    assert value(metrics, "meshllm_model_copies_total") == 1
    assert value(metrics, "meshllm_model_copy_bytes_total") == 253_000_000
    assert value(metrics, "meshllm_model_copy_failures_total") == 1
    assert value(metrics, "meshllm_history_rows_written_total") == 40
    assert value(metrics, "meshllm_history_rows_dropped_total") == 2
    assert value(metrics, "meshllm_history_rows_queued") == 5
    assert value(metrics, "meshllm_metrics_snapshot_failures_total") == 0


def test_metrics_snapshot_is_read_at_each_scrape() -> None:
    peers = {"alive": 1}
    metrics = Metrics("n", lambda: MeshSnapshot(peers=dict(peers)))
    assert value(metrics, "meshllm_peers", state="alive") == 1
    peers["alive"] = 4
    assert value(metrics, "meshllm_peers", state="alive") == 4


def test_metrics_failing_snapshot_keeps_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> MeshSnapshot:
        raise RuntimeError("membership is gone")

    metrics = Metrics("n", broken)
    metrics.request_finished(record())
    with caplog.at_level("WARNING"):
        found = samples(metrics)
        samples(metrics)
    assert "metrics snapshot failed" in caplog.text
    names = {name for name, _ in found}
    assert "meshllm_requests_total" in names
    assert "meshllm_node_info" in names
    assert "meshllm_peers" not in names
    assert value(metrics, "meshllm_metrics_snapshot_failures_total") == 3
    result = promtool_check(metrics.render())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "snapshot",
    [
        MeshSnapshot(peers={"alive": "many"}),  # type: ignore[dict-item]
        MeshSnapshot(copies=None),  # type: ignore[arg-type]
        MeshSnapshot(frames={("in",): 1}),  # type: ignore[dict-item]
        None,
    ],
)
def test_metrics_snapshot_with_bad_values_is_skipped(snapshot: MeshSnapshot) -> None:
    metrics = Metrics("n", lambda: snapshot)
    metrics.request_finished(record())
    assert promtool_check(metrics.render()).returncode == 0
    assert not any(name == "meshllm_peers" for name, _ in samples(metrics))
    assert value(metrics, "meshllm_metrics_snapshot_failures_total") == 3


def test_metrics_snapshot_keys_cut_to_the_same_label_are_summed() -> None:
    long = "m" * (MAX_LABEL_LENGTH + 50)
    snapshot = MeshSnapshot(model_loads={long + "a": 1, long + "b": 2})
    metrics = Metrics("n", lambda: snapshot)
    assert value(metrics, "meshllm_model_loads_total", model="m" * MAX_LABEL_LENGTH) == 3
    assert promtool_check(metrics.render()).returncode == 0


def test_metrics_model_label_past_the_cap_is_other() -> None:
    metrics = Metrics("n", MeshSnapshot)
    for i in range(MAX_LABEL_VALUES + 10):
        metrics.request_finished(record(model=f"model-{i}"))
    metrics.load_wait("one-more", 1.0)
    found = samples(metrics)
    models = {dict(labels)["model"] for name, labels in found if name == "meshllm_requests_total"}
    assert len(models) == MAX_LABEL_VALUES + 1
    assert "other" in models
    assert "model-0" in models and f"model-{MAX_LABEL_VALUES}" not in models
    labels = {"model": "other", "node": "n1", "route": "local", "status": "200"}
    assert value(metrics, "meshllm_requests_total", **labels) == 10
    assert value(metrics, "meshllm_model_load_wait_seconds_count", model="other") == 1
    # a value admitted before the cap keeps its own series
    metrics.request_finished(record(model="model-0"))
    assert value(metrics, "meshllm_requests_total", **{**labels, "model": "model-0"}) == 2


def test_metrics_node_label_past_the_cap_is_other() -> None:
    metrics = Metrics("n", MeshSnapshot)
    for i in range(MAX_LABEL_VALUES + 3):
        metrics.request_finished(record(serving_node=f"node-{i}"))
    local = {"model": "gemma", "route": "local", "status": "200"}
    assert value(metrics, "meshllm_requests_total", **local, node="other") == 3
    assert value(metrics, "meshllm_requests_total", **local, node="node-0") == 1


def test_metrics_in_flight_past_the_cap_returns_to_zero() -> None:
    metrics = Metrics("n", MeshSnapshot)
    for i in range(MAX_LABEL_VALUES + 5):
        metrics.request_started(f"m{i}")
    for i in range(MAX_LABEL_VALUES + 5):
        metrics.request_ended(f"m{i}")
    assert value(metrics, "meshllm_requests_in_flight", model="other") == 0
    assert value(metrics, "meshllm_requests_in_flight", model="m0") == 0


def test_metrics_hostile_model_name_renders_valid_text() -> None:
    hostile = 'a"b\\c\nd}e{\x00\r\ud800' + "x" * 10_000
    metrics = Metrics('node"\n', MeshSnapshot)
    metrics.request_started(hostile)
    metrics.request_finished(record(model=hostile, serving_node=hostile))
    metrics.load_wait(hostile, 1.0)
    text = metrics.render()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""
    models = {
        s.labels["model"]
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if "model" in s.labels
    }
    assert models == {label_value(hostile)}
    (model,) = models
    assert len(model) == MAX_LABEL_LENGTH
    assert model.startswith('a"b\\c')
    assert "\n" not in model and "\x00" not in model


def test_metrics_instances_do_not_share_values() -> None:
    first = Metrics("a", MeshSnapshot)
    second = Metrics("b", MeshSnapshot)
    first.request_finished(record())
    local = {"model": "gemma", "node": "n1", "route": "local", "status": "200"}
    assert value(first, "meshllm_requests_total", **local) == 1
    assert value(second, "meshllm_requests_total", **local) is None
    assert value(second, "meshllm_node_info", node_id="b", version="0.1.0") == 1
    assert value(second, "meshllm_node_info", node_id="a", version="0.1.0") is None


def test_metrics_negative_or_empty_figures_do_not_raise() -> None:
    metrics = Metrics("n", MeshSnapshot)
    metrics.request_finished(record(model="", tokens_in=-3, tokens_out=0, latency_ms=-1.0))
    metrics.load_wait("gemma", -2.0)
    labels = {"model": "none", "node": "n1", "route": "local"}
    assert value(metrics, "meshllm_requests_total", **labels, status="200") == 1
    assert value(metrics, "meshllm_request_duration_seconds_sum", **labels) == 0
    assert value(metrics, "meshllm_tokens_total", **labels, direction="in") == 0


def test_label_value_caps_and_cleans() -> None:
    assert label_value("") == "none"
    assert label_value("openai:gpt-4o") == "openai:gpt-4o"
    assert label_value("a\nb") == "a\ufffdb"
    assert len(label_value("x" * 1000)) == MAX_LABEL_LENGTH
