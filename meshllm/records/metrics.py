"""The node's Prometheus metrics (DESIGN.md §7b): ``meshllm_*`` at ``/metrics``.

Two kinds of figures:

* **per request**, counted here as the proxy reports them (:meth:`Metrics.request_finished`
  and friends), with ``prometheus_client`` children cached per label tuple so a call on
  the event loop stays a few dictionary lookups and lock-protected additions;
* **kept elsewhere** (membership, gossip, the model pool, copies, the history writer):
  those parts keep plain counts and hand them over as a :class:`MeshSnapshot` when
  Prometheus scrapes, so none of them imports ``prometheus_client``.

Each node has its own :class:`~prometheus_client.CollectorRegistry`, never the global
one: a test process may run several nodes.

Labels stay bounded.  Model names come from clients (any string) and node ids from the
peer table (capped, but large): each label takes at most :data:`MAX_LABEL_VALUES`
distinct values, and later newcomers are reported as ``"other"``, so a client sending
random model names costs one series, not one per name.  Key ids and prompts are never
labels.  Status codes are exact for the common ones and folded into their class
(``"4xx"``) otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshllm import __version__
from meshllm.records.record import RecordKind, RequestRecord

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of :meth:`Metrics.render`'s body."""

MAX_LABEL_VALUES = 256  # distinct model (and node) label values; past it, "other"
MAX_LABEL_LENGTH = 200  # characters of a label value kept: model names are short, abuse is not
MEMO_SIZE = (
    4 * MAX_LABEL_VALUES
)  # raw strings remembered per label, so the fast path skips sanitizing
OTHER = "other"
NONE = "none"  # for "" (no serving node, no model)

# Seconds: LLM answers run from a few ms (a cached refusal, a tiny completion) to minutes
# (a long generation on CPU); the finest steps where people notice, the first token.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
# Seconds a request waits for its model to load: from a warm mmap to a GGUF copied first.
LOAD_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

# Codes labelled exactly; any other valid code is labelled by its class ("4xx").
EXACT_STATUSES = frozenset(
    {200, 201, 204, 400, 401, 403, 404, 408, 409, 413, 422, 429, 499, 500, 502, 503, 504}
)
REFUSAL_REASONS = frozenset(
    {
        "no_key",
        "invalid_key",
        "revoked",
        "expired",
        "scope",
        "model",
        "rate_requests",
        "rate_tokens",
    }
)

_STATUS_LABELS = {
    code: str(code) if code in EXACT_STATUSES else f"{code // 100}xx" for code in range(100, 600)
}
_ROUTES = {kind: kind.value for kind in RecordKind}
# Control characters and lone surrogates (JSON can carry them; UTF-8 cannot encode them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def label_value(value: str) -> str:
    """``value`` made safe as a label value: at most :data:`MAX_LABEL_LENGTH` characters,
    no control characters, ``"none"`` for ""."""
    if not value:
        return NONE
    return _UNSAFE.sub("\ufffd", value[:MAX_LABEL_LENGTH])


def _error_reason(status: int) -> str:
    """Why a failed request failed, as an error label."""
    if status >= 500:
        return "server_error"
    return "client_error" if status >= 400 else "interrupted"


def status_label(status: int) -> str:
    """A status code as a label: exact when common, its class otherwise, "other" if invalid."""
    return _STATUS_LABELS.get(status, OTHER)


class BoundedLabel:
    """The values one label takes: the first :data:`MAX_LABEL_VALUES` distinct ones, then
    ``"other"``.  A value admitted once keeps its label, so gauges that go up and down
    (requests in flight) always meet the same series."""

    def __init__(self, cap: int = MAX_LABEL_VALUES) -> None:
        self._cap = cap
        self._admitted: set[str] = set()
        self._memo: dict[str, str] = {}

    def __call__(self, raw: str) -> str:
        label = self._memo.get(raw)
        return label if label is not None else self._admit(raw)

    def _admit(self, raw: str) -> str:
        label = label_value(raw)
        if label not in self._admitted:
            if len(self._admitted) >= self._cap:
                return OTHER  # not memoized: that would grow with every hostile name
            self._admitted.add(label)
        if len(raw) <= MAX_LABEL_LENGTH and len(self._memo) < MEMO_SIZE:
            self._memo[raw] = label
        return label


@dataclass(frozen=True)
class MeshSnapshot:
    """Counts the other parts keep, read at scrape time; fill what you have."""

    peers: Mapping[str, int] = field(default_factory=dict)
    """Peers by state: alive, suspect, dead, left…"""
    frames: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Gossip frames by (direction "in"/"out", frame type), since start."""
    refused: Mapping[str, int] = field(default_factory=dict)
    """Gossip frames or links refused, by reason, since start."""
    models: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """This node's pool: instances by (model, state): hot, warming, cooling…"""
    model_loads: Mapping[str, int] = field(default_factory=dict)
    model_unloads: Mapping[str, int] = field(default_factory=dict)
    copies: int = 0
    """Model files copied from peers."""
    copy_bytes: int = 0
    copies_failed: int = 0
    history_written: int = 0
    history_dropped: int = 0
    """History rows lost because the writer's queue was full."""
    history_queued: int = 0


