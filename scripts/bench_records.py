"""What API keys, rate limits and the records cost per request, measured in-process.

Each figure is the work the node does on its event loop for one request, timed over
many requests (median of 7 runs):

    key check   authenticate the presented key, check its scope and model
    limits      check the key's rate limits mesh-wide (one peer's report counted), count it
    meter       watch a streamed answer go by (16 content events and llama-server's last)
    record      build the request's record, the metrics' counters and histograms
    history     hand the record to the history (the caller's side: a queue append)

and how many records a second the history's writer thread puts in SQLite.  Run alone
or from ``scripts/bench_proxy.py``, which prints these beside its end-to-end figures:

    .venv/bin/python scripts/bench_records.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from meshllm.access.keys import KeyBook, create_statement, new_key
from meshllm.access.limits import RateLimiter
from meshllm.owner import OwnerKey
from meshllm.records.answer_meter import AnswerMeter
from meshllm.records.history import HistoryStore
from meshllm.records.metrics import MeshSnapshot, Metrics
from meshllm.records.record import RecordKind, RequestRecord, new_request_id

MESH = "bench-mesh"
RUNS = 7


def per_call_us(work: Callable[[int], None], calls: int) -> float:
    """Median µs per call of ``work(i)`` over RUNS runs of ``calls`` calls."""
    runs = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        for i in range(calls):
            work(i)
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def record(i: int) -> RequestRecord:
    return RequestRecord(
        request_id=new_request_id(),
        time=time.time(),
        kind=RecordKind.LOCAL,
        entry_node="a1b2c3d4e5f60718",
        serving_node="a1b2c3d4e5f60718",
        model=f"model-{i % 4}",
        path="/v1/chat/completions",
        status=200,
        latency_ms=12.5,
        ttft_ms=3.25,
        key_id="0123456789ab",
        tokens_in=25,
        tokens_out=100,
        stream=True,
        energy_j=1.5,
    )


def measure(requests: int) -> dict[str, float]:
    """The per-request costs in µs, and the writer's records per second."""
    owner = OwnerKey.generate()
    book = KeyBook(owner.public_key, MESH)
    now = time.time()
    text, key = new_key(name="bench", scope="inference", rpm=10**9, tpm=10**9, now=now)
    book.add(create_statement(owner, key, mesh_id=MESH, now=now), now)
    limiter = RateLimiter(stale_after=6.0)
    limiter.record("peer", {key.id: [[0, 5, 500]]}, time.monotonic())

    def key_check(i: int) -> None:
        found = book.authenticate(text, now)
        book.check(found, scope="inference", model="model-1")

    def limits(i: int) -> None:
        t = time.monotonic()
        if limiter.check(key, t) is None:
            limiter.admit(key.id, t)
        limiter.tokens(key.id, 125, t)

    events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"tok%d"}}]}\n\n' % i for i in range(16)
    ]
    events.append(
        b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],'
        b'"timings":{"cache_n":0,"prompt_n":25,"predicted_n":16}}\n\ndata: [DONE]\n\n'
    )

    def meter(i: int) -> None:
        watched = AnswerMeter(stream=True)
        for event in events:
            watched.feed(event, 1.0)
        watched.finish()

    metrics = Metrics("a1b2c3d4e5f60718", MeshSnapshot)
    records = [record(i) for i in range(requests)]
    figures = {
        "key check": per_call_us(key_check, requests),
        "limits": per_call_us(limits, requests),
        "meter": per_call_us(meter, requests),
        "record": per_call_us(
            lambda i: (record(i), metrics.request_finished(records[i])), requests
        ),
    }
    with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp:
        store = HistoryStore(Path(tmp) / "history.sqlite", node_id="a", retention_s=86400)
        store.start()
        try:
            runs, written = [], 0.0
            for _ in range(RUNS):  # each run's rows written before the next is timed
                t0 = time.perf_counter()
                for r in records:
                    store.add(r)
                added = time.perf_counter()
                if not store.flush(120):
                    raise RuntimeError("the history writer did not catch up in 120 s")
                runs.append((added - t0) / requests * 1e6)
                written = max(written, requests / (time.perf_counter() - t0))
            figures["history"] = statistics.median(runs)
            figures["written/s"] = written
            figures["dropped"] = store.dropped
        finally:
            store.close()
    return figures


def print_figures(figures: dict[str, float]) -> None:
    names = ("key check", "limits", "meter", "record", "history")
    per_request = sum(figures[k] for k in names)
    print("\nper request, in-process (median of 7 runs), µs on the event loop:")
    for name in names:
        print(f"  {name:<10} {figures[name]:7.1f}")
    print(f"  {'total':<10} {per_request:7.1f}  (goal: under 100 µs)")
    print(
        f"history writer: {figures['written/s']:,.0f} records/s into SQLite (WAL, best run), "
        f"{figures['dropped']:.0f} dropped (goal: keeps up with 2,000 requests/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="calls per run")
    args = parser.parse_args()
    print_figures(measure(args.requests))


if __name__ == "__main__":
    main()
