"""A node's request history in SQLite, written off the request path.

``add`` is called on the event loop for every request: it only converts the record
to a row and appends it to a queue, never touching the disk.  One writer thread
drains the queue in batches (one transaction each) and prunes rows past the
retention every ``PRUNE_INTERVAL_S``, in chunks, so the write lock is never held
long.  Reads (``query``, ``usage``) block, so callers run them in a thread; each
opens its own connection, and WAL lets them run beside the writer.

Dropped rows: when the writer falls ``MAX_QUEUED`` rows behind (a stuck disk),
``add`` drops new records instead of growing without bound, and past
``MAX_QUEUED_PROMPT_CHARS`` of waiting prompts it queues rows without them.  A
batch whose write fails (disk full, database locked past ``BUSY_TIMEOUT_MS``) is
dropped too; a row SQLite refuses (a lone surrogate) costs only itself.  Drops
count in ``dropped`` and are logged.

The database file is created mode 0600 (SQLite gives its ``-wal`` and ``-shm``
files the same mode): prompts, answers and key ids are private.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from meshllm.errors import ConfigError, MeshError
from meshllm.records.query import HistoryQuery, UsageQuery, status_bounds
from meshllm.records.record import RECORD_FIELDS, RequestRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # PRAGMA user_version of the schema below
MAX_QUEUED = 100_000  # rows waiting for the writer at most (a row is ~0.5 KB: ~50 MB)
MAX_PROMPT_CHARS = 64 * 1024  # characters of a prompt or answer kept, each
# Characters of prompts and answers waiting at most (~64-256 MB); past it a row is
# queued without them, since MAX_QUEUED rows of capped prompts would be ~13 GB.
MAX_QUEUED_PROMPT_CHARS = 64 * 1024 * 1024
BATCH_MAX = 1000  # rows in one write transaction: amortises the commit, bounds the lock
PRUNE_INTERVAL_S = 600.0  # how often the writer deletes rows past the retention
PRUNE_CHUNK = 5000  # rows deleted per transaction, so readers and writes interleave
BUSY_TIMEOUT_MS = 5000  # how long a write waits for a lock another process holds
FILE_MODE = 0o600  # the database holds prompts and key ids: owner only

COLUMNS = RECORD_FIELDS  # the table's, in order
"""The table's columns: ``RequestRecord``'s fields, in order."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    entry_node TEXT NOT NULL,
    serving_node TEXT NOT NULL,
    model TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    key_id TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    energy_j REAL,
    error TEXT NOT NULL,
    prompt TEXT,
    answer TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time, request_id);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model);
