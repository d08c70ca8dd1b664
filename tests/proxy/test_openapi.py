"""``GET /openapi.json`` is true to the node's HTTP API.

(a) its paths and methods are exactly the routes ``create_app`` registers, and a live
node serves it; (b) it validates as OpenAPI 3.1, and says who may call what as
``meshllm.proxy.access`` does; (c) schemathesis runs live nodes against it (real
daemons: one fronting a fake OpenAI backend with ``--endpoint``, with a peer, and one
alone serving nothing, whose /v1 and Ollama inference routes answer 404 and 503): no 5xx
(but the idle node's 503), documented status codes, content types, headers, bodies, SSE
events and NDJSON lines, admin routes refusing a missing or wrong token, 405 for
undocumented methods.  The never-ending ``/api/events`` stream is left to a test that
reads its first event, ``POST /api/endpoints`` (it stores and polls a server for every
URL it is given) to a test that adds one and removes it, ``POST /api/keys`` (on the node
with the mesh owner key, every valid body is a real key) to the peer, which has none,
and to a test that makes keys, uses and revokes them, and what a node shows of its peer
to a test that reads the peer's views.  Ollama's and Anthropic's routes are fuzzed too,
but a fuzzed request names no model the mesh has (they never fall back to another: 404,
or 400), so tests use them with the node's model, whole, streamed and refused.  A last
test reads the runs' requests in the history, the usage and the metrics.  Bounded and
seeded: ``EXAMPLES_PER_OPERATION`` fuzzed cases per operation, plus schemathesis'
coverage cases.  Every process started here is ended by pid, in the fixtures.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from meshllm import __version__
from meshllm.config import Config
from meshllm.proxy import anthropic_surface, create_app, ollama_surface
from meshllm.proxy.access import (
    INFERENCE_PATHS,
    OPEN_PATHS,
    OPEN_PREFIXES,
    READ_ONLY_PATHS,
    READ_ONLY_POSTS,
)
from meshllm.proxy.guard import GuardSettings
from meshllm.proxy.openapi import (
    ADMIN_SCHEME,
    API_KEY_HEADER_SCHEME,
    API_KEY_SCHEME,
    openapi_spec,
)
from meshllm.proxy.routes import MODEL_HEADER
from meshllm.records.query import CSV_FIELDS
from meshllm.testing.cluster import BackendProcess, Cluster, NodeProcess, wait_for

MODEL = "openapi-model"
METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
EXAMPLES_PER_OPERATION = 25
SEED = 20_240_601
NDJSON = ollama_surface.NDJSON_HEADERS["Content-Type"]


def ndjson_lines_conform(ctx: Any, response: Any, case: Any) -> bool | None:
    """Each line of an NDJSON answer (Ollama's streams, whose bodies schemathesis does
    not read) is what the spec says a line of that answer is."""
    if not response.headers.get("content-type", [""])[0].startswith(NDJSON):
        return None
    spec = openapi_spec(__version__)
    answer = spec["paths"][case.operation.path][case.method.lower()]["responses"]
    validator = spec_validator(answer[str(response.status_code)]["content"][NDJSON]["schema"])
    *lines, _ = response.content.split(b"\n")  # last: b"" after a whole stream
    for line in lines:
        errors = [error.message for error in validator.iter_errors(json.loads(line))]
        assert not errors, f"{line!r}: {errors}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    unsupported_method,
    missing_required_header,
    ndjson_lines_conform,
]


def spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


# --- (a) the document lists the app's routes ---------------------------------------------------


def test_spec_lists_exactly_the_apps_routes() -> None:
    # The app as the node builds it; the proxy, event, fleet, key and records routes only
    # keep the mesh, the event source, the fleet, the keys and the records, never call them
    # here.
    app = create_app(
        SimpleNamespace(node_id="n", admin_token=""),  # type: ignore[arg-type]
        object(),  # type: ignore[arg-type]
        GuardSettings.from_config(Config()),
        events=SimpleNamespace(),  # type: ignore[arg-type]
        fleet=SimpleNamespace(),  # type: ignore[arg-type]
        keys=SimpleNamespace(),  # type: ignore[arg-type]
        records=SimpleNamespace(),  # type: ignore[arg-type]
    )
    routes = {(r.resource.canonical, r.method) for r in app.router.routes() if r.resource}
    # aiohttp answers HEAD for every GET route (RFC 9110: GET without the body); the spec
    # leaves HEAD implied.
    heads = {(path, "GET") for path, method in routes if method == "HEAD"}
    gets = {(path, method) for path, method in routes if method == "GET"}
    assert heads == gets
    assert spec_operations(openapi_spec(__version__)) == {r for r in routes if r[1] != "HEAD"}


def test_spec_is_a_new_document_each_call() -> None:
    spec = openapi_spec("9.9.9")
    assert spec["info"]["version"] == "9.9.9"
    spec["paths"].clear()
    spec["components"]["schemas"]["Error"]["required"].append("x")
    again = openapi_spec("9.9.9")
    assert "/health" in again["paths"]
    assert again["components"]["schemas"]["Error"]["required"] == ["error"]


# --- (b) it is valid OpenAPI 3.1 ---------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_spec_is_valid_openapi_3_1() -> None:
    spec = openapi_spec(__version__)
    assert spec["openapi"].startswith("3.1.")
    # Raises on a document the OpenAPI 3.1 meta-schema rejects.
    schemathesis.openapi.from_dict(openapi_spec(__version__)).validate()
    # The meta-schema leaves Schema Objects alone: each is JSON Schema 2020-12.
    for name, schema in spec["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    for ref in set(_refs(spec)):
        target: Any = spec
        assert ref.startswith("#/"), ref
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"unresolved {ref}"
            target = target[part]
    # Who may call what (meshllm/proxy/access.py): the admin routes, and only they, need
    # the admin token or an admin key; the read-only pages (Ollama's POST /api/show too)
    # and inference (Ollama's too) are open to this machine (inference while the node has
    # no key), else need a key; /health is open.
    security = {
        (path, method.upper()): operation.get("security")
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }
    keys = [{API_KEY_SCHEME: []}, {API_KEY_HEADER_SCHEME: []}]
    admin = {op for op, needs in security.items() if needs == [{ADMIN_SCHEME: []}, *keys]}
    assert admin == {
        ("/api/token", "GET"),
        ("/api/drop", "POST"),
        ("/api/models/{name}/{action}", "POST"),
        ("/api/endpoints", "POST"),
        ("/api/endpoints/{id}", "DELETE"),
        ("/api/keys", "GET"),
        ("/api/keys", "POST"),
        ("/api/keys/{id}", "DELETE"),
        ("/api/history", "GET"),
        ("/api/usage", "GET"),
    }
    inference = {
        op
        for op in security
        if op[1] == "POST" and (op[0].startswith("/v1/") or op[0] in INFERENCE_PATHS)
    }
    keyed = {op for op, needs in security.items() if needs == [{}, *keys]}
    read_only = {(path, "GET") for path in READ_ONLY_PATHS}
    assert keyed == read_only | {(path, "POST") for path in READ_ONLY_POSTS} | inference
    # Open: /health and the dashboard (its page and files, which hold no data).
    open_ops = {(path, "GET") for path in OPEN_PATHS} | {
        (prefix + "{name}", "GET") for prefix in OPEN_PREFIXES
    }
    assert {op for op, needs in security.items() if needs is None} == open_ops
    assert set(security) == admin | keyed | open_ops
    # Where a key is needed, a missing or bad one is a 401 that says how to send one, in
    # the shape of the route's API: Ollama's and Anthropic's inference routes (the
    # surfaces create_app gives the access check) their own, every other route OpenAI's.
    apis = {
        **dict.fromkeys(ollama_surface.SURFACES, "Ollama"),
        **dict.fromkeys(anthropic_surface.SURFACES, "Anthropic"),
    }
    assert {(path, "POST") for path in apis} <= inference
    responses = spec["components"]["responses"]
    for path, method in keyed:
        name = f"{apis[path]}KeyRequired" if path in apis else "KeyRequired"
        assert spec["paths"][path][method.lower()]["responses"]["401"] == {
            "$ref": f"#/components/responses/{name}"
        }, (path, method)
        assert responses[name]["headers"]["WWW-Authenticate"]["required"] is True
    # A surface's route answers its own refusals in its API's error shape; the guard's and
    # the body limits' are OpenAI's on every route, so a 403 or a 503 may be either.
    openai = {"$ref": "#/components/schemas/Error"}
    for path, api in apis.items():
        own = {"$ref": f"#/components/schemas/{api}Error"}
        for status, response in spec["paths"][path]["post"]["responses"].items():
            if status == "200":
                continue
            if "$ref" in response:
                response = responses[response["$ref"].rsplit("/", 1)[1]]
            expected = {
                "403": {"oneOf": [own, openai]},
                "413": openai,
                "415": openai,
                "421": openai,
                "503": {"oneOf": [own, openai]},
            }.get(status, own)
            assert response["content"]["application/json"]["schema"] == expected, (path, status)


# --- live nodes ---------------------------------------------------------------------------------


def wait_models(node: NodeProcess, warm: set[str]) -> None:
    wait_for(
        lambda: {m["id"] for m in node.get("/v1/models")["data"] if m["meshllm"]["warm"]} == warm,
        30,
        what=f"{sorted(warm)} warm on {node.state_dir.name}",
    )


@pytest.fixture(scope="module")
def live_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Two real daemons in one mesh: one fronting a fake OpenAI backend serving ``MODEL``,
    and a peer serving nothing (what a node shows of a peer is in the spec too)."""
    root: Path = tmp_path_factory.mktemp("openapi")
    backend = BackendProcess(root / "backend.log", [MODEL]).start()
    try:
        with Cluster(root) as cluster:
            node = cluster.add("--endpoint", backend.url)
            peer = cluster.add()
            wait_for(cluster.converged, 30, what="the two nodes meeting")
            wait_models(node, {MODEL})
            yield [node, peer]
    finally:
        backend.kill()