class _RequestSeries:
    """The children of one (model, node, route): looked up once per request."""

    __slots__ = ("duration", "errors", "requests", "tokens_in", "tokens_out", "ttft")

    def __init__(
        self, duration: Histogram, ttft: Histogram, tokens: Counter, labels: tuple[str, ...]
    ) -> None:
        self.duration = duration.labels(*labels)
        self.ttft = ttft.labels(*labels)
        self.tokens_in = tokens.labels(*labels, "in")
        self.tokens_out = tokens.labels(*labels, "out")
        self.requests: dict[str, Counter] = {}
        self.errors: dict[str, Counter] = {}


class Metrics:
    """One node's metrics: call the recorders as things happen, :meth:`render` to scrape."""

    def __init__(self, node_id: str, snapshot: Callable[[], MeshSnapshot]) -> None:
        self.registry = CollectorRegistry()
        self._models = BoundedLabel()
        self._nodes = BoundedLabel()
        self._series: dict[tuple[str, str, str], _RequestSeries] = {}
        self._in_flight_children: dict[str, Gauge] = {}
        self._load_wait_children: dict[str, Histogram] = {}
        self._refusal_children: dict[tuple[str, str], Counter] = {}
        self._define(node_id)
        self.registry.register(SnapshotCollector(snapshot))

    def _define(self, node_id: str) -> None:
        reg = self.registry
        info = Gauge(
            "meshllm_node_info",
            "This node: its id and meshllm version (always 1).",
            ["node_id", "version"],
            registry=reg,
        )
        info.labels(label_value(node_id), __version__).set(1)
        self._in_flight = Gauge(
            "meshllm_requests_in_flight", "Requests being answered now.", ["model"], registry=reg
        )
        route = ["model", "node", "route"]
        self._requests = Counter(
            "meshllm_requests_total",
            "Requests finished, by model, serving node, route and status (exact or class).",
            [*route, "status"],
            registry=reg,
        )
        self._errors = Counter(
            "meshllm_request_errors_total",
            "Requests that failed: client_error (4xx), server_error (5xx), or interrupted "
            "(failed after a success status was sent, such as a stream cut off).",
            [*route, "reason"],
            registry=reg,
        )
        self._duration = Histogram(
            "meshllm_request_duration_seconds",
            "From a request's arrival to the last byte of its answer.",
            route,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self._ttft = Histogram(
            "meshllm_time_to_first_token_seconds",
            "From a request's arrival to its first token (successful requests only).",
            route,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self._tokens = Counter(
            "meshllm_tokens_total",
            "Tokens in prompts (in) and answers (out). A routed request is counted by its "
            'entry node (route="routed") and its serving node (route="served").',
            [*route, "direction"],
            registry=reg,
        )
        self._load_wait = Histogram(
            "meshllm_model_load_wait_seconds",
            "Time requests spent waiting for their model to load.",
            ["model"],
            buckets=LOAD_WAIT_BUCKETS,
            registry=reg,
        )
        self._refusals = Counter(
            "meshllm_access_refusals_total",
            "Requests the access layer refused, by status and reason.",
            ["status", "reason"],
            registry=reg,
        )

    def request_started(self, model: str) -> None:
        """A request for ``model`` is being answered."""
        self._in_flight_child(model).inc()

    def request_ended(self, model: str) -> None:
        """A request counted by :meth:`request_started` is over."""
        self._in_flight_child(model).dec()

    def _in_flight_child(self, model: str) -> Gauge:
        label = self._models(model)
        child = self._in_flight_children.get(label)
        if child is None:
            child = self._in_flight_children[label] = self._in_flight.labels(label)
        return child

    def request_finished(self, record: RequestRecord) -> None:
        """Count a finished request (called once per request, on the event loop)."""
        key = (
            self._models(record.model),
            self._nodes(record.serving_node),
            _ROUTES.get(record.kind, OTHER),
        )
        series = self._series.get(key)
        if series is None:
            series = _RequestSeries(self._duration, self._ttft, self._tokens, key)
            self._series[key] = series
        code = record.status
        status = _STATUS_LABELS.get(code, OTHER)
        requests = series.requests.get(status)
        if requests is None:
            requests = series.requests[status] = self._requests.labels(*key, status)
        requests.inc()
        if code >= 400 or record.error:
            reason = _error_reason(code)
            errors = series.errors.get(reason)
            if errors is None:
                errors = series.errors[reason] = self._errors.labels(*key, reason)
            errors.inc()
        series.duration.observe(max(record.latency_ms, 0.0) / 1000)
        if record.ttft_ms is not None and code < 400:
            series.ttft.observe(max(record.ttft_ms, 0.0) / 1000)
        if record.tokens_in > 0:
            series.tokens_in.inc(record.tokens_in)
        if record.tokens_out > 0:
            series.tokens_out.inc(record.tokens_out)

    def load_wait(self, model: str, seconds: float) -> None:
        """A request waited ``seconds`` for ``model`` to load."""
        label = self._models(model)
        child = self._load_wait_children.get(label)
        if child is None:
            child = self._load_wait_children[label] = self._load_wait.labels(label)
        child.observe(max(seconds, 0.0))

    def refused(self, status: int, reason: str) -> None:
        """The access layer refused a request (``reason`` outside the known set → "other")."""
        key = (status_label(status), reason if reason in REFUSAL_REASONS else OTHER)
        child = self._refusal_children.get(key)
        if child is None:
            child = self._refusal_children[key] = self._refusals.labels(*key)
        child.inc()

    def render(self) -> bytes:
        """Every family in Prometheus' text format (served as :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class SnapshotCollector(Collector):
    """The families kept by other parts, read from ``snapshot()`` at each scrape.  A
    snapshot that fails is logged and skipped (and counted): the rest still scrapes."""

    def __init__(self, snapshot: Callable[[], MeshSnapshot]) -> None:
        self._snapshot = snapshot
        self._failures = 0

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(snapshot_families(self._snapshot()))
        except Exception:
            self._failures += 1
            if self._failures == 1:
                log.exception("metrics snapshot failed; its families are left out")
            else:
                log.warning("metrics snapshot failed again (%d times)", self._failures)
            families = []
        yield from families
        yield CounterMetricFamily(
            "meshllm_metrics_snapshot_failures_total",
            "Scrapes that left out the mesh families because reading them failed.",
            value=self._failures,
        )


def snapshot_families(snap: MeshSnapshot) -> Iterator[Metric]:
    """The Prometheus families of one :class:`MeshSnapshot`."""
    yield _family(
        GaugeMetricFamily, "meshllm_peers", "Peers known, by state.", ["state"], snap.peers
    )
    yield _family(
        CounterMetricFamily,
        "meshllm_gossip_frames_total",
        "Gossip frames sent (out) and received (in), by frame type.",
        ["direction", "type"],
        snap.frames,
    )
    yield _family(
        CounterMetricFamily,
        "meshllm_gossip_refused_total",
        "Gossip frames or links refused, by reason.",
        ["reason"],
        snap.refused,
    )
    yield _family(
        GaugeMetricFamily,
        "meshllm_models",
        "Model instances in this node's pool, by state.",
        ["model", "state"],
        snap.models,
    )
    yield _family(
        CounterMetricFamily,
        "meshllm_model_loads_total",
        "Models loaded by this node.",
        ["model"],
        snap.model_loads,
    )
    yield _family(
        CounterMetricFamily,
        "meshllm_model_unloads_total",
        "Models unloaded by this node.",
        ["model"],
        snap.model_unloads,
    )
    for name, doc, value in (
        ("meshllm_model_copies_total", "Model files copied from peers.", snap.copies),
        (
            "meshllm_model_copy_bytes_total",
            "Bytes of model files copied from peers.",
            snap.copy_bytes,
        ),
        ("meshllm_model_copy_failures_total", "Model file copies that failed.", snap.copies_failed),
        (
            "meshllm_history_rows_written_total",
            "Request history rows written.",
            snap.history_written,
        ),
        (
            "meshllm_history_rows_dropped_total",
            "Request history rows dropped because the writer fell behind.",
            snap.history_dropped,
        ),
    ):
        yield CounterMetricFamily(name, doc, value=float(value))
    yield GaugeMetricFamily(
        "meshllm_history_rows_queued",
        "Request history rows waiting to be written.",
        value=float(snap.history_queued),
    )


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    counts: Mapping[str, int] | Mapping[tuple[str, str], int],
) -> Metric:
    family = kind(name, doc, labels=labels)
    for values, count in _merged(counts.items()).items():
        if len(values) != len(labels):
            raise ValueError(f"{name}: key {values!r} does not match labels {labels}")
        family.add_metric(list(values), count)
    return family


def _merged(items: Iterable[tuple[str | tuple[str, ...], int]]) -> dict[tuple[str, ...], float]:
    """Keys made label-safe; keys that become equal (cut to length) are summed, since a
    family must not repeat a label set.  A count that is not a number raises here, inside
    the collector's guard, not later while the registry renders."""
    merged: dict[tuple[str, ...], float] = {}
    for key, count in items:
        values = tuple(label_value(v) for v in ((key,) if isinstance(key, str) else key))
        merged[values] = merged.get(values, 0.0) + float(count)
    return merged
