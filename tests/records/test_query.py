"""History and usage queries: parsing, cursors, the mesh-wide merge and CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from meshllm.records.query import (
    CSV_FIELDS,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_PARAM_CHARS,
    HistoryQuery,
    UsageQuery,
    decode_cursor,
    encode_cursor,
    merge_history,
    merge_usage,
    parse_history_query,
    parse_time,
    parse_usage_query,
    status_bounds,
    to_csv,
)
from meshllm.records.record import RecordKind, RequestRecord

NOW = 1_700_000_000.0


def row(rid: str, time: float, kind: str = "local", **fields) -> dict:
    """A history row of request ``rid`` as node ``a`` (entry) or ``b`` (serving) has it."""
    values = {
        "request_id": rid,
        "time": time,
        "kind": RecordKind(kind),
        "entry_node": "a",
        "serving_node": "b" if kind != "local" else "a",
        "model": "gemma",
        "path": "/v1/chat/completions",
        "status": 200,
        "latency_ms": 10.0,
    }
    values.update(fields)
    return RequestRecord(**values).to_dict()


# --- parsing -------------------------------------------------------------------------


def test_parse_history_query_defaults() -> None:
    assert parse_history_query({}, NOW) == HistoryQuery()
    assert HistoryQuery().limit == DEFAULT_LIMIT


def test_parse_history_query_every_param() -> None:
    cursor = encode_cursor(NOW - 5, "00000000000000ab")
    q = parse_history_query(
        {
            "model": "gemma",
            "node": "b",
            "key": "k1",
            "status": "5xx",
            "since": "1h",
            "until": "15m",
            "search": "Timeout",
            "limit": "50",
            "cursor": cursor,
            "kind": "routed",
        },
        NOW,
    )
    assert q == HistoryQuery(
        model="gemma",
        node="b",
        key="k1",
        status="5xx",
        since=NOW - 3600,
        until=NOW - 900,
        search="Timeout",
        limit=50,
        before=(NOW - 5, "00000000000000ab"),
        kind=RecordKind.ROUTED,
    )


def test_parse_history_query_empty_param_is_absent() -> None:
    assert parse_history_query({"model": "", "status": ""}, NOW) == HistoryQuery()


def test_parse_history_query_ignores_what_the_caller_handles() -> None:
    assert parse_history_query({"format": "csv"}, NOW, ignore={"format"}) == HistoryQuery()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"colour": "red"}, "unknown parameter.*'colour'"),
        ({"limit": "0"}, "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"status": "6xx"}, "status"),
        ({"status": "bad"}, "status"),
        ({"status": "20"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
        ({"since": "-5"}, "since"),
        ({"since": "1h", "until": "2h"}, "before until"),
        ({"kind": "proxied"}, "kind"),
        ({"cursor": "!!!"}, "cursor"),
        ({"model": "m" * (MAX_PARAM_CHARS + 1)}, "longer than"),
    ],
)
def test_parse_history_query_refuses(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_history_query(params, NOW)


def test_parse_history_query_bounds_unknown_names_in_the_message() -> None:
    params = {f"{'x' * 1000}{i}": "1" for i in range(50)}
    with pytest.raises(ValueError) as raised:
        parse_history_query(params, NOW)
    assert len(str(raised.value)) < 500
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        ("1699999999.5", 1_699_999_999.5),
        ("90s", NOW - 90),
        ("15m", NOW - 900),
        ("1h", NOW - 3600),
        ("7d", NOW - 7 * 86400),
        ("1h30m", NOW - 5400),
        ("1.5h", NOW - 5400),
        ("2w", NOW - 14 * 86400),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("2023-11-14", datetime(2023, 11, 14, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "1x", "h", "inf", "-1h", "1h-2m", "2023-13-01"])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text, NOW)


@pytest.mark.parametrize(
    ("spec", "bounds"),
    [
        ("200", (200, 201)),
        ("404", (404, 405)),
        ("4xx", (400, 500)),
        ("5xx", (500, 600)),
        ("error", (400, None)),
        ("ok", (None, 400)),
    ],
)
def test_status_bounds(spec: str, bounds: tuple) -> None:
    assert status_bounds(spec) == bounds


def test_history_query_checks_itself() -> None:
    with pytest.raises(ValueError, match="limit"):
        HistoryQuery(limit=MAX_LIMIT + 1)
    with pytest.raises(ValueError, match="status"):
        HistoryQuery(status="teapot")


def test_parse_usage_query() -> None:
    assert parse_usage_query({}, NOW) == UsageQuery(since=NOW - 86400)
    assert parse_usage_query(
        {"since": "7d", "until": "1d", "model": "gemma", "key": "k1", "bucket": "hour"}, NOW
    ) == UsageQuery(
        since=NOW - 7 * 86400, until=NOW - 86400, model="gemma", key="k1", bucket_s=3600
    )
    assert parse_usage_query({"bucket": "60"}, NOW).bucket_s == 60
    assert parse_usage_query({"bucket": "day"}, NOW).bucket_s == 86400


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bucket": "120"}, "bucket"),
        ({"bucket": "week"}, "bucket"),
        ({"status": "200"}, "unknown parameter"),
        ({"since": "soon"}, "since"),
    ],
)
def test_parse_usage_query_refuses(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_usage_query(params, NOW)


def test_usage_query_checks_its_bucket() -> None:
    with pytest.raises(ValueError, match="bucket"):
        UsageQuery(bucket_s=7)


# --- cursors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time", "rid"), [(NOW + 0.123456789, "0123456789abcdef"), (0.0, "x"), (1e-7, "a:b")]
)
def test_cursor_round_trip(time: float, rid: str) -> None:
    text = encode_cursor(time, rid)
    assert text.replace("-", "").replace("_", "").isalnum()
    assert decode_cursor(text) == (time, rid)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a cursor",
        "abc=",
        "////",
        encode_cursor(1.0, "x")[:-3] + "~",
        "bm9jb2xvbg",  # "nocolon"
        "bmFuOnJpZA",  # "nan:rid"
        "MS4wOg",  # "1.0:" (no request id)
        "_-_-",  # not UTF-8
    ],
)
def test_cursor_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(text)


# --- merging ---------------------------------------------------------------------------


def test_merge_history_joins_a_routed_and_served_pair() -> None:
    routed = row("r1", NOW, "routed", ttft_ms=50.0, key_id="k1")
    served = row("r1", NOW + 0.01, "served", ttft_ms=40.0, tokens_in=7, tokens_out=9)
    served["energy_j"] = 3.5
    rows, cursor = merge_history([[routed], [served]], limit=10)
    assert cursor is None
    assert rows == [
        {
            **routed,
            "tokens_in": 7,
            "tokens_out": 9,
            "energy_j": 3.5,
            "seen_by": ["a", "b"],
        }
    ]
    assert rows[0]["ttft_ms"] == 50.0  # what the client saw, from the entry node


def test_merge_history_keeps_the_routed_rows_own_facts() -> None:
    routed = row("r1", NOW, "routed", tokens_in=4, tokens_out=2)
    served = row("r1", NOW, "served", tokens_in=7, tokens_out=9)
    rows, _ = merge_history([[served], [routed]], limit=10)
    assert (rows[0]["kind"], rows[0]["tokens_in"], rows[0]["tokens_out"]) == ("routed", 4, 2)


def test_merge_history_sorts_newest_first_and_marks_single_rows() -> None:
    a = [row("a3", NOW + 3), row("a1", NOW + 1)]
    b = [row("b2", NOW + 2, "served", entry_node="c"), row("b0", NOW)]
    rows, cursor = merge_history([a, b], limit=10)
    assert [r["request_id"] for r in rows] == ["a3", "b2", "a1", "b0"]
    assert [r["seen_by"] for r in rows] == [["a"], ["b"], ["a"], ["a"]]
    assert cursor is None


def test_merge_history_cuts_at_the_limit() -> None:
    a = [row(f"a{i}", NOW + i) for i in (9, 7, 5)]
    b = [row(f"b{i}", NOW + i) for i in (8, 6)]
    rows, cursor = merge_history([a, b], limit=3)
    assert [r["request_id"] for r in rows] == ["a9", "b8", "a7"]
    assert cursor is not None
    assert decode_cursor(cursor) == (NOW + 7, "a7")


def test_merge_history_stops_where_a_full_page_stops() -> None:
    # a's page is full: a may have rows between NOW + 5 and NOW + 1 it did not send.
    a = [row(f"a{i}", NOW + i) for i in (9, 5)]
    b = [row("b8", NOW + 8), row("b1", NOW + 1)]
    rows, cursor = merge_history([a, b], limit=2)
    assert [r["request_id"] for r in rows] == ["a9", "b8"]
    assert cursor is not None
    assert decode_cursor(cursor) == (NOW + 8, "b8")
    rows, cursor = merge_history([a, b[:1]], limit=3)
    assert [r["request_id"] for r in rows] == ["a9", "b8", "a5"]
    assert cursor is None
    rows, cursor = merge_history([a, b], limit=4)
    assert [r["request_id"] for r in rows] == ["a9", "b8", "a5", "b1"]
    assert cursor is None


def test_merge_history_skips_to_the_boundary_when_clocks_disagree() -> None:
    # Both pages full; the served row is b's last, but its request sorts by a's earlier
    # time, past b's page: b may hold unsent rows between the two, so none is shown yet.
    routed = row("r1", NOW, "routed")
    served = row("r1", NOW + 0.5, "served")
    rows, cursor = merge_history([[routed], [served]], limit=1)
    assert rows == []
    assert cursor is not None
    assert decode_cursor(cursor) == (NOW + 0.5, "r1")


def test_merge_history_pages_through_two_nodes() -> None:
    """Paging the merge the way a client does visits every request once."""
    node_a = [row(f"a{i:03}", NOW + i) for i in range(0, 300, 2)]
    node_b = [row(f"b{i:03}", NOW + i) for i in range(1, 300, 3)]
    # Requests entered at a and served at b: one row each end.
    pairs = [(row(f"p{i:03}", NOW + i + 0.5, "routed"), i) for i in range(0, 300, 7)]
    node_a += [p for p, _ in pairs]
    # The serving node's clock reads it a little later.
    node_b += [row(p["request_id"], NOW + i + 0.6, "served", tokens_out=1) for p, i in pairs]
    nodes = [
        sorted(n, key=lambda r: (r["time"], r["request_id"]), reverse=True)
        for n in (node_a, node_b)
    ]

    def page(rows: list[dict], before: tuple | None, limit: int) -> list[dict]:
        return [r for r in rows if before is None or (r["time"], r["request_id"]) < before][:limit]

    seen: list[dict] = []
    cursor = None
    for _ in range(100):
        before = None if cursor is None else decode_cursor(cursor)
        rows, cursor = merge_history([page(n, before, 25) for n in nodes], limit=25)
        seen += rows
        if cursor is None:
            break
    expected = {r["request_id"] for n in nodes for r in n}
    assert len(seen) == len(expected)
    assert {r["request_id"] for r in seen} == expected
    assert all(r["tokens_out"] == 1 for r in seen if r["request_id"].startswith("p"))
    assert seen == sorted(seen, key=lambda r: (r["time"], r["request_id"]), reverse=True)


def test_merge_history_of_nothing() -> None:
    assert merge_history([], limit=10) == ([], None)
    assert merge_history([[], []], limit=10) == ([], None)


def test_merge_usage_sums_matching_groups() -> None:
    a = [
        {"key_id": "k1", "model": "gemma", "requests": 2, "errors": 1, "tokens_in": 10,
         "tokens_out": 20, "energy_j": None, "latency_ms_sum": 30.0},
        {"key_id": "k2", "model": "gemma", "requests": 1, "errors": 0, "tokens_in": 1,
         "tokens_out": 1, "energy_j": 1.0, "latency_ms_sum": 5.0},
    ]  # fmt: skip
    b = [
        {"key_id": "k1", "model": "gemma", "requests": 3, "errors": 0, "tokens_in": 5,
         "tokens_out": 5, "energy_j": 2.5, "latency_ms_sum": 15.0},
    ]  # fmt: skip
    assert merge_usage([a, b]) == [
        {"key_id": "k1", "model": "gemma", "requests": 5, "errors": 1, "tokens_in": 15,
         "tokens_out": 25, "energy_j": 2.5, "latency_ms_sum": 45.0},
        a[1],
    ]  # fmt: skip
    assert a[0]["requests"] == 2  # the inputs are left alone


def test_merge_usage_keeps_buckets_apart() -> None:
    def group(bucket: int, requests: int) -> dict:
        return {"bucket": bucket, "key_id": "", "model": "m", "requests": requests,
                "errors": 0, "tokens_in": 0, "tokens_out": 0, "energy_j": None,
                "latency_ms_sum": 0.0}  # fmt: skip

    merged = merge_usage([[group(3600, 1), group(0, 2)], [group(3600, 4)]])
    assert [(g["bucket"], g["requests"]) for g in merged] == [(0, 2), (3600, 5)]
    assert merged[1]["energy_j"] is None


# --- CSV -------------------------------------------------------------------------------


def test_to_csv_reads_back() -> None:
    tricky = 'backend said "no", then\nhung up, twice\r\n'
    rows = [
        {**row("r1", NOW, error=tricky, ttft_ms=None), "seen_by": ["a", "b"]},
        row("r2", NOW - 1, key_id="k,1"),
    ]
    text = to_csv(rows)
    read = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(read[0]) == list(CSV_FIELDS)
    assert read[0]["error"] == tricky
    assert read[0]["ttft_ms"] == ""
    assert read[0]["seen_by"] == "a b"
    assert float(read[0]["time"]) == NOW
    assert read[1]["key_id"] == "k,1"
    assert read[1]["seen_by"] == ""


def test_to_csv_adds_prompts_only_when_present() -> None:
    assert "prompt" not in to_csv([row("r1", NOW)]).splitlines()[0]
    text = to_csv([row("r1", NOW, prompt='{"messages": []}'), row("r2", NOW)])
    read = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(read[0])[-2:] == ["prompt", "answer"]
    assert read[0]["prompt"] == '{"messages": []}'
    assert read[1]["prompt"] == ""


def test_to_csv_of_nothing_is_a_header() -> None:
    assert to_csv([]).strip() == ",".join(CSV_FIELDS)
