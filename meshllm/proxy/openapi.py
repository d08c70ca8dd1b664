"""``GET /openapi.json``: an OpenAPI 3.1 description of the node's whole HTTP API.

The document is built here in code, from the same names the handlers use; a test
(``tests/proxy/test_openapi.py``) keeps it true: its paths and methods are the app's
routes, it validates as OpenAPI 3.1, and schemathesis checks a live node against it.

The ``/v1`` request bodies are OpenAI's, with ``additionalProperties`` allowed: the
proxy reads only ``model`` (and ``stream``) and passes every other field on to the
backend, whose own errors (a 4xx or 5xx status with its body) are relayed as they are.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from aiohttp import web

from meshllm import __version__
from meshllm.gossip import ModelState, Role
from meshllm.proxy.routes import MAX_BODY_BYTES, MODEL_HEADER, NODE_HEADER

OPENAPI_VERSION = "3.1.0"
ADMIN_SCHEME = "adminToken"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: list[str], properties: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties, **extra}


_STRING: Schema = {"type": "string"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_STRINGS: Schema = {"type": "array", "items": _STRING}
_TOKENS: Schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1}

# --- shared pieces ---------------------------------------------------------------------------

_ERROR = _obj(
    ["error"],
    {
        "error": _obj(
            ["message", "type", "code"],
            {
                "message": _STRING,
                "type": {
                    "type": "string",
                    "description": "invalid_request_error, not_found_error, server_error, ...",
                },
                "code": {
                    "type": ["string", "integer", "null"],
                    "description": "A machine-readable code (model_not_found, invalid_json, ...); "
                    "a relayed backend error may carry its HTTP status here.",
                },
            },
        )
    },
    description="OpenAI's error object; every error this node answers has this shape.",
)

_MESSAGE = _obj(
    ["role"],
    {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                _STRING,
                {
                    "type": "array",
                    "items": _obj(
                        ["type"], {"type": _STRING, "text": _STRING}, additionalProperties=True
                    ),
                },
                {"type": "null"},
            ]
        },
        "name": _STRING,
    },
    additionalProperties=True,
)

_STOP: Schema = {"anyOf": [_STRING, {"type": "array", "items": _STRING, "maxItems": 4}]}

# Fields of all three inference bodies: the proxy routes on `model` (none: any served
# model), a streaming request that waits for its model gets `: loading` SSE comments.
_COMMON: dict[str, Schema] = {
    "model": {
        "type": "string",
        "description": "A model the mesh serves goes to one of its nodes; a model of the "
        "catalog that no node serves right now waits for one that is starting, else gets 503; "
        "left out, or a model the mesh does not know, goes to the model most nodes serve "
        f"(the {MODEL_HEADER} response header names it); with no model served, an unknown "
        "model gets 404 and a request naming none 503.",
    },
    "user": _STRING,
}
_GENERATION: dict[str, Schema] = {
    "stream": {"type": "boolean", "description": "true: the answer is a text/event-stream."},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1},
    "stop": _STOP,
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "stream_options": _obj([], {"include_usage": {"type": "boolean"}}, additionalProperties=True),
}

_PASS_THROUGH = "Other fields are passed on to the backend unread."

_CHAT_REQUEST = _obj(
    ["messages"],
    {
        **_COMMON,
        "messages": {"type": "array", "items": _ref("ChatMessage"), "minItems": 1},
        **_GENERATION,
        "max_completion_tokens": {"type": "integer", "minimum": 1},
    },
    additionalProperties=True,
    description=f"OpenAI's chat completion request. {_PASS_THROUGH}",
)

_COMPLETION_REQUEST = _obj(
    ["prompt"],
    {
        **_COMMON,
        "prompt": {
            "anyOf": [
                _STRING,
                {"type": "array", "items": _STRING},
                _TOKENS,
                {"type": "array", "items": _TOKENS},
            ]
        },
        **_GENERATION,
        "echo": {"type": "boolean"},
        "suffix": _STRING,
    },
    additionalProperties=True,
    description=f"OpenAI's (legacy) completion request. {_PASS_THROUGH}",
)

_EMBEDDING_REQUEST = _obj(
    ["input"],
    {
        **_COMMON,
        "input": {
            "anyOf": [
                _STRING,
                {"type": "array", "items": _STRING, "minItems": 1},
                _TOKENS,
                {"type": "array", "items": _TOKENS, "minItems": 1},
            ]
        },
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
    },
    additionalProperties=True,
    description=f"OpenAI's embeddings request. {_PASS_THROUGH}",
)

_USAGE = _obj(
    [],
    {"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT},
    additionalProperties=True,
)

_ANSWER_HEAD: dict[str, Schema] = {
    "id": _STRING,
    "created": {"type": "integer"},
    "model": _STRING,
    "usage": _USAGE,
}

_FINISH: Schema = {"type": ["string", "null"]}

_CHAT_COMPLETION = _obj(
    ["id", "object", "created", "model", "choices"],
    {
        **_ANSWER_HEAD,
        "object": {"const": "chat.completion"},
        "choices": {
            "type": "array",
            "items": _obj(
                ["index", "message"],
                {
                    "index": _COUNT,
                    "message": _obj(
                        ["role"],
                        {"role": _STRING, "content": {"type": ["string", "null"]}},
                        additionalProperties=True,
                    ),
                    "finish_reason": _FINISH,
                },
                additionalProperties=True,
            ),
        },
    },
    additionalProperties=True,
)

_COMPLETION = _obj(
    ["id", "object", "created", "model", "choices"],
    {
        **_ANSWER_HEAD,
        "object": {"const": "text_completion"},
        "choices": {
            "type": "array",
            "items": _obj(
                ["index", "text"],
                {"index": _COUNT, "text": _STRING, "finish_reason": _FINISH},
                additionalProperties=True,
            ),
        },
    },
    additionalProperties=True,
)

_CHUNK = _obj(
    ["object", "choices"],
    {
        **_ANSWER_HEAD,
        "object": {"type": "string", "enum": ["chat.completion.chunk", "text_completion"]},
        "choices": {
            "type": "array",
            "items": _obj(
                [], {"index": _COUNT, "finish_reason": _FINISH}, additionalProperties=True
            ),
        },
    },
    additionalProperties=True,
    description="One streamed piece of a chat completion or a completion.",
)

_SSE_EVENT = _obj(
    ["data"],
    {
        "event": _STRING,
        "id": _STRING,
        "retry": _COUNT,
        "data": {
            "type": "string",
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "pattern": r"^\s*\{",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [_ref("CompletionChunk"), _ref("Error")]},
                },
            ],
            "description": "A JSON chunk; an OpenAI error object when the stream breaks off; "
            "[DONE] last.  Lines starting with ':' (': loading ...' while the model starts "
            "somewhere) are comments, not events.",
        },
    },
    additionalProperties=True,
    description="One server-sent event of a streamed answer.",
)

_EMBEDDINGS = _obj(
    ["object", "data", "model"],
    {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": _obj(
                ["object", "index", "embedding"],
                {
                    "object": {"const": "embedding"},
                    "index": _COUNT,
                    "embedding": {
                        "anyOf": [{"type": "array", "items": {"type": "number"}}, _STRING],
                        "description": "Floats, or base64 with encoding_format: base64.",
                    },
                },
                additionalProperties=True,
            ),
        },
        "model": _STRING,
        "usage": _USAGE,
    },
    additionalProperties=True,
)

_MODEL_LIST = _obj(
    ["object", "data"],
    {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": _obj(
                ["id", "object", "created", "owned_by", "meshllm"],
                {
                    "id": _STRING,
                    "object": {"const": "model"},
                    "created": {"type": "integer"},
                    "owned_by": _STRING,
                    "meshllm": _obj(
                        ["warm", "nodes"],
                        {
                            "warm": {
                                "type": "boolean",
                                "description": "Some node serves it now.",
                            },
                            "nodes": {**_STRINGS, "description": "Node ids serving it."},
                        },
                    ),
                },
            ),
        },
    },
    description="OpenAI's model list: every model of the mesh catalog.",
)

_STATES = [str(s) for s in ModelState]

# PeerAnnouncement.to_wire(): what every node announces (meshllm/gossip/announcement.py).
_ANNOUNCEMENT: dict[str, Schema] = {
    "node_id": _STRING,
    "mesh_id": _STRING,
    "public_key": {
        "type": "string",
        "pattern": "^([0-9a-f]{64})?$",
        "description": "Its Ed25519 key, hex: the node id derives from it, and it signs "
        "every announcement.",
    },
    "addrs": {**_STRINGS, "description": "host:port of its QUIC (UDP) socket."},
    "role": {"type": "string", "enum": [str(r) for r in Role]},
    "http_port": _nullable({"type": "integer"}),
    "serving": {
        "type": "object",
        "additionalProperties": {"type": "string", "enum": _STATES},
        "description": "model -> state.",
    },
    "failures": {
        "type": "object",
        "additionalProperties": _STRING,
        "description": "A model it gave up on -> the cause.",
    },
    "available_models": {
        "type": "object",
        "additionalProperties": _COUNT,
        "description": "GGUFs on its disk: name -> bytes.",
    },
    "model_sha256": {
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "requested_models": _STRINGS,
    "memory_bytes": {**_COUNT, "description": "Bytes it can give to models."},
    "memory_kind": {"type": "string", "enum": ["vram", "ram"]},
    "resources": _obj(
        [],
        {
            "cpu_count": {"type": "integer", "minimum": 1},
            "cpu_percent": {"type": "number", "minimum": 0},
            "ram_total": _COUNT,
            "ram_used": _COUNT,
            "gpus": {
                "type": "array",
                "items": _obj(
                    ["index", "name", "vram_total", "vram_used"],
                    {
                        "index": _COUNT,
                        "name": _STRING,
                        "vram_total": _COUNT,
                        "vram_used": _COUNT,
                    },
                    additionalProperties=True,
                ),
            },
        },
        additionalProperties=True,
    ),
    "load": {"type": "integer", "description": "Requests in flight."},
    "version": _STRING,
    "incarnation": _COUNT,
    "seq": _COUNT,
    "leaving": {"type": "boolean", "description": "It said goodbye (a signed leave)."},
}

_SECONDS_OR_NULL: Schema = {"type": ["number", "null"], "minimum": 0}

_PEER = _obj(
    [*_ANNOUNCEMENT, "rtt_ms", "last_seen_s", "linked", "suspect"],
    {
        **_ANNOUNCEMENT,
        "rtt_ms": {**_SECONDS_OR_NULL, "description": "Probe round trip; null: none yet."},
        "last_seen_s": {**_SECONDS_OR_NULL, "description": "Seconds since heard from."},
        "linked": {"type": "boolean", "description": "A QUIC link to it is open."},
        "suspect": {
            "type": "boolean",
            "description": "A probe or a data path to it failed; dead unless it answers or "
            "refutes before its suspicion times out.",
        },
    },
    additionalProperties=True,
    description="A live peer: its announcement, as this node last heard it.",
)

_CATALOG_ENTRY = _obj(
    ["model", "warm", "nodes", "size_bytes", "host"],
    {
        "model": _STRING,
        "warm": {"type": "boolean", "description": "Some node serves it now."},
        "nodes": {**_STRINGS, "description": "Node ids serving it (ready)."},
        "size_bytes": {**_nullable(_COUNT), "description": "Its GGUF's size, where on a disk."},
        "host": {**_nullable(_STRING), "description": "The node elected to host it."},
    },
)

_STATUS = _obj(
    [*_ANNOUNCEMENT, "uptime_s", "membership", "idle_reason", "peers", "catalog"],
    {
        **_ANNOUNCEMENT,
        "uptime_s": {"type": "number", "minimum": 0},
        "membership": _obj(
            ["refused", "awareness"],
            {
                "refused": {
                    "type": "object",
                    "additionalProperties": _COUNT,
                    "description": "What membership refused from peers, by reason "
                    "(bad_announcements, rate_limited, table_full, offences, ...).",
                },
                "awareness": {
                    **_COUNT,
                    "description": "Local health score (Lifeguard): 0 is healthy; higher "
                    "stretches this node's probe timings.",
                },
            },
        ),
        "idle_reason": {
            **_nullable(_STRING),
            "description": "Why auto-assignment serves nothing here; null: it serves, or "
            "was told what.",
        },
        "peers": {"type": "array", "items": _ref("Peer")},
        "catalog": {"type": "array", "items": _ref("CatalogEntry")},
    },
    additionalProperties=True,
    description="This node's announcement, its live peers and the mesh catalog.  No secret: "
    "the join token is only at /api/token.",
)

_SCHEMAS: dict[str, Schema] = {
    "Error": _ERROR,
    "ChatMessage": _MESSAGE,
    "ChatCompletionRequest": _CHAT_REQUEST,
    "CompletionRequest": _COMPLETION_REQUEST,
    "EmbeddingRequest": _EMBEDDING_REQUEST,
    "ChatCompletion": _CHAT_COMPLETION,
    "Completion": _COMPLETION,
    "CompletionChunk": _CHUNK,
    "ServerSentEvent": _SSE_EVENT,
    "Embeddings": _EMBEDDINGS,
    "ModelList": _MODEL_LIST,
    "Status": _STATUS,
    "Peer": _PEER,
    "CatalogEntry": _CATALOG_ENTRY,
    "Health": _obj(["ok", "node_id"], {"ok": {"const": True}, "node_id": _STRING}),
    "JoinToken": _obj(["token"], {"token": {**_STRING, "description": "meshllm --join <token>"}}),
    "DropRequest": _obj(
        ["model"], {"model": {"type": "string", "minLength": 1}}, additionalProperties=True
    ),
    "Dropped": _obj(
        ["dropped", "nodes"],
        {"dropped": _STRING, "nodes": {**_STRINGS, "description": "Node ids told to drop it."}},
    ),
}


def _error(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": _json(_ref("Error"))}
    if headers:
        response["headers"] = headers
    return response


_RESPONSES: dict[str, Schema] = {
    "InvalidJson": _error(
        "The body is not JSON, not a JSON object, or 'model' is not a string "
        "(invalid_json, invalid_model)."
    ),
    "Unauthorized": _error("No admin token, or a wrong one (unauthorized)."),
    "Forbidden": _error(
        "A web page's Origin not allowed with --cors-origin (origin_not_allowed); for "
        "an admin route, a caller not on this machine (forbidden); for a drop on other "
        "nodes, a node without the mesh owner key (not_mesh_owner)."
    ),
    "ModelNotFound": _error(
        "The model is not in the mesh catalog, and no other model is served (model_not_found)."
    ),
    "TooLarge": _error(f"The body is over {MAX_BODY_BYTES} bytes."),
    "UnsupportedMediaType": _error(
        "A POST body not sent as Content-Type: application/json (unsupported_media_type)."
    ),
    "MisdirectedRequest": _error(
        "The Host header does not name this node: use 127.0.0.1 or localhost, or allow the "
        "name with --allowed-host (misdirected_request)."
    ),
    "BadGateway": _error(
        "No replica of the model could be reached, or the backend broke off before its "
        "answer was complete (no_reachable_target, upstream_error)."
    ),
    "Unavailable": _error(
        "The model is known but no node serves it right now, or it is still loading after "
        "--load-timeout (no_target).",
        headers={
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    ),
}

_ROUTED_HEADERS: dict[str, Schema] = {
    MODEL_HEADER: {
        "description": "The model that answered (the one asked for, or the one chosen).",
        "required": True,
        "schema": _STRING,
    },
    NODE_HEADER: {
        "description": "The node id whose backend answered.",
        "required": True,
        "schema": _STRING,
    },
}

_GUARD: dict[str, Schema] = {
    "403": _response("Forbidden"),
    "421": _response("MisdirectedRequest"),
}


def _get(
    operation_id: str, summary: str, ok: Schema, errors: Schema | None = None, **extra: Any
) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, **(errors or {}), **_GUARD},
        **extra,
    }


def _inference(operation_id: str, summary: str, request: str, answer: str, stream: bool) -> Schema:
    content = _json(_ref(answer))
    if stream:
        content["text/event-stream"] = {"schema": _ref("ServerSentEvent")}
    ok = {
        "description": "The backend's answer, relayed; with stream: true, a text/event-stream "
        "of server-sent events, relayed event by event.",
        "headers": _ROUTED_HEADERS,
        "content": content,
    }
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["OpenAI"],
        "requestBody": {"required": True, "content": _json(_ref(request))},
        "responses": {
            "200": ok,
            "400": _response("InvalidJson"),
            **_GUARD,
            "404": _response("ModelNotFound"),
            "413": _response("TooLarge"),
            "415": _response("UnsupportedMediaType"),
            "502": _response("BadGateway"),
            "503": _response("Unavailable"),
        },
    }


def _ok(description: str, schema: str) -> Schema:
    return {"description": description, "content": _json(_ref(schema))}


def openapi_spec(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the node's HTTP API; ``version`` is meshllm's.

    A new dict on every call: callers may change theirs.
    """
    admin = [{ADMIN_SCHEME: []}]
    admin_errors = {"401": _response("Unauthorized")}
    paths: dict[str, Any] = {
        "/health": {
            "get": _get("health", "Liveness", _ok("The node is up.", "Health"), tags=["Node"])
        },
        "/api/status": {
            "get": _get(
                "status",
                "This node, its peers and the mesh catalog",
                _ok("The node's status.", "Status"),
                tags=["Node"],
            )
        },
        "/api/token": {
            "get": _get(
                "token",
                "The mesh's join token (admin)",
                _ok("The join token; it holds the mesh secret.", "JoinToken"),
                admin_errors,
                tags=["Admin"],
                security=admin,
                description="Only from this machine, with the admin token "
                "(<state-dir>/admin_token) as a bearer token.",
            )
        },
        "/api/drop": {
            "post": {
                "operationId": "drop",
                "summary": "Stop serving a model (admin)",
                "description": "Here if this node serves it (the node then exits), else on "
                "every peer serving it.  Only from this machine, with the admin token.",
                "tags": ["Admin"],
                "security": admin,
                "requestBody": {"required": True, "content": _json(_ref("DropRequest"))},
                "responses": {
                    "200": _ok("The nodes told to drop it.", "Dropped"),
                    "400": _error(
                        'The body is not JSON (invalid_json), or not {"model": NAME} '
                        "(invalid_request)."
                    ),
                    **admin_errors,
                    **_GUARD,
                    "404": _error("No node serves this model (model_not_found)."),
                    "413": _response("TooLarge"),
                    "415": _response("UnsupportedMediaType"),
                },
            }
        },
        "/v1/models": {
            "get": _get(
                "listModels",
                "The mesh catalog as OpenAI's model list",
                _ok("Every model of the mesh catalog.", "ModelList"),
                tags=["OpenAI"],
            )
        },
        "/v1/chat/completions": {
            "post": _inference(
                "createChatCompletion",
                "Chat completion, routed to a node serving the model",
                "ChatCompletionRequest",
                "ChatCompletion",
                stream=True,
            )
        },
        "/v1/completions": {
            "post": _inference(
                "createCompletion",
                "Completion, routed to a node serving the model",
                "CompletionRequest",
                "Completion",
                stream=True,
            )
        },
        "/v1/embeddings": {
            "post": _inference(
                "createEmbedding",
                "Embeddings, routed to a node serving the model",
                "EmbeddingRequest",
                "Embeddings",
                stream=False,
            )
        },
        "/openapi.json": {
            "get": _get(
                "openapi",
                "This document",
                {
                    "description": "The OpenAPI 3.1 description of this API.",
                    "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                },
                tags=["Node"],
            )
        },
    }
    spec = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "meshllm node",
            "version": version,
            "description": "One node of a meshllm mesh: an OpenAI-compatible endpoint for "
            "every model of the mesh, and the node's own status and admin routes.  Every "
            "route checks the Host header (421) and a browser's Origin (403); a POST body "
            "must be application/json (415).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "OpenAI", "description": "OpenAI-compatible proxy routes."},
            {"name": "Node", "description": "This node."},
            {"name": "Admin", "description": "From this machine, with the admin token."},
        ],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "securitySchemes": {
                ADMIN_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The node's admin token, in <state-dir>/admin_token.",
                }
            },
        },
    }
    # A deep copy: the module-level pieces are shared between calls and between paths.
    copied: dict[str, Any] = json.loads(json.dumps(spec))
    return copied


@lru_cache(maxsize=4)
def _spec_bytes(version: str) -> bytes:
    return json.dumps(openapi_spec(version), separators=(",", ":")).encode()


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /openapi.json``: :func:`openapi_spec` for this meshllm version."""
    return web.Response(body=_spec_bytes(__version__), content_type="application/json")