@pytest.fixture(scope="module")
def live_node(live_mesh: list[NodeProcess]) -> NodeProcess:
    return live_mesh[0]


@pytest.fixture(scope="module")
def live_peer(live_mesh: list[NodeProcess]) -> NodeProcess:
    return live_mesh[1]


@pytest.fixture(scope="module")
def idle_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A real daemon alone in its mesh, with no model anywhere: /v1 answers 404 and 503."""
    with Cluster(tmp_path_factory.mktemp("openapi-idle")) as cluster:
        node = cluster.add()
        wait_models(node, set())
        yield node


def test_live_node_serves_the_spec(live_node: NodeProcess) -> None:
    with urllib.request.urlopen(live_node.url + "/openapi.json", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        assert json.loads(resp.read()) == openapi_spec(__version__)
    # Every documented operation is routed (none is a 404 or 405 of the router; a path
    # parameter gets a plain value) ...
    for path, method in sorted(spec_operations(openapi_spec(__version__))):
        body = b"{}" if method == "POST" else None
        url = live_node.url + re.sub(r"\{\w+\}", "x", path)
        request = urllib.request.Request(url, body, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read())
            error = payload["error"]  # OpenAI's {"code", ...}; Ollama's a string; Anthropic's
            code = error.get("code") if isinstance(error, dict) else None  # has no code
            assert code not in ("404", "405"), (method, path, payload)
        assert status < 500, (method, path, status)
    # ... and a path the spec does not list is not found, in OpenAI's error shape.
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(live_node.url + "/api/nothing-here", timeout=10)
    assert missing.value.code == 404
    assert set(json.loads(missing.value.read())["error"]) == {"message", "type", "code"}


# --- (c) schemathesis against live nodes ----------------------------------------------------------


def load_schema(node: NodeProcess) -> schemathesis.BaseSchema:
    """``node``'s /openapi.json, set for a bounded, seeded run that can pass the admin token."""
    admin_token = (node.state_dir / "admin_token").read_text().strip()
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": node.url,
            "request-timeout": 30,
            "generation": {
                # Negative cases too: a wrong body must get a 4xx, never a 5xx.  Not checked:
                # that it is refused (negative_data_rejection), as the proxy passes fields
                # it does not read on to the backend.
                "mode": "all",
                "max-examples": EXAMPLES_PER_OPERATION,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            # /api/drop and /api/token get the real admin token (ignored_auth sends a
            # missing and a wrong one too).  No example names MODEL, so no drop stops it.
            "auth": {"openapi": {ADMIN_SCHEME: {"bearer": admin_token}}},
        }
    )
    return schemathesis.openapi.from_url(node.url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def live_schema(live_node: NodeProcess) -> schemathesis.BaseSchema:
    return load_schema(live_node)


@pytest.fixture(scope="module")
def idle_schema(idle_node: NodeProcess) -> schemathesis.BaseSchema:
    return load_schema(idle_node)


@pytest.fixture(scope="module")
def peer_schema(live_peer: NodeProcess) -> schemathesis.BaseSchema:
    return load_schema(live_peer)


# `path_regex` selects every operation: without it, /openapi.json itself is left out.
# /api/events never ends (a ping every 15 s keeps it open), so a client reading it whole
# waits forever: test_live_event_stream_conforms reads its first event instead.  With the
# admin token, POST /api/endpoints really adds what it is given: each valid URL would be
# stored, polled and announced for the rest of the run (random hosts; past 16 of them the
# announcement no longer signs), so test_live_endpoint_changes_conform adds one and
# removes it instead.  DELETE stays in: no fuzzed id names the node's endpoint.  The live
# node started the mesh, so it holds the mesh owner key: POST /api/keys would really make
# every key it is given, and one key is enough for inference to need one.  So the peer,
# which lacks the owner key, is fuzzed there (it refuses all: 403, or 400), and
# test_live_keys_conform makes keys on the live node and revokes them.  DELETE stays in:
# no fuzzed id names a key.
live = (
    schemathesis.pytest.from_fixture("live_schema")
    .include(path_regex="^/")
    .exclude(path="/api/events")
    .exclude(path="/api/endpoints", method="POST")
    .exclude(path="/api/keys", method="POST")
)
# The idle node's /v1 and Ollama inference routes: with no model anywhere, 404 or 503.
idle = schemathesis.pytest.from_fixture("idle_schema").include(
    path_regex="^/(v1/|api/(chat|generate|embed|embeddings)$)"
)
peer = schemathesis.pytest.from_fixture("peer_schema").include(path="/api/keys", method="POST")


@live.parametrize()
def test_live_node_conforms_to_the_spec(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def no_server_error_but_unavailable(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, but for 503: a node serving nothing answers it, with
    ``Retry-After`` (response_headers_conformance checks that header)."""
    if response.status_code == 503:
        return None
    return not_a_server_error(ctx, response, case)


IDLE_CHECKS = [no_server_error_but_unavailable, *CHECKS[1:]]


@idle.parametrize()
def test_idle_node_conforms_to_the_spec(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=IDLE_CHECKS)


@peer.parametrize()
def test_node_without_the_owner_key_conforms_to_the_spec(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def spec_validator(schema: dict[str, Any]) -> Any:
    """A validator for ``schema``, whose ``$ref``s point into the spec's components."""
    spec = openapi_spec(__version__)
    return jsonschema_rs.validator_for({**schema, "components": spec["components"]})


def test_live_event_stream_conforms(live_node: NodeProcess) -> None:
    # The stream opens with one snapshot event: an event the spec describes, whose data
    # is a MeshEvent.
    spec = openapi_spec(__version__)
    content = spec["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
    event_schema = content["text/event-stream"]["schema"]
    with urllib.request.urlopen(live_node.url + "/api/events", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = []
        while (line := resp.readline().decode()) not in ("\n", ""):
            lines.append(line.rstrip("\n"))
    fields = dict(line.split(": ", 1) for line in lines)
    spec_validator(event_schema).validate(fields)
    data = json.loads(fields["data"])
    spec_validator({"$ref": "#/components/schemas/MeshEvent"}).validate(data)
    assert fields["event"] == data["type"] == "snapshot"


def documented(
    method: str, path: str, status: int, body: Any, media_type: str = "application/json"
) -> None:
    """``body`` is what the spec says ``method path`` answers with ``status`` (as
    ``media_type``: for a stream, ``body`` is one line or event of it)."""
    spec = openapi_spec(__version__)
    response = spec["paths"][path][method.lower()]["responses"][str(status)]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    spec_validator(response["content"][media_type]["schema"]).validate(body)


def call(
    node: NodeProcess,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """``method path`` on ``node``: the status, the JSON body and the headers."""
    request = urllib.request.Request(
        node.url + path, None if body is None else json.dumps(body).encode(), method=method
    )
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def admin_headers(node: NodeProcess) -> dict[str, str]:
    token = (node.state_dir / "admin_token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def admin_call(node: NodeProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """``method path`` on ``node`` with its admin token: the status and the JSON body."""
    status, payload, _ = call(node, method, path, body, admin_headers(node))
    return status, payload


# Nothing listens on the discard port: the endpoint is down, and serves no model.
UNREACHABLE = "http://127.0.0.1:9"


def test_live_endpoint_changes_conform(live_node: NodeProcess) -> None:
    # An endpoint added at run time, listed with the node's --endpoint one, then removed;
    # every answer as documented, the refusals too.
    endpoints = "/api/endpoints"
    before = live_node.get(endpoints)
    documented("GET", endpoints, 200, before)
    status, added = admin_call(
        live_node, "POST", endpoints, {"url": UNREACHABLE, "kind": "openai", "name": "nine"}
    )
    assert status == 201, added
    documented("POST", endpoints, 201, added)
    record = added["endpoint"]
    assert record["has_api_key"] is False and record["node_id"] == live_node.status()["node_id"]
    try:
        listed = live_node.get(endpoints)
        documented("GET", endpoints, 200, listed)
        mine = next(e for e in listed["endpoints"] if e["id"] == record["id"])
        assert mine["origin"] == "stored" and mine["state"] != "up" and mine["models"] == {}
        assert mine["url"] == UNREACHABLE and mine["name"] == "nine"
        refusals = [
            ({"url": UNREACHABLE, "port": 9}, 400, "invalid_request"),  # an unknown field
            ({"url": UNREACHABLE, "kind": "vllm"}, 400, "invalid_endpoint"),
            ({"url": "ftp://127.0.0.1:9"}, 400, "invalid_endpoint"),
            ({"url": UNREACHABLE, "node": "no-such-node"}, 404, "not_found"),
        ]
        for body, code, error in refusals:
            status, refused = admin_call(live_node, "POST", endpoints, body)
            assert (status, refused["error"]["code"]) == (code, error), body
            documented("POST", endpoints, status, refused)
    finally:
        status, removed = admin_call(live_node, "DELETE", f"{endpoints}/{record['id']}")
    assert status == 200, removed
    documented("DELETE", "/api/endpoints/{id}", 200, removed)
    assert removed == {"removed": record["id"], "node_id": record["node_id"]}
    status, missing = admin_call(live_node, "DELETE", f"{endpoints}/{record['id']}")
    assert (status, missing["error"]["code"]) == (404, "not_found")
    documented("DELETE", "/api/endpoints/{id}", 404, missing)
    assert [e["id"] for e in live_node.get(endpoints)["endpoints"]] == [
        e["id"] for e in before["endpoints"]
    ]


def test_peer_views_conform(live_node: NodeProcess, live_peer: NodeProcess) -> None:
    # What a node shows of a peer: its live resources, its endpoints as announced (no URL,
    # no key), its place in the fleet; all as documented.
    node_id = live_node.status()["node_id"]

    def heard() -> dict[str, Any] | None:
        status = live_peer.status()
        peer = next((p for p in status["peers"] if p["node_id"] == node_id), None)
        live = peer is not None and peer["resources_state"] == "live" and peer["endpoints"]
        return status if live else None

    status = wait_for(heard, 30, what="the peer hearing the node's resources and endpoint")
    documented("GET", "/api/status", 200, status)
    (peer,) = status["peers"]
    assert peer["resources"] is not None and peer["resources_age_s"] is not None
    listed = live_peer.get("/api/endpoints")
    documented("GET", "/api/endpoints", 200, listed)
    (theirs,) = listed["endpoints"]
    assert theirs["node_id"] == node_id and theirs["id"] in peer["endpoints"]
    assert theirs["url"] is None and theirs["has_api_key"] is None and "origin" not in theirs
    assert theirs["state"] == "up" and MODEL in theirs["models"]
    fleet = live_peer.get("/api/fleet")
    documented("GET", "/api/fleet", 200, fleet)
    assert [n["node_id"] for n in fleet["nodes"]] == sorted([node_id, status["node_id"]])
    (model,) = fleet["models"]
    assert model["model"] == MODEL and model["hot"] == 1 and model["nodes"] == []
    assert [e["node_id"] for e in model["endpoints"]] == [node_id]


def test_live_endpoint_with_a_bad_node_is_refused(live_node: NodeProcess) -> None:
    # The spec says 'node' is a node id or null; anything else should be a 4xx.
    try:
        status, _ = admin_call(
            live_node, "POST", "/api/endpoints", {"url": UNREACHABLE, "node": [1]}
        )
    except json.JSONDecodeError:  # the 500's body is aiohttp's text
        status = 500
    assert 400 <= status < 500


def send(
    node: NodeProcess, path: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes, Any]:
    """POST ``data`` (JSON, or not) to ``path`` on ``node``: the status, the content type,
    the body as it came (a stream whole) and the headers."""
    request = urllib.request.Request(node.url + path, data, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers.get_content_type(), resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read(), exc.headers


def test_live_ollama_conforms(live_node: NodeProcess) -> None:
    # Ollama's API on the node that fronts MODEL: its listings, its inference whole,
    # streamed and as load requests, and its refusals; every answer, each NDJSON line too,
    # as documented.  (Fuzzed, these routes name no model the mesh has: 404 or 400.)
    tagged = f"{MODEL}:latest"
    listed = {}
    for path in ("/api/tags", "/api/ps", "/api/version"):
        status, listed[path], _ = call(live_node, "GET", path)
        assert status == 200, listed[path]
        documented("GET", path, 200, listed[path])
    assert [m["name"] for m in listed["/api/tags"]["models"]] == [tagged]
    assert [m["name"] for m in listed["/api/ps"]["models"]] == [tagged]
    assert listed["/api/version"]["meshllm_version"] == __version__
    for body, code in (({"model": MODEL}, 200), ({"name": tagged}, 200), ({}, 400)):
        status, shown, _ = call(live_node, "POST", "/api/show", body)
        assert status == code, shown
        documented("POST", "/api/show", status, shown)
    status, shown, _ = call(live_node, "POST", "/api/show", {"model": "no-such-model"})
    assert status == 404 and "no-such-model" in shown["error"]
    documented("POST", "/api/show", 404, shown)

    text = f"[{MODEL}] hi"  # the fake backend's answer
    chat = [{"role": "user", "content": "hi"}]
    asks = [
        ("/api/chat", {"model": tagged, "messages": chat}),
        ("/api/generate", {"model": MODEL, "prompt": "hi"}),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "raw": True}),
    ]
    for path, body in asks:
        status, answer, headers = call(live_node, "POST", path, {**body, "stream": False})
        assert status == 200, answer
        documented("POST", path, 200, answer)
        assert headers[MODEL_HEADER] == MODEL and answer["done_reason"] == "stop"
        assert answer.get("message", {}).get("content", answer.get("response")) == text
        status, kind, data, _ = send(live_node, path, json.dumps(body).encode())  # streamed
        assert (status, kind) == (200, NDJSON), data
        lines = [json.loads(line) for line in data.splitlines()]
        for line in lines:
            documented("POST", path, 200, line, NDJSON)
        assert lines[-1]["done"] and not any(line["done"] for line in lines[:-1])
        pieces = [line.get("message", {}).get("content", line.get("response")) for line in lines]
        assert "".join(pieces) == text
    status, embedded, _ = call(
        live_node, "POST", "/api/embed", {"model": MODEL, "input": ["a", "b"]}
    )
    assert status == 200, embedded
    documented("POST", "/api/embed", 200, embedded)
    assert len(embedded["embeddings"]) == 2
    status, legacy, _ = call(live_node, "POST", "/api/embeddings", {"model": MODEL, "prompt": "a"})
    assert status == 200, legacy
    documented("POST", "/api/embeddings", 200, legacy)
    assert legacy["embedding"] == embedded["embeddings"][0]
    # Load requests: nothing to ask, the model (hot here) ready; answered at once.
    loads = [
        ("/api/chat", {"model": MODEL}, {"done": True, "done_reason": "load"}),
        ("/api/generate", {"model": MODEL, "prompt": ""}, {"done": True, "done_reason": "load"}),
        ("/api/embed", {"model": MODEL, "input": []}, {"embeddings": []}),
        ("/api/embeddings", {"model": MODEL}, {"embedding": []}),
    ]
    for path, body, expected in loads:
        status, loaded, _ = call(live_node, "POST", path, body)
        assert status == 200 and expected.items() <= loaded.items(), (path, loaded)
        documented("POST", path, 200, loaded)
    refusals = [
        ("/api/chat", {"model": "no-such-model", "messages": chat}, 404),
        ("/api/embed", {"model": "no-such-model", "input": "hi"}, 404),
        ("/api/chat", {"messages": chat}, 400),  # no model
        ("/api/chat", {"model": MODEL, "messages": chat, "keep_alive": "soon"}, 400),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "robot"}]}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "suffix": "!"}, 400),
        ("/api/embed", {"model": MODEL, "input": [1]}, 400),
    ]
    for path, body, code in refusals:
        status, refused, _ = call(live_node, "POST", path, body)
        assert status == code, (path, body, refused)
        documented("POST", path, status, refused)
    status, kind, data, _ = send(live_node, "/api/generate", b"{")
    assert (status, kind) == (400, "application/json"), data
    documented("POST", "/api/generate", 400, json.loads(data))


def sse_events(data: bytes) -> list[dict[str, str]]:
    """A whole text/event-stream's events, as {field: value}."""
    events = data.decode().replace("\r\n", "\n").strip().split("\n\n")
    return [dict(line.split(": ", 1) for line in event.splitlines()) for event in events]


def test_live_anthropic_conforms(live_node: NodeProcess) -> None:
    # Anthropic's Messages API on the node that fronts MODEL: a Message whole and streamed,
    # token counts, refusals; every answer, each event too, as documented.
    messages = [{"role": "user", "content": "hi"}]
    ask = {"model": MODEL, "max_tokens": 16, "messages": messages}
    status, message, headers = call(live_node, "POST", "/v1/messages", ask)
    assert status == 200, message
    documented("POST", "/v1/messages", 200, message)
    assert headers[MODEL_HEADER] == MODEL and message["stop_reason"] == "end_turn"
    assert message["content"] == [{"type": "text", "text": f"[{MODEL}] hi"}]
    status, kind, data, _ = send(
        live_node, "/v1/messages", json.dumps({**ask, "stream": True}).encode()
    )
    assert (status, kind) == (200, "text/event-stream"), data
    events = sse_events(data)
    payload = spec_validator({"$ref": "#/components/schemas/AnthropicStreamEvent"})
    for event in events:
        documented("POST", "/v1/messages", 200, event, "text/event-stream")
        payload.validate(json.loads(event["data"]))
        assert json.loads(event["data"])["type"] == event["event"]
    names = [event["event"] for event in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [json.loads(e["data"])["delta"] for e in events if e["event"] == "content_block_delta"]
    assert "".join(delta["text"] for delta in deltas) == f"[{MODEL}] hi"
    count = "/v1/messages/count_tokens"
    refusals = [
        ("/v1/messages", {"model": MODEL, "messages": messages}, 400, "invalid_request_error"),
        ("/v1/messages", {**ask, "messages": []}, 400, "invalid_request_error"),
        ("/v1/messages", {**ask, "stream": "yes"}, 400, "invalid_request_error"),
        ("/v1/messages", {**ask, "model": "no-such-model"}, 404, "not_found_error"),
        (count, {"model": MODEL}, 400, "invalid_request_error"),
        (count, {"model": "no-such-model", "messages": messages}, 404, "not_found_error"),
        # The fake backend is no llama-server: it counts nothing, and its 404 is relayed.
        (count, {"model": MODEL, "messages": messages}, 404, "not_found_error"),
    ]
    for path, body, code, error in refusals:
        status, refused, _ = call(live_node, "POST", path, body)
        assert (status, refused["error"]["type"]) == (code, error), (path, body, refused)
        documented("POST", path, status, refused)
    assert (
        "max_tokens"
        in call(live_node, "POST", "/v1/messages", refusals[0][1])[1]["error"]["message"]
    )


CHAT = "/v1/chat/completions"


def test_live_keys_conform(live_node: NodeProcess, live_peer: NodeProcess) -> None:
    # Keys made on the node that holds the mesh owner key, used, refused and revoked; every
    # answer as documented.
    keys = "/api/keys"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    status, refused = admin_call(live_peer, "POST", keys, {"scope": "inference"})
    assert (status, refused["error"]["code"]) == (403, "not_mesh_owner")
    documented("POST", keys, 403, refused)
    status, bad = admin_call(live_node, "POST", keys, {"scope": "inference", "rpm": 0})
    assert (status, bad["error"]["code"]) == (400, "invalid_key_request")
    documented("POST", keys, 400, bad)
    status, user = admin_call(live_node, "POST", keys, {"name": "openapi", "rpm": 1})
    assert status == 201, user
    documented("POST", keys, 201, user)
    status, admin = admin_call(live_node, "POST", keys, {"scope": "admin", "models": "other"})
    assert status == 201, admin
    documented("POST", keys, 201, admin)
    revoke = [user["id"], admin["id"]]
    try:
        status, listed = admin_call(live_node, "GET", keys)
        assert status == 200
        documented("GET", keys, 200, listed)
        assert revoke == [k["id"] for k in listed["keys"] if not k["revoked"]]
        # The node has keys now: inference needs one.
        status, missing, headers = call(live_node, "POST", CHAT, chat)
        assert (status, missing["error"]["code"]) == (401, "missing_api_key")
        assert headers["WWW-Authenticate"] == 'Bearer realm="meshllm"'
        documented("POST", CHAT, 401, missing)
        status, answer, _ = call(live_node, "POST", CHAT, chat, {"x-api-key": user["key"]})
        assert status == 200, answer
        documented("POST", CHAT, 200, answer)
        # rpm 1: the next request waits for the minute to pass.
        status, limited, headers = call(
            live_node, "POST", CHAT, chat, {"Authorization": f"Bearer {user['key']}"}
        )
        assert (status, limited["error"]["code"]) == (429, "rate_limit_exceeded")
        assert int(headers["Retry-After"]) >= 0
        documented("POST", CHAT, 429, limited)
        # Ollama's and Anthropic's routes refuse in their own shapes.
        ollama_chat = {**chat, "stream": False}
        status, limited, headers = call(
            live_node, "POST", "/api/chat", ollama_chat, {"x-api-key": user["key"]}
        )
        assert status == 429 and int(headers["Retry-After"]) >= 0
        documented("POST", "/api/chat", 429, limited)
        status, missing, headers = call(live_node, "POST", "/api/chat", ollama_chat)
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="meshllm"')
        documented("POST", "/api/chat", 401, missing)
        status, missing, _ = call(live_node, "POST", "/v1/messages", {**chat, "max_tokens": 8})
        assert (status, missing["error"]["type"]) == (401, "authentication_error")
        documented("POST", "/v1/messages", 401, missing)
        # Ollama's listings are read-only pages: open to this machine.
        assert call(live_node, "GET", "/api/tags")[0] == 200
        as_admin = {"Authorization": f"Bearer {admin['key']}"}
        status, other, _ = call(live_node, "POST", CHAT, chat, as_admin)
        assert (status, other["error"]["code"]) == (403, "model_not_allowed")
        documented("POST", CHAT, 403, other)
        status, other, _ = call(live_node, "POST", "/api/chat", ollama_chat, as_admin)
        assert status == 403 and MODEL in other["error"]
        documented("POST", "/api/chat", 403, other)
        messages = {**chat, "max_tokens": 8}
        status, other, _ = call(live_node, "POST", "/v1/messages", messages, as_admin)
        assert (status, other["error"]["type"]) == (403, "permission_error")
        documented("POST", "/v1/messages", 403, other)
        # An admin key opens the admin routes without the admin token; an inference key
        # does not.
        status, listed, _ = call(live_node, "GET", keys, headers=as_admin)
        assert status == 200
        status, scope, _ = call(live_node, "GET", keys, headers={"x-api-key": user["key"]})
        assert (status, scope["error"]["code"]) == (403, "insufficient_scope")
        documented("GET", keys, 403, scope)
        # Revoked, a key opens nothing (while the node has another one, inference needs a
        # key still).
        status, revoked = admin_call(live_node, "DELETE", f"{keys}/{revoke.pop(0)}")
        assert (status, revoked) == (200, {"id": user["id"], "revoked": True})
        documented("DELETE", "/api/keys/{id}", 200, revoked)
        status, gone, _ = call(live_node, "POST", CHAT, chat, {"x-api-key": user["key"]})
        assert (status, gone["error"]["code"]) == (401, "revoked_api_key")
        documented("POST", CHAT, 401, gone)
        status, again = admin_call(live_node, "DELETE", f"{keys}/{user['id']}")
        assert (status, again) == (200, revoked)  # again: nothing more to do
        documented("DELETE", "/api/keys/{id}", 200, again)
        status, unknown = admin_call(live_node, "DELETE", f"{keys}/{'0' * 12}")
        assert (status, unknown["error"]["code"]) == (404, "key_not_found")
        documented("DELETE", "/api/keys/{id}", 404, unknown)
    finally:
        for key_id in revoke:
            status, revoked = admin_call(live_node, "DELETE", f"{keys}/{key_id}")
            assert status == 200, revoked
    # Every key revoked: inference is open again.
    status, answer, _ = call(live_node, "POST", CHAT, chat)
    assert status == 200, answer


def test_live_records_conform(live_node: NodeProcess, live_peer: NodeProcess) -> None:
    # The requests of the runs above, in the history, the usage and the metrics.
    status, page = admin_call(live_node, "GET", "/api/history?limit=5")
    assert status == 200, page
    documented("GET", "/api/history", 200, page)
    assert len(page["rows"]) == 5 and page["next_cursor"]
    assert sorted([*page["nodes"], *page["missing"]]) == sorted(
        [live_node.node_id, live_peer.node_id]
    )
    assert all(row["entry_node"] == live_node.node_id for row in page["rows"])
    status, older = admin_call(
        live_node, "GET", f"/api/history?scope=local&limit=5&cursor={page['next_cursor']}"
    )
    assert status == 200, older
    documented("GET", "/api/history", 200, older)
    assert older["nodes"] == [live_node.node_id] and older["rows"]
    assert older["rows"][0]["time"] <= page["rows"][-1]["time"]
    request = urllib.request.Request(
        live_node.url + "/api/history?format=csv&limit=3", headers=admin_headers(live_node)
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/csv")
        lines = resp.read().decode().splitlines()
    assert lines[0] == ",".join(CSV_FIELDS)
    for query in ("limit=0", "scope=everywhere", "format=xml", "since=soon", "color=red"):
        status, refused = admin_call(live_node, "GET", f"/api/history?{query}")
        assert (status, refused["error"]["code"]) == (400, "invalid_query"), query
        documented("GET", "/api/history", 400, refused)
    status, usage = admin_call(live_node, "GET", "/api/usage?bucket=hour&model=" + MODEL)
    assert status == 200, usage
    documented("GET", "/api/usage", 200, usage)
    assert usage["bucket_s"] == 3600 and usage["totals"]["requests"] >= 1
    assert {group["model"] for group in usage["usage"]} == {MODEL}
    with urllib.request.urlopen(live_node.url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert "meshllm_" in resp.read().decode()


def test_nodes_survived_the_run(
    live_node: NodeProcess, live_peer: NodeProcess, idle_node: NodeProcess
) -> None:
    # Tests of a module run in order: after the runs, the nodes are up as they were.
    assert live_node.alive() and live_peer.alive() and idle_node.alive()
    assert live_node.status()["serving"] == {MODEL: "ready"}
    assert idle_node.status()["serving"] == {}