CREATE INDEX IF NOT EXISTS requests_key_id ON requests (key_id);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id);
"""
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_PRUNE = "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE time < ? LIMIT ?)"
# Each request is counted once mesh-wide: by the node that served it (record.py).
_COUNTED_ONCE = "(kind IN ('local', 'served') OR (kind = 'routed' AND serving_node = ''))"


class HistoryStore:
    """The request history of node ``node_id`` in the SQLite file at ``path``, keeping
    ``retention_s`` seconds of it; prompts and answers only with ``log_prompts``.
    ``clock`` and ``prune_interval_s`` are there for tests."""

    def __init__(
        self,
        path: Path,
        *,
        node_id: str,
        retention_s: float,
        log_prompts: bool = False,
        clock: Callable[[], float] = time.time,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self.retention_s = retention_s
        self.log_prompts = log_prompts
        self.written = 0
        self.pruned = 0
        self._clock = clock
        self._prune_interval_s = prune_interval_s
        self._queue: deque[tuple[Any, ...]] = deque()
        # Each counter has one writing thread: add()'s caller or the writer.
        self._accepted = 0  # rows add() queued
        self._done = 0  # rows the writer wrote or dropped
        self._prompt_chars_accepted = 0  # prompt and answer characters add() queued
        self._prompt_chars_done = 0  # those the writer took
        self._dropped_full = 0  # by add(), the queue full or the store closed
        self._dropped_failed = 0  # by the writer, a failed write
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._write_lock = threading.Lock()  # the write connection: writer and prune()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0
        self._closing = False
        self._closed = False

    @property
    def dropped(self) -> int:
        """Records never stored: the queue was full, the store closed, or a write failed."""
        return self._dropped_full + self._dropped_failed

    @property
    def queued(self) -> int:
        """Records added but not yet written (or dropped by a failed write)."""
        return self._accepted - self._done

    def stats(self) -> dict[str, int]:
        """The store's counters."""
        return {
            "written": self.written,
            "dropped": self.dropped,
            "pruned": self.pruned,
            "queued": self.queued,
        }

    def start(self) -> None:
        """Open (or create) the database, prune it once and start the writer; blocking."""
        if self._conn is not None:
            return
        if self._closed:
            raise MeshError("the history store is closed")
        self._conn = self._open_writer()
        self.prune(self._clock())
        self._next_prune = self._clock() + self._prune_interval_s
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._conn is not None:
            with self._write_lock:
                self._conn.close()

    def add(self, record: RequestRecord) -> None:
        """Queue ``record`` for the writer; never blocks.  Call it from one thread."""
        if self._closed or self._accepted - self._done >= MAX_QUEUED:
            self._dropped_full += 1
            if self._dropped_full == 1 or self._dropped_full % MAX_QUEUED == 0:
                log.warning(
                    "history: %d records dropped (writer behind or closed)", self._dropped_full
                )
            return
        row = self._row(record)
        self._queue.append(row)
        self._accepted += 1
        self._prompt_chars_accepted += _prompt_chars(row)
        self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record added before the call is written; False on timeout."""
        target = self._accepted
        with self._progress:
            return self._progress.wait_for(lambda: self._done >= target, timeout)

    def prune(self, now: float) -> int:
        """Delete the rows older than the retention at ``now``; blocking.  Returns how many."""
        if self._conn is None:
            raise MeshError("the history store is not started")
        cutoff = now - self.retention_s
        deleted = 0
        with self._write_lock:
            while True:  # each DELETE commits on its own (autocommit)
                count = self._conn.execute(_PRUNE, (cutoff, PRUNE_CHUNK)).rowcount
                deleted += count
                if count < PRUNE_CHUNK:
                    break
            self.pruned += deleted
        return deleted

    def query(self, q: HistoryQuery) -> list[dict[str, Any]]:
        """The rows ``q`` asks for, newest first (``RequestRecord.to_dict()``'s shape);
        blocking."""
        where, args = _history_filters(q)
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM requests{_where(where)}"
            " ORDER BY time DESC, request_id DESC LIMIT ?"
        )
        with self._reader() as conn:
            rows = conn.execute(sql, [*args, q.limit]).fetchall()
        return [_row_dict(row) for row in rows]

    def usage(self, q: UsageQuery) -> list[dict[str, Any]]:
        """Usage groups by key, model (and time bucket) of the requests this node counts;
        blocking."""
        where, args = [_COUNTED_ONCE], []
        for clause, value in (
            ("time >= ?", q.since),
            ("time < ?", q.until),
            ("model = ?", q.model),
            ("key_id = ?", q.key),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        group = ["key_id", "model"]
        bucket = ""
        if q.bucket_s is not None:
            bucket = "CAST(time / ? AS INTEGER) * ? AS bucket, "
            group.insert(0, "bucket")
            args = [q.bucket_s, q.bucket_s, *args]
        sql = (
            f"SELECT {bucket}key_id, model, COUNT(*) AS requests,"
            " SUM(status >= 400) AS errors, SUM(tokens_in) AS tokens_in,"
            " SUM(tokens_out) AS tokens_out, SUM(energy_j) AS energy_j,"
            " SUM(latency_ms) AS latency_ms_sum"
            f" FROM requests{_where(where)}"
            f" GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}"
        )
        with self._reader() as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, args)]

    def _row(self, record: RequestRecord) -> tuple[Any, ...]:
        prompt = answer = None
        backlog = self._prompt_chars_accepted - self._prompt_chars_done
        if self.log_prompts and backlog < MAX_QUEUED_PROMPT_CHARS:
            prompt = None if record.prompt is None else record.prompt[:MAX_PROMPT_CHARS]
            answer = None if record.answer is None else record.answer[:MAX_PROMPT_CHARS]
        return (
            record.request_id,
            record.time,
            str(record.kind),
            record.entry_node,
            record.serving_node,
            record.model,
            record.path,
            record.status,
            record.latency_ms,
            record.ttft_ms,
            record.key_id,
            record.tokens_in,
            record.tokens_out,
            int(record.stream),
            record.energy_j,
            record.error,
            prompt,
            answer,
        )

    def _open_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file 0600 before SQLite does (it would use the umask), and tighten
        # one left by an older version.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, FILE_MODE))
        os.chmod(self.path, FILE_MODE)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the history database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the history database {self.path} has schema {version}, newer than this"
                    f" meshllm's {SCHEMA_VERSION}: upgrade meshllm or move the file away"
                )
            conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(f"cannot open the history database {self.path}: {exc}") from exc
        except ConfigError:
            conn.close()
            raise
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise MeshError("the history store is not started")
        with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            yield conn

    def _run(self) -> None:
        """The writer thread: write what is queued, prune when due, until closed."""
        while True:
            wait_s = max(0.0, min(self._next_prune - self._clock(), self._prune_interval_s))
            self._wake.wait(timeout=wait_s)
            self._wake.clear()
            closing_now = self._closing  # read before draining: what is queued gets written
            self._prune_if_due()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
                # The clock is read after the batch is taken, so a test that moves it
                # and then adds a row sees the prune done when flush() returns.
                self._prune_if_due()
                self._write(batch)
            if closing_now:
                return

    def _prune_if_due(self) -> None:
        now = self._clock()
        if now < self._next_prune:
            return
        self._next_prune = now + self._prune_interval_s
        try:
            count = self.prune(now)
        except sqlite3.Error as exc:
            log.warning("history: pruning failed: %s", exc)
            return
        if count:
            log.debug("history: pruned %d rows older than %.0f s", count, self.retention_s)

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        """Insert ``batch`` in one transaction; a row SQLite refuses costs only itself."""
        try:
            self._insert(batch)
            written = len(batch)
        except sqlite3.OperationalError as exc:  # the database itself: locked, full, I/O
            written = 0
            log.warning("history: %d records dropped, the write failed: %s", len(batch), exc)
        except Exception:  # a bad row (a lone surrogate, an int past 64 bits): try each
            written = sum(self._insert_one(row) for row in batch)
        self.written += written
        self._dropped_failed += len(batch) - written
        self._prompt_chars_done += sum(_prompt_chars(row) for row in batch)
        with self._progress:
            self._done += len(batch)
            self._progress.notify_all()

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        assert self._conn is not None
        with self._write_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_INSERT, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back already
                    self._conn.execute("ROLLBACK")
                raise

    def _insert_one(self, row: tuple[Any, ...]) -> bool:
        try:
            self._insert([row])
        except Exception as exc:
            log.warning("history: record %s dropped, the write failed: %s", row[0], exc)
            return False
        return True


def _history_filters(q: HistoryQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (
        ("model = ?", q.model),
        ("key_id = ?", q.key),
        ("kind = ?", None if q.kind is None else str(q.kind)),
        ("time >= ?", q.since),
        ("time < ?", q.until),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    if q.node is not None:
        where.append("(entry_node = ? OR serving_node = ?)")
        args += [q.node, q.node]
    if q.status is not None:
        low, high = status_bounds(q.status)
        if low is not None:
            where.append("status >= ?")
            args.append(low)
        if high is not None:
            where.append("status < ?")
            args.append(high)
    if q.search is not None:
        fields = ("model", "path", "error", "request_id")
        where.append("(" + " OR ".join(f"instr(lower({f}), lower(?)) > 0" for f in fields) + ")")
        args += [q.search] * len(fields)
    if q.before is not None:
        where.append("(time, request_id) < (?, ?)")
        args += list(q.before)
    return where, args


def _prompt_chars(row: tuple[Any, ...]) -> int:
    prompt, answer = row[-2:]
    return (0 if prompt is None else len(prompt)) + (0 if answer is None else len(answer))


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(COLUMNS, row, strict=True))
    record["stream"] = bool(record["stream"])
    return record
