"""The SQLite request history: writes off the caller's thread, queries, usage, pruning."""

from __future__ import annotations

import dataclasses
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshllm.errors import ConfigError
from meshllm.records import history
from meshllm.records.history import COLUMNS, HistoryStore
from meshllm.records.query import HistoryQuery, UsageQuery
from meshllm.records.record import RecordKind, RequestRecord

T0 = 1_700_000_000.0
DAY = 86400.0


class FakeClock:
    """A clock the test moves; read from the writer thread too."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(i: int, **fields) -> RequestRecord:
    """Request ``i``, ``i`` seconds after T0, served locally by node a."""
    values = {
        "request_id": f"{i:016x}",
        "time": T0 + i,
        "kind": RecordKind.LOCAL,
        "entry_node": "a",
        "serving_node": "a",
        "model": "gemma",
        "path": "/v1/chat/completions",
        "status": 200,
        "latency_ms": 10.0,
        "tokens_in": 3,
        "tokens_out": 5,
    }
    values.update(fields)
    return RequestRecord(**values)


def make_store(path: Path, clock: FakeClock | None = None, **kwargs) -> HistoryStore:
    store = HistoryStore(
        path,
        node_id="a",
        retention_s=kwargs.pop("retention_s", 7 * DAY),
        clock=clock or FakeClock(),
        **kwargs,
    )
    store.start()
    return store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "history" / "history.db"


@pytest.fixture
def store(db: Path) -> Iterator[HistoryStore]:
    s = make_store(db)
    yield s
    s.close()


def fill(store: HistoryStore, records: list[RequestRecord]) -> None:
    for r in records:
        store.add(r)
    assert store.flush()


def ids(rows: list[dict]) -> list[str]:
    return [row["request_id"] for row in rows]


def test_columns_are_the_record_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(RequestRecord)) == COLUMNS


def test_store_round_trip(store: HistoryStore) -> None:
    r = record(1, ttft_ms=4.5, key_id="k1", stream=True, energy_j=1.25, error="")
    fill(store, [r])
    assert store.query(HistoryQuery()) == [r.to_dict()]
    assert store.stats() == {"written": 1, "dropped": 0, "pruned": 0, "queued": 0}


def test_store_query_is_newest_first(store: HistoryStore) -> None:
    fill(store, [record(i) for i in (3, 1, 2)])
    assert ids(store.query(HistoryQuery())) == [f"{i:016x}" for i in (3, 2, 1)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (HistoryQuery(model="llama"), [2]),
        (HistoryQuery(node="b"), [3, 4]),
        (HistoryQuery(key="k1"), [1, 4]),
        (HistoryQuery(status="404"), [5]),
        (HistoryQuery(status="4xx"), [5]),
        (HistoryQuery(status="5xx"), [6]),
        (HistoryQuery(status="error"), [5, 6]),
        (HistoryQuery(status="ok"), [1, 2, 3, 4]),
        (HistoryQuery(since=T0 + 2, until=T0 + 4), [2, 3]),
        (HistoryQuery(search="LLAMA"), [2]),
        (HistoryQuery(search="/v1/embed"), [3]),
        (HistoryQuery(search="out of memory"), [6]),
        (HistoryQuery(search="0000000000000004"), [4]),
        (HistoryQuery(kind=RecordKind.ROUTED), [3]),
        (HistoryQuery(kind=RecordKind.SERVED), [4]),
        (HistoryQuery(model="gemma", status="error"), [5, 6]),
        (HistoryQuery(limit=2), [5, 6]),
    ],
)
def test_store_query_filters(store: HistoryStore, query: HistoryQuery, expected: list) -> None:
    fill(
        store,
        [
            record(1, key_id="k1"),
            record(2, model="llama"),
            record(3, kind=RecordKind.ROUTED, serving_node="b", path="/v1/embeddings"),
            record(4, kind=RecordKind.SERVED, entry_node="b", key_id="k1"),
            record(5, status=404, error="no such model"),
            record(6, status=503, error="Backend: Out of memory"),
        ],
    )
    assert sorted(ids(store.query(query))) == [f"{i:016x}" for i in expected]


def test_store_search_treats_like_wildcards_literally(store: HistoryStore) -> None:
    fill(store, [record(1, error="50% done"), record(2, error="500 done")])
    assert ids(store.query(HistoryQuery(search="0%"))) == [f"{1:016x}"]


def test_store_cursor_pages_without_gaps_or_duplicates(store: HistoryStore) -> None:
    # Four rows share each second, so the request id breaks ties.
    fill(store, [record(i, time=T0 + i // 4) for i in range(250)])
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        page = store.query(HistoryQuery(limit=100, before=before))
        if not page:
            break
        pages += 1
        seen += ids(page)
        before = (page[-1]["time"], page[-1]["request_id"])
    assert pages == 3
    assert seen == [f"{i:016x}" for i in reversed(range(250))]


def test_store_survives_restart(db: Path) -> None:
    store = make_store(db)
    fill(store, [record(i) for i in range(5)])
    store.close()
    reopened = make_store(db)
    try:
        assert len(reopened.query(HistoryQuery())) == 5
        fill(reopened, [record(9)])
        assert len(reopened.query(HistoryQuery())) == 6
    finally:
        reopened.close()


def test_store_close_writes_what_is_queued(db: Path) -> None:
    store = make_store(db)
    for i in range(3000):
        store.add(record(i))
    store.close()
    store.close()  # idempotent
    assert store.written == 3000
    store.add(record(1))
    assert store.dropped == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (3000,)


def test_store_start_is_idempotent(store: HistoryStore) -> None:
    store.start()
    fill(store, [record(1)])
    assert store.written == 1


def test_store_prune_deletes_past_retention(db: Path, monkeypatch) -> None:
    monkeypatch.setattr(history, "PRUNE_CHUNK", 7)  # several chunks
    store = make_store(db, retention_s=DAY)
    try:
        fill(store, [record(i, time=T0 + i) for i in range(30)])
        assert store.prune(T0 + DAY + 20) == 20
        assert sorted(ids(store.query(HistoryQuery()))) == [f"{i:016x}" for i in range(20, 30)]
        assert store.pruned == 20
    finally:
        store.close()


def test_store_start_prunes_once(db: Path) -> None:
    clock = FakeClock(T0)
    store = make_store(db, clock, retention_s=DAY)
    fill(store, [record(0, time=T0 - 2 * DAY), record(1)])
    store.close()
    reopened = make_store(db, clock, retention_s=DAY)
    try:
        assert reopened.pruned == 1
        assert ids(reopened.query(HistoryQuery())) == [f"{1:016x}"]
    finally:
        reopened.close()


def test_store_prunes_in_background(db: Path) -> None:
    clock = FakeClock(T0)
    store = make_store(db, clock, retention_s=DAY, prune_interval_s=60)
    try:
        fill(store, [record(0), record(1, time=T0 + DAY)])
        assert store.pruned == 0
        clock.now = T0 + DAY + 61  # past the retention of row 0 and the prune interval
        fill(store, [record(2, time=clock.now)])
        assert store.pruned == 1
        assert sorted(ids(store.query(HistoryQuery()))) == [f"{i:016x}" for i in (1, 2)]
    finally:
        store.close()


def test_store_keeps_no_prompt_without_log_prompts(store: HistoryStore) -> None:
    fill(store, [record(1, prompt="secret", answer="also secret")])
    row = store.query(HistoryQuery())[0]
    assert row["prompt"] is None
    assert row["answer"] is None
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT prompt, answer FROM requests").fetchone() == (None, None)


def test_store_keeps_prompts_capped_with_log_prompts(db: Path) -> None:
    store = make_store(db, log_prompts=True)
    try:
        long = "x" * (history.MAX_PROMPT_CHARS + 10)
        fill(store, [record(1, prompt=long, answer="hi"), record(2)])
        rows = {row["request_id"]: row for row in store.query(HistoryQuery())}
        assert rows[f"{1:016x}"]["prompt"] == "x" * history.MAX_PROMPT_CHARS
        assert rows[f"{1:016x}"]["answer"] == "hi"
        assert rows[f"{2:016x}"]["prompt"] is None
    finally:
        store.close()


def test_store_add_returns_while_the_writer_is_blocked(store: HistoryStore) -> None:
    blocker = sqlite3.connect(store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the writer waits on it
        for i in range(1000):
            store.add(record(i))
        assert store.queued == 1000
        assert store.written == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush()
    assert store.written == 1000
    assert store.queued == 0
    assert len(store.query(HistoryQuery(limit=1000))) == 1000


def test_store_drops_past_max_queued(store: HistoryStore, monkeypatch) -> None:
    monkeypatch.setattr(history, "MAX_QUEUED", 50)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        for i in range(60):
            store.add(record(i))
        assert store.queued == 50
        assert store.dropped == 10
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush()
    assert store.stats() == {"written": 50, "dropped": 10, "pruned": 0, "queued": 0}


def test_store_flush_waits_from_another_thread(store: HistoryStore) -> None:
    for i in range(2500):
        store.add(record(i))
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(store.flush(timeout=10)))
    waiter.start()
    waiter.join()
    assert results == [True]
    assert store.written == 2500


def test_store_usage_counts_each_request_once(store: HistoryStore) -> None:
    fill(
        store,
        [
            record(1, key_id="k1", tokens_in=10, tokens_out=20, energy_j=2.0),
            record(2, key_id="k1", status=500, tokens_in=1, tokens_out=0, latency_ms=5.0),
            # Entered here, served by b: b counts it.
            record(3, key_id="k1", kind=RecordKind.ROUTED, serving_node="b"),
            # Entered here, no node took it: counted here.
            record(4, key_id="k1", kind=RecordKind.ROUTED, serving_node="", status=503),
            # Entered at b, served here: counted here.
            record(5, key_id="k2", kind=RecordKind.SERVED, entry_node="b", model="llama"),
        ],
    )
    groups = store.usage(UsageQuery(since=T0, until=T0 + 100))
    assert groups == [
        {
            "key_id": "k1",
            "model": "gemma",
            "requests": 3,
            "errors": 2,
            "tokens_in": 14,
            "tokens_out": 25,
            "energy_j": 2.0,
            "latency_ms_sum": 25.0,
        },
        {
            "key_id": "k2",
            "model": "llama",
            "requests": 1,
            "errors": 0,
            "tokens_in": 3,
            "tokens_out": 5,
            "energy_j": None,
            "latency_ms_sum": 10.0,
        },
    ]


def test_store_usage_filters_and_period(store: HistoryStore) -> None:
    fill(
        store,
        [record(1, key_id="k1"), record(2, key_id="k2"), record(3, model="llama")],
    )
    assert [g["requests"] for g in store.usage(UsageQuery(key="k1"))] == [1]
    assert [g["model"] for g in store.usage(UsageQuery(model="llama"))] == ["llama"]
    assert [g["key_id"] for g in store.usage(UsageQuery(since=T0 + 2, until=T0 + 3))] == ["k2"]
    assert store.usage(UsageQuery(since=T0 + 10)) == []


def test_store_usage_buckets(store: HistoryStore) -> None:
    hour = 3600
    start = (T0 // hour) * hour
    fill(
        store,
        [
            record(1, time=start + 10),
            record(2, time=start + 20),
            record(3, time=start + hour + 5),
        ],
    )
    groups = store.usage(UsageQuery(since=start, bucket_s=hour))
    assert [(g["bucket"], g["requests"]) for g in groups] == [(start, 2), (start + hour, 1)]


def test_store_file_is_owner_only(store: HistoryStore) -> None:
    fill(store, [record(1)])
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    for suffix in ("-wal", "-shm"):
        side = Path(f"{store.path}{suffix}")
        if side.exists():
            assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0


def test_store_tightens_an_existing_file(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.touch(mode=0o644)
    db.chmod(0o644)
    store = make_store(db)
    store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_store_uses_wal(store: HistoryStore) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (history.SCHEMA_VERSION,)


def test_store_refuses_a_newer_schema(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {history.SCHEMA_VERSION + 1}")
    store = HistoryStore(db, node_id="a", retention_s=DAY)
    with pytest.raises(ConfigError, match="newer"):
        store.start()


def test_store_drops_only_the_row_sqlite_refuses(store: HistoryStore) -> None:
    fill(store, [record(1), record(2, error="lone \ud800 surrogate"), record(3)])
    assert sorted(ids(store.query(HistoryQuery()))) == [f"{i:016x}" for i in (1, 3)]
    assert store.stats() == {"written": 2, "dropped": 1, "pruned": 0, "queued": 0}


def test_store_queues_no_prompts_past_the_prompt_budget(db: Path, monkeypatch) -> None:
    monkeypatch.setattr(history, "MAX_QUEUED_PROMPT_CHARS", 25)
    store = make_store(db, log_prompts=True)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits: the prompts pile up
        for i in range(4):
            store.add(record(i, prompt="p" * 10))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        assert store.flush()
        prompts = {row["request_id"]: row["prompt"] for row in store.query(HistoryQuery())}
        assert [prompts[f"{i:016x}"] for i in range(4)] == ["p" * 10] * 3 + [None]
        store.add(record(9, prompt="again"))  # the backlog is written: prompts are kept again
        assert store.flush()
        assert store.query(HistoryQuery(limit=1))[0]["prompt"] == "again"
    finally:
        store.close()
