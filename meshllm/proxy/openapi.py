"""``GET /openapi.json``: an OpenAPI 3.1 description of the node's whole HTTP API.

The document is built here in code, from the same names the handlers use; a test
(``tests/proxy/test_openapi.py``) keeps it true: its paths and methods are the app's
routes, it validates as OpenAPI 3.1, and schemathesis checks a live node against it.

OpenAI's request bodies (``/v1/chat/completions``, ...) allow ``additionalProperties``:
the proxy reads only ``model`` (and ``stream``) and passes every other field on to the
backend, whose own errors (a 4xx or 5xx status with its body) are relayed as they are.
Ollama's (``/api/chat``, ...) and Anthropic's (``/v1/messages``) bodies are as their
translations (``meshllm/surfaces``) read them: the fields they take are checked (400, in
that API's error shape), the others ignored; their answers are what the translations write.
"""

from __future__ import annotations

import json
from dataclasses import fields
from functools import lru_cache
from typing import Any

from aiohttp import web

from meshllm import __version__
from meshllm.access.keys import _MODEL as _KEY_MODEL  # not public: the charsets of keys.py
from meshllm.access.keys import _NAME as _KEY_NAME
from meshllm.access.keys import (
    EXPIRED_KEEP_S,
    KEY_PREFIX,
    MAX_MODEL_CHARS,
    MAX_RATE,
    SECRET_CHARS,
)
from meshllm.access.keys import ID_CHARS as KEY_ID_CHARS
from meshllm.access.keys import MAX_MODELS as MAX_KEY_MODELS
from meshllm.access.keys import MAX_NAME_CHARS as MAX_KEY_NAME_CHARS
from meshllm.access.keys import SCOPES as KEY_SCOPES
from meshllm.election.fleet import MEMORY_KINDS, NOTHING_HOT, RESOURCE_STATES, ROLES
from meshllm.events import MAX_QUEUED_EVENTS, MAX_SUBSCRIBERS
from meshllm.gossip import ModelState, PoolState, Role
from meshllm.gossip.announcement import (  # not in meshllm.gossip's __all__
    ENDPOINT_STATES,
    MAX_ENDPOINTS,
    MAX_MODELS,
    MAX_NAME_CHARS,
    MAX_PROVIDERS,
    MAX_TEXT_CHARS,
    PROVIDER_STATES,
)
from meshllm.gossip.resource_feed import FORGET_REPORTS, STALE_REPORTS
from meshllm.proxy.access import ADMIN_TOKEN_ID
from meshllm.proxy.anthropic_surface import COUNT_TOKENS_PATH, MESSAGES_PATH
from meshllm.proxy.dashboard_routes import MEDIA_TYPES as DASHBOARD_MEDIA_TYPES
from meshllm.proxy.events import HEARTBEAT_S, RETRY_AFTER_S
from meshllm.proxy.fleet_routes import ENDPOINT_FIELDS
from meshllm.proxy.observe import CLIENT_GONE
from meshllm.proxy.ollama_surface import NDJSON_HEADERS
from meshllm.proxy.routes import MAX_BODY_BYTES, MODEL_HEADER, NODE_HEADER
from meshllm.records.cost import ENERGY, PRICE_TABLE, TABLE_CURRENCY
from meshllm.records.fanout import PRIVATE_FIELDS
from meshllm.records.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from meshllm.records.query import (
    BUCKET_NAMES,
    CSV_FIELDS,
    DEFAULT_LIMIT,
    DEFAULT_USAGE_PERIOD_S,
    HISTORY_PARAMS,
    MAX_LIMIT,
    MAX_PARAM_CHARS,
    USAGE_BUCKETS_S,
    USAGE_PARAMS,
)
from meshllm.records.record import RecordKind, RequestRecord
from meshllm.records.service import SCOPES as RECORD_SCOPES
from meshllm.serving.durations import UNIT_SECONDS
from meshllm.serving.endpoint_store import ID_CHARS, MAX_URL_CHARS
from meshllm.serving.endpoint_store import MAX_ENDPOINTS as MAX_STORED_ENDPOINTS
from meshllm.serving.endpoint_store import MAX_NAME_CHARS as MAX_ENDPOINT_NAME_CHARS
from meshllm.serving.endpoints import DRAIN_TIMEOUT_S
from meshllm.serving.external import AUTO, KINDS, MAX_API_KEY_CHARS, OLLAMA, OPENAI
from meshllm.serving.pool_commands import ACTIONS, MAX_EXTEND_S
from meshllm.surfaces import anthropic
from meshllm.surfaces.anthropic import _STOP_REASONS as _ANTHROPIC_STOPS  # not public
from meshllm.surfaces.anthropic import IMAGE_MEDIA_TYPES, MAX_TOKENS_CEILING
from meshllm.surfaces.ollama import FOREVER, MAX_NS, OLLAMA_API_VERSION, OPTIONS
from meshllm.surfaces.ollama import ROLES as OLLAMA_ROLES

OPENAPI_VERSION = "3.1.0"
ADMIN_SCHEME = "adminToken"
API_KEY_SCHEME = "apiKey"  # Authorization: Bearer mk-...
API_KEY_HEADER_SCHEME = "apiKeyHeader"  # x-api-key: mk-...

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
_WALL_MS: Schema = {"type": "integer", "minimum": 0, "description": "Wall clock, ms."}
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

_UNITS = "|".join(sorted(UNIT_SECONDS, key=len, reverse=True))
_NUMBER = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
# meshllm.serving.durations: a plain number (seconds), or Go's <number><unit>... .
_DURATION_PATTERN = rf"^[-+]?({_NUMBER}|({_NUMBER}({_UNITS}))+)$"

# Fields of all three inference bodies: the proxy routes on `model` (none: any served
# model), a streaming request that waits for its model gets `: loading` SSE comments.
_COMMON: dict[str, Schema] = {
    "model": {
        "type": "string",
        "description": "A model the mesh serves goes to one of its nodes; a model of the "
        "catalog that no node serves right now waits for one that is starting, else gets 503; "
        "left out, or a model the mesh does not know, goes to the model most nodes serve "
        f"(the {MODEL_HEADER} response header names it); with no model served, an unknown "
        "model gets 404 and a request naming none 503.  A catalog model loaded nowhere is "
        "loaded on its first request, on the node the placement rule names; 503 when no "
        "node can load it.",
    },
    "keep_alive": {
        "anyOf": [
            {"type": "number"},
            {"type": "string", "pattern": _DURATION_PATTERN},
        ],
        "description": "Ollama's: how long the model stays loaded after this request, on "
        'the node that answers it: seconds (300), or a Go duration ("90s", "15m", '
        '"1h30m"); 0 unloads it right after, a negative value never.  Anything else gets '
        "400 (invalid_keep_alive).",
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

_RERANK_REQUEST = _obj(
    ["query", "documents"],
    {
        **_COMMON,
        "query": _STRING,
        "documents": {"type": "array", "items": _STRING, "minItems": 1},
        "top_n": {"type": "integer", "minimum": 1},
    },
    additionalProperties=True,
    description=f"A rerank request (llama-server's, Jina's and Cohere's shape). {_PASS_THROUGH}",
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

_MESH_STATE: Schema = {
    "type": "string",
    "enum": [*(str(s) for s in PoolState if s != PoolState.COOLING), "cloud"],
    "description": "Mesh-wide: hot if a node serves it (hot or cooling), else the furthest "
    "along of warming, fetching, unloading; failed if every node that has it failed it; "
    "cloud for a provider's model some node holds the key for; else cold.",
}

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
                        ["warm", "nodes", "state", "pool"],
                        {
                            "warm": {
                                "type": "boolean",
                                "description": "Some node serves it now.",
                            },
                            "nodes": {**_STRINGS, "description": "Node ids serving it."},
                            "state": _MESH_STATE,
                            "pool": {
                                "type": "array",
                                "items": _ref("PoolNode"),
                                "description": "Its state on each node that has it.",
                            },
                        },
                    ),
                },
            ),
        },
    },
    description="OpenAI's model list: every model of the mesh catalog.",
)

_STATES = [str(s) for s in ModelState]
_POOL_STATES = [str(s) for s in PoolState]
_NULLABLE_POOL_STATE: Schema = {"type": ["string", "null"], "enum": [*_POOL_STATES, None]}
_SECONDS: Schema = {"type": "number", "minimum": 0}

# meshllm/gossip/announcement.py POOL_KEYS and DEMAND_KEYS: closed records, checked on receipt.
_POOL_ENTRY = _obj(
    ["state"],
    {
        "state": {
            "type": "string",
            "enum": [str(s) for s in PoolState if s != PoolState.COLD],
            "description": "Never cold: a model on disk and not in the pool is cold.",
        },
        "since": {**_WALL_MS, "description": "When it entered this state (wall ms)."},
        "eta": {
            **_SECONDS,
            "description": "Seconds a fetch or warm-up takes in all, from since (an estimate).",
        },
        "until": {**_WALL_MS, "description": "When a cooling model unloads (wall ms)."},
        "pinned": {"type": "boolean", "description": "Pinned: never unloaded; absent: false."},
    },
    additionalProperties=False,
    description="A model in a node's pool.",
)

_DEMAND_ENTRY = _obj(
    ["rpm"],
    {
        "rpm": {**_SECONDS, "description": "Requests a minute this node's proxy routed for it."},
        "last": {**_WALL_MS, "description": "When it routed the last one (wall ms)."},
    },
    additionalProperties=False,
    description="A model's demand as one node's proxy sees it.",
)

# meshllm/gossip/announcement.py ENDPOINT_KEYS and ENDPOINT_MODEL_KEYS: closed records too.
_ENDPOINT_MODEL = _obj(
    [],
    {
        "warm": {
            "type": "boolean",
            "description": "Loaded now (Ollama's /api/ps); true where the server cannot say.",
        },
        "size": {**_COUNT, "description": "Bytes, where the server says."},
        "family": {"type": "string", "maxLength": MAX_TEXT_CHARS},
        "quant": {"type": "string", "maxLength": MAX_TEXT_CHARS},
    },
    additionalProperties=False,
    description="A model an endpoint has; what the server does not say is left out.",
)

_ENDPOINT_MODELS: Schema = {
    "type": "object",
    "maxProperties": MAX_MODELS,
    "propertyNames": {"maxLength": MAX_NAME_CHARS},
    "additionalProperties": _ref("EndpointModel"),
    "description": "model -> what the endpoint says of it.",
}

_ENDPOINT_STATE: Schema = {
    "type": "string",
    "enum": sorted(ENDPOINT_STATES),
    "description": "up: routable; probation: answering again, not yet routable; down: not "
    "answering; draining: being removed, its requests in flight finishing.",
}

_ANNOUNCED_ENDPOINT = _obj(
    ["name", "kind", "state"],
    {
        "name": {
            "type": "string",
            "maxLength": MAX_TEXT_CHARS,
            "description": "Its name, else its URL (without credentials).",
        },
        "kind": {"type": "string", "enum": [OPENAI, OLLAMA]},
        "state": _ENDPOINT_STATE,
        "latency_ms": {**_SECONDS, "description": "Its last health poll's round trip."},
        "error": {
            "type": "string",
            "maxLength": MAX_TEXT_CHARS,
            "description": "Why it is not up (its last poll's error).",
        },
        "models": _ENDPOINT_MODELS,
    },
    additionalProperties=False,
    description="An external OpenAI-compatible or Ollama server a node fronts; never its "
    "URL's credentials nor its API key.",
)

# PeerAnnouncement.to_wire(): what every node announces (meshllm/gossip/announcement.py),
# but its resources (figures as at start): /api/status shows the live ones instead.
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
    "memory_kind": {"type": "string", "enum": list(MEMORY_KINDS)},
    "load": {"type": "integer", "description": "Requests in flight."},
    "pool": {
        "type": "object",
        "additionalProperties": _ref("PoolEntry"),
        "description": "model -> its state in this node's pool (not cold ones).",
    },
    "demand": {
        "type": "object",
        "additionalProperties": _ref("Demand"),
        "description": "model -> requests this node's proxy routed for it.",
    },
    "pool_room": {
        **_nullable(_COUNT),
        "description": "Bytes a newly placed model could get here, idle models evicted; "
        "null: no pool memory budget, memory_bytes is the measure.",
    },
    "endpoints": {
        "type": "object",
        "maxProperties": MAX_ENDPOINTS,
        "propertyNames": {"minLength": 1, "maxLength": 64},
        "additionalProperties": _ref("AnnouncedEndpoint"),
        "description": "Endpoint id -> an external server it fronts for the mesh.",
    },
    "providers": {
        "type": "object",
        "maxProperties": MAX_PROVIDERS,
        "propertyNames": {"pattern": "^[a-z][a-z0-9_-]{0,31}$"},
        "additionalProperties": {"enum": sorted(PROVIDER_STATES)},
        "description": "Cloud provider (the model prefix: openai, anthropic, google) -> up, "
        "or refused while the provider refuses this node's key. Never the key.",
    },
    "version": _STRING,
    "incarnation": _COUNT,
    "seq": _COUNT,
    "leaving": {"type": "boolean", "description": "It said goodbye (a signed leave)."},
}

_SECONDS_OR_NULL: Schema = {"type": ["number", "null"], "minimum": 0}

# meshllm/resources.py host_resources(): a node's live report (meshllm/gossip/resource_feed.py).
_GPU = _obj(
    [
        "index",
        "name",
        "uuid",
        "util_percent",
        "vram_total",
        "vram_used",
        "temperature_c",
        "power_w",
        "power_limit_w",
    ],
    {
        "index": _COUNT,
        "name": _STRING,
        "uuid": _nullable(_STRING),
        "util_percent": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
        "vram_total": {**_COUNT, "description": "Bytes."},
        "vram_used": {**_COUNT, "description": "Bytes."},
        "temperature_c": {"type": ["integer", "null"], "description": "°C."},
        "power_w": {**_SECONDS_OR_NULL, "description": "Watts drawn now."},
        "power_limit_w": {**_SECONDS_OR_NULL, "description": "The enforced power limit, W."},
    },
    additionalProperties=True,
    description="An NVIDIA GPU (NVML); a reading the GPU does not support is null.",
)

_RESOURCES = _obj(
    ["cpu_count", "cpu_percent", "load_avg", "ram_total", "ram_used", "gpus"],
    {
        "cpu_count": {"type": "integer", "minimum": 1},
        "cpu_percent": {
            "type": "number",
            "minimum": 0,
            "description": "CPU use, all cores together, since the previous reading (%).",
        },
        "load_avg": {
            **_nullable(
                {"type": "array", "items": _SECONDS, "minItems": 3, "maxItems": 3},
            ),
            "description": "The 1, 5 and 15 minute load averages; null where the OS has "
            "none (Windows).",
        },
        "ram_total": {**_COUNT, "description": "Bytes."},
        "ram_used": {
            **_COUNT,
            "description": "Bytes: total less available (page cache is not counted).",
        },
        "gpus": {"type": "array", "items": _ref("Gpu"), "description": "[]: no NVIDIA GPU."},
    },
    additionalProperties=True,
    description="A node's CPU, RAM and GPUs, as it reports them every few seconds, signed, "
    "apart from its announcement.  This node checks a peer's report for its signature and "
    "size only: the figures are the peer's word.",
)

# ports.py status_snapshot(): each node's resources as this node last heard them.
_LIVE_RESOURCES: dict[str, Schema] = {
    "resources": {
        **_nullable(_ref("Resources")),
        "description": "Its last resource report; null when resources_state is unknown "
        "(never a stale figure passed off as live).",
    },
    "resources_state": {
        "type": "string",
        "enum": list(RESOURCE_STATES),
        "description": f"live: reported within {STALE_REPORTS} of this node's report "
        f"intervals (--resources-interval); stale: the last figures, older; unknown: none "
        f"heard, or none for {FORGET_REPORTS} intervals.",
    },
    "resources_age_s": {
        **_SECONDS_OR_NULL,
        "description": "Seconds since its report arrived; null: unknown.",
    },
}

_PEER = _obj(
    [*_ANNOUNCEMENT, *_LIVE_RESOURCES, "rtt_ms", "last_seen_s", "linked", "suspect"],
    {
        **_ANNOUNCEMENT,
        **_LIVE_RESOURCES,
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

# ModelPool.snapshot().to_wire() (meshllm/serving/pool.py): this node's own pool.
_POOL_DETAIL = _obj(
    ["models", "loaded", "held_bytes", "max_loaded", "memory_budget"],
    {
        "models": {
            "type": "array",
            "items": _obj(
                [
                    "name",
                    "state",
                    "size_bytes",
                    "in_flight",
                    "pinned",
                    "ttl_s",
                    "seconds_left",
                    "idle_s",
                    "cause",
                ],
                {
                    "name": _STRING,
                    "state": {"type": "string", "enum": _POOL_STATES},
                    "size_bytes": _COUNT,
                    "in_flight": {**_COUNT, "description": "Requests in flight, or waiting."},
                    "pinned": {"type": "boolean"},
                    "ttl_s": {
                        **_SECONDS_OR_NULL,
                        "description": "Idle seconds before it unloads; null: never.",
                    },
                    "seconds_left": {
                        **_SECONDS_OR_NULL,
                        "description": "Cooling: seconds until it unloads; else null.",
                    },
                    "idle_s": {
                        **_SECONDS_OR_NULL,
                        "description": "Loaded and idle: seconds since its last request.",
                    },
                    "cause": {**_nullable(_STRING), "description": "Failed: why; else null."},
                },
            ),
        },
        "loaded": {**_COUNT, "description": "Models holding memory."},
        "held_bytes": {**_COUNT, "description": "Bytes they hold."},
        "max_loaded": {
            **_nullable({"type": "integer", "minimum": 1}),
            "description": "Models it may hold loaded at once; null: no limit.",
        },
        "memory_budget": {
            **_nullable({"type": "integer", "minimum": 1}),
            "description": "Bytes its loaded models may hold together; null: no limit.",
        },
    },
    description="This node's model pool: its models, their TTLs and pins, what they hold.",
)

_STATUS = _obj(
    [
        *_ANNOUNCEMENT,
        *_LIVE_RESOURCES,
        "uptime_s",
        "membership",
        "idle_reason",
        "pool_detail",
        "peers",
        "catalog",
    ],
    {
        **_ANNOUNCEMENT,
        **_LIVE_RESOURCES,
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
        "pool_detail": {
            **_nullable(_ref("PoolDetail")),
            "description": "This node's pool; null on a client.",
        },
        "peers": {"type": "array", "items": _ref("Peer")},
        "catalog": {"type": "array", "items": _ref("CatalogEntry")},
    },
    additionalProperties=True,
    description="This node's announcement, its live peers and the mesh catalog.  No secret: "
    "the join token is only at /api/token.",
)

# pool_view() (meshllm/election/pool_view.py): GET /api/models.
_NULL_OR_MS: Schema = {"type": ["integer", "null"], "minimum": 0}

_POOL_NODE = _obj(
    ["node_id", "state", "since", "eta", "progress", "seconds_left", "pinned", "cause", "rpm"],
    {
        "node_id": _STRING,
        "state": {"type": "string", "enum": _POOL_STATES},
        "since": {**_NULL_OR_MS, "description": "When it entered this state (wall ms)."},
        "eta": {**_SECONDS_OR_NULL, "description": "Seconds a fetch or warm-up takes in all."},
        "progress": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 1,
            "description": "A fetch or warm-up's share done (an estimate); null: unknown.",
        },
        "seconds_left": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "Cooling: seconds before it unloads; else null.",
        },
        "pinned": {"type": "boolean"},
        "cause": {**_nullable(_STRING), "description": "Failed: why (its start); else null."},
        "rpm": {**_SECONDS, "description": "Requests a minute this node's proxy routed for it."},
    },
    description="A model on one node that has it.",
)

_POOL_MODEL = _obj(
    ["model", "state", "size_bytes", "rpm", "nodes"],
    {
        "model": _STRING,
        "state": _MESH_STATE,
        "size_bytes": {**_nullable(_COUNT), "description": "Its GGUF's size; null: unknown."},
        "rpm": {**_SECONDS, "description": "Requests a minute, all nodes' proxies together."},
        "nodes": {
            "type": "array",
            "items": _ref("PoolNode"),
            "description": "Each node that has it (never a client), by node id.",
        },
    },
    description="A catalog model's state in the mesh and on each node.",
)

# fleet_view() (meshllm/election/fleet.py): GET /api/fleet.  Figures come from peers'
# reports, so each is a finite number not below 0 (as reported, int or float), or null.
_FIGURE: Schema = _SECONDS_OR_NULL

_FLEET_GPU = _obj(
    list(_GPU["required"]),
    {
        "index": {"type": "integer", "description": "As reported; else its place in the list."},
        "name": {**_STRING, "description": 'As reported; else "GPU <index>".'},
        "uuid": _nullable(_STRING),
        "util_percent": _FIGURE,
        "vram_total": _FIGURE,
        "vram_used": _FIGURE,
        "temperature_c": _FIGURE,
        "power_w": _FIGURE,
        "power_limit_w": _FIGURE,
    },
    description="A GPU of a node; a reading it gives no figure for is null.",
)

_FLEET_NODE = _obj(
    [
        "node_id",
        "role",
        "memory_kind",
        "resources_state",
        "age_s",
        "cpu_count",
        "cpu_percent",
        "load_avg",
        "ram_used",
        "ram_total",
        "gpus",
        "endpoints",
    ],
    {
        "node_id": _STRING,
        "role": {"type": "string", "enum": list(ROLES)},
        "memory_kind": {
            "type": "string",
            "enum": list(MEMORY_KINDS),
            "description": "What it lends to models: vram (its GPUs'), or ram (CPU-only).",
        },
        "resources_state": {
            **_LIVE_RESOURCES["resources_state"],
            "description": "unknown: every figure below is null.",
        },
        "age_s": {**_FIGURE, "description": "Seconds since its figures were reported."},
        "cpu_count": _FIGURE,
        "cpu_percent": _FIGURE,
        "load_avg": {
            **_nullable({"type": "array", "items": _SECONDS, "minItems": 3, "maxItems": 3}),
            "description": "1, 5 and 15 minutes; null: unknown, or not three figures.",
        },
        "ram_used": _FIGURE,
        "ram_total": _FIGURE,
        "gpus": {
            **_nullable({"type": "array", "items": _ref("FleetGpu")}),
            "description": "null: unknown; []: a node known to have none.",
        },
        "endpoints": {**_STRINGS, "description": "Ids of the endpoints it fronts."},
    },
    description="A node and its live resources, as this node last heard them.",
)

_MEMORY_SUM = _obj(
    ["total", "used", "free", "nodes"],
    {
        "total": {**_COUNT, "description": "Bytes."},
        "used": {**_COUNT, "description": "Bytes."},
        "free": {**_COUNT, "description": "Bytes."},
        "nodes": {**_COUNT, "description": "Nodes counted."},
    },
)

_FLEET_MODEL = _obj(
    ["model", "state", "hot", "nodes", "endpoints"],
    {
        "model": _STRING,
        "state": _MESH_STATE,
        "hot": {**_COUNT, "description": "Nodes and endpoints answering for it right now."},
        "nodes": {
            "type": "array",
            "items": _obj(
                ["node_id", "state"],
                {"node_id": _STRING, "state": {"type": "string", "enum": _POOL_STATES}},
            ),
            "description": "Nodes that have it themselves (not only through an endpoint; "
            "never a client), by node id.",
        },
        "endpoints": {
            "type": "array",
            "items": _obj(
                ["node_id", "endpoint_id", "name", "state", "warm"],
                {
                    "node_id": {**_STRING, "description": "The node that fronts it."},
                    "endpoint_id": _STRING,
                    "name": _STRING,
                    "state": _ENDPOINT_STATE,
                    "warm": {"type": "boolean", "description": "Loaded there now."},
                },
            ),
            "description": "Endpoints that have it, by node and endpoint id.",
        },
    },
    description="A model and every place that has it.",
)

_FLEET = _obj(
    ["summary", "models", "memory", "hosts", "nodes"],
    {
        "summary": {
            "type": "string",
            "description": "How many places have each model hot, most first: '3 hosts "
            f"have llama3, 1 has codellama'; '{NOTHING_HOT}' when none does.",
        },
        "models": {
            "type": "array",
            "items": _ref("FleetModel"),
            "description": "Every model a node or an endpoint has: the hot in most places "
            "first, then by name.",
        },
        "memory": _obj(
            [*MEMORY_KINDS, "unknown_nodes", "stale_nodes"],
            {
                **{kind: _ref("MemorySum") for kind in MEMORY_KINDS},
                "unknown_nodes": {
                    **_COUNT,
                    "description": "Nodes lending memory with no figures: in no sum.",
                },
                "stale_nodes": {
                    **_COUNT,
                    "description": "Nodes whose stale figures are in the sums.",
                },
            },
            description="Memory for models, over the nodes that lend it (not clients): "
            "VRAM of nodes whose memory_kind is vram, RAM of CPU-only ones.",
        ),
        "hosts": _obj(list(ROLES), {role: _COUNT for role in ROLES}, description="Nodes by role."),
        "nodes": {
            "type": "array",
            "items": _ref("FleetNode"),
            "description": "Every node (this one too), by node id.",
        },
    },
    description="The mesh at a glance.",
)

# GET /api/endpoints (meshllm/commands.py EndpointCommands.listed(), EndpointSet.listed()).
_ENDPOINT = _obj(
    ["id", "node_id", "url", "kind", "name", "has_api_key", "state"],
    {
        "id": _STRING,
        "node_id": {**_STRING, "description": "The node that fronts it."},
        "url": {
            **_nullable(_STRING),
            "description": "Its URL, without credentials; null for another node's (not announced).",
        },
        "kind": {
            "type": "string",
            "enum": list(KINDS),
            "description": f"{AUTO}: not detected yet (only this node's say so).",
        },
        "name": {**_STRING, "description": "Its name, else its URL."},
        "has_api_key": {
            "type": ["boolean", "null"],
            "description": "Whether requests to it carry an API key (never shown); null "
            "for another node's.",
        },
        "origin": {
            "type": "string",
            "enum": ["stored", "flag or found"],
            "description": "This node's only: added at run time (kept in "
            "<state-dir>/endpoints.json), or from --endpoint or a local Ollama found.",
        },
        "state": _ENDPOINT_STATE,
        "latency_ms": {
            **_SECONDS_OR_NULL,
            "description": "Its last health poll's round trip; absent (this node's) or null "
            "(a peer's): none yet.",
        },
        "error": {
            **_nullable(_STRING),
            "description": "Why it is not up; absent (this node's) or null (a peer's) when "
            "it is up or none is known.",
        },
        "models": _ENDPOINT_MODELS,
    },
    description="An endpoint of a node: this node's in full, peers' as announced; never an "
    "API key.",
)

_ENDPOINT_ID: Schema = {"type": "string", "pattern": f"^[0-9a-f]{{{ID_CHARS}}}$"}

# fleet_routes.py ENDPOINT_FIELDS: the fields POST /api/endpoints takes (a KeyError here
# when one is added there and not described).
_ENDPOINT_FIELD_SCHEMAS: dict[str, Schema] = {
    "url": {
        "type": "string",
        "maxLength": MAX_URL_CHARS,
        "description": "http:// or https:// (none: http://), a host, an optional port and "
        "path (a trailing /v1 is dropped); no credentials (give api_key), query or "
        "fragment.  An endpoint at the same URL is replaced.",
    },
    "kind": {
        "type": ["string", "null"],
        "enum": [*KINDS, None],
        "description": f"{OPENAI} (/v1/models), {OLLAMA} (/api/tags), or {AUTO} (tried in "
        f"turn; also when left out or null).",
    },
    "name": {
        "type": ["string", "null"],
        "pattern": f"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{{0,{MAX_ENDPOINT_NAME_CHARS - 1}}}$",
    },
    "api_key": {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": MAX_API_KEY_CHARS,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
        "description": "Sent as a bearer token with every request forwarded to it; "
        "stored on the node that fronts it (<state-dir>/endpoints.json, mode 0600), "
        "never shown back.",
    },
    "node": {
        **_nullable(_STRING),
        "description": "The node to add it on; absent or null: this one.  Another node "
        "needs the mesh owner key on this machine.",
    },
}

_ENDPOINT_REQUEST = _obj(
    ["url"],
    {name: _ENDPOINT_FIELD_SCHEMAS[name] for name in ENDPOINT_FIELDS},
    additionalProperties=False,
    description="Other fields are refused (400).",
)

_ENDPOINT_RECORD = _obj(
    ["id", "url", "kind", "name", "has_api_key", "node_id"],
    {
        "id": _ENDPOINT_ID,
        "url": {**_STRING, "description": "As stored: scheme and host in lower case."},
        "kind": {"type": "string", "enum": list(KINDS), "description": "As asked for."},
        "name": _nullable(_STRING),
        "has_api_key": {"type": "boolean"},
        "node_id": _STRING,
    },
    description="The endpoint added on this node.",
)

_PENDING_ENDPOINT = _obj(
    ["id", "url", "node_id", "pending"],
    {
        "id": {"type": "null", "description": "Not known here: the node gets a statement."},
        "url": {**_STRING, "description": "As given."},
        "node_id": _STRING,
        "pending": {"const": True},
    },
    description="An endpoint asked of another node (owner-signed): it adds it when it gets "
    "the statement, and announces it then; an error there is only in its log.",
)

# meshllm/events.py: the events of GET /api/events (each event's JSON is its data line).
_EVENT_RECORD: dict[str, Schema] = {
    "node_id": _STRING,
    "model": _STRING,
    "since": _NULL_OR_MS,
    "eta": _SECONDS_OR_NULL,
    "until": _NULL_OR_MS,
    "pinned": {"type": "boolean"},
    "cause": {**_nullable(_STRING), "description": "Failed: why; else null."},
}

_MESH_EVENT: Schema = {
    "oneOf": [
        _obj(
            ["type", "at", "models"],
            {
                "type": {"const": "snapshot"},
                "at": _WALL_MS,
                "models": {
                    "type": "array",
                    "items": _obj(
                        [*_EVENT_RECORD, "state"],
                        {**_EVENT_RECORD, "state": {"type": "string", "enum": _POOL_STATES}},
                    ),
                    "description": "Every (node, model), cold ones too, by node and model.",
                },
            },
            description="First on every stream: the mesh's models as they are.",
        ),
        _obj(
            [*_EVENT_RECORD, "type", "state", "previous", "at"],
            {
                "type": {"const": "model_state"},
                **_EVENT_RECORD,
                "state": {
                    **_NULLABLE_POOL_STATE,
                    "description": "null: the model left the node.",
                },
                "previous": {
                    **_NULLABLE_POOL_STATE,
                    "description": "null: it was not on the node (or the node is new).",
                },
                "at": _WALL_MS,
            },
            description="A model's record on a node changed.",
        ),
        _obj(
            ["type", "node_id", "at"],
            {
                "type": {"type": "string", "enum": ["node_joined", "node_left"]},
                "node_id": _STRING,
                "at": _WALL_MS,
            },
            description="A node joined (its models but cold ones follow, as model_state) or left.",
        ),
        _obj(
            ["type", "row"],
            {"type": {"const": "request"}, "row": _ref("HistoryRow")},
            description="A request this node recorded, as its history row (never its prompt "
            "or answer); only to a caller with the admin token or an admin key.",
        ),
        _obj(
            ["type"],
            {"type": {"const": "overflow"}},
            description=f"Last: this client fell over {MAX_QUEUED_EVENTS} events behind and "
            "the stream ends; reconnect for a fresh snapshot.",
        ),
    ]
}

_MESH_SSE_EVENT = _obj(
    ["event", "data"],
    {
        "event": {
            "type": "string",
            "enum": ["snapshot", "model_state", "node_joined", "node_left", "request", "overflow"],
            "description": "The data's type.",
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": _ref("MeshEvent"),
            "description": f"The event, as one line of JSON.  A ': ping' comment follows "
            f"every {HEARTBEAT_S:g} s of quiet.",
        },
    },
    description="One server-sent event of the mesh's event stream.",
)

# meshllm/access/keys.py ApiKey.public() and meshllm/access/service.py MeshAccess: the API
# keys of GET and POST /api/keys.
_KEY_ID: Schema = {"type": "string", "pattern": f"^[0-9a-f]{{{KEY_ID_CHARS}}}$"}
_RATE: Schema = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_RATE}
_KEY_SCOPE: Schema = {
    "type": "string",
    "enum": list(KEY_SCOPES),
    "description": "inference: the /v1 routes; admin: those and the admin routes, from anywhere.",
}

_KEY_PUBLIC: dict[str, Schema] = {
    "id": {**_KEY_ID, "description": "Not secret: it names the key in listings and the history."},
    "name": _STRING,
    "scope": _KEY_SCOPE,
    "models": {**_STRINGS, "description": "The models it may use; []: every model."},
    "expires": {"type": ["number", "null"], "description": "Unix seconds; null: never."},
    "rpm": {**_RATE, "description": "Requests a minute, mesh-wide; null: no limit."},
    "tpm": {**_RATE, "description": "Tokens a minute (in and out), mesh-wide; null: no limit."},
    "created": {"type": "number", "description": "Unix seconds."},
}

_API_KEY = _obj(
    [*_KEY_PUBLIC, "revoked", "expired", "usage_minute"],
    {
        **_KEY_PUBLIC,
        "revoked": {"type": "boolean", "description": "Revoked for good: it opens nothing."},
        "expired": {"type": "boolean"},
        "usage_minute": _obj(
            ["requests", "tokens"],
            {"requests": _COUNT, "tokens": _COUNT},
            description="What it used in the last minute, mesh-wide (as this node heard).",
        ),
    },
    description="An API key; never its secret nor its hash.",
)

_NEW_KEY = _obj(
    [*_KEY_PUBLIC, "key"],
    {
        **_KEY_PUBLIC,
        "key": {
            "type": "string",
            "pattern": f"^{KEY_PREFIX}[0-9a-f]{{{KEY_ID_CHARS}}}-[A-Za-z0-9_-]{{{SECRET_CHARS}}}$",
            "description": "The key's text, to send as a bearer token or x-api-key: shown "
            "here only, never again (the mesh keeps its hash).",
        },
    },
    description="The key created.",
)

_KEY_MODEL_NAME: Schema = {
    "type": "string",
    "maxLength": MAX_MODEL_CHARS,
    "pattern": f"^{_KEY_MODEL.pattern}$",
}
_DURATION_AHEAD = r"^(\d+(\.\d*)?[smhdw])+$"  # meshllm.serving.durations.period()

# meshllm/access/service.py parse_key_fields().
_KEY_REQUEST = _obj(
    [],
    {
        "scope": {**_KEY_SCOPE, "default": "inference"},
        "models": {
            "anyOf": [
                {
                    "type": "array",
                    "items": _KEY_MODEL_NAME,
                    "maxItems": MAX_KEY_MODELS,
                    "uniqueItems": True,
                },
                {"type": "string", "description": "Names separated by commas."},
                {"type": "null"},
            ],
            "description": "The models it may use; absent, null or empty: every model.",
        },
        "expires": {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION_AHEAD},
                {"type": "null"},
            ],
            "description": 'How long it lasts from now: seconds, or a span such as "12h", '
            '"30d" or "2w" (units s, m, h, d, w); absent or null: forever.',
        },
        "rpm": {**_RATE, "description": "Requests a minute, mesh-wide; absent or null: no limit."},
        "tpm": {
            **_RATE,
            "description": "Tokens a minute (in and out), mesh-wide; absent or null: no limit.",
        },
        "name": {
            "type": "string",
            "maxLength": MAX_KEY_NAME_CHARS,
            "pattern": f"^{_KEY_NAME.pattern}$",
            "default": "",
        },
    },
    additionalProperties=False,
    description="Other fields are refused (400).",
)

# meshllm/records/record.py RequestRecord.to_dict(), merged by meshllm/records/query.py
# merge_history(): a row of GET /api/history (a KeyError here when a field is added there
# and not described).
_ROW_FIELDS: dict[str, Schema] = {
    "request_id": {**_STRING, "description": "16 hex digits, made by the node it entered."},
    "time": {"type": "number", "description": "When it came in (Unix seconds)."},
    "kind": {
        "type": "string",
        "enum": [str(k) for k in RecordKind],
        "description": "local: it entered a node whose own backend answered it; routed: it "
        'entered entry_node, which sent it to serving_node (none: serving_node is ""); '
        "served: serving_node answered it for entry_node.",
    },
    "entry_node": {**_STRING, "description": "The node it entered."},
    "serving_node": {**_STRING, "description": 'The node whose backend answered; "": none.'},
    "model": {
        **_STRING,
        "description": 'The model it went to, else the one asked for ("": none).',
    },
    "path": {**_STRING, "description": "/v1/chat/completions, ..."},
    "status": {
        "type": "integer",
        "description": f"The status answered; {CLIENT_GONE}: the client went away first.",
    },
    "latency_ms": {**_SECONDS, "description": "From its arrival to its answer's last byte."},
    "ttft_ms": {
        **_SECONDS_OR_NULL,
        "description": "To the first token (a stream's first event, else the whole answer); "
        "null: none came.",
    },
    "key_id": {
        **_STRING,
        "description": f'The API key\'s id; {ADMIN_TOKEN_ID}: the admin token; "": none.',
    },
    "tokens_in": _COUNT,
    "tokens_out": _COUNT,
    "stream": {"type": "boolean"},
    "energy_j": {
        **_SECONDS_OR_NULL,
        "description": "Joules serving it took on the serving node; null: not known.",
    },
    "error": {**_STRING, "description": 'Why it failed, in a line; "": it did not.'},
    "prompt": {
        **_nullable(_STRING),
        "description": "The request body: with --log-prompts, from the node that logged it "
        "only (never sent to another node).",
    },
    "answer": {**_nullable(_STRING), "description": "The answer's text; as prompt."},
}
_ROW_KEYS = [f.name for f in fields(RequestRecord)]

_HISTORY_ROW = _obj(
    [*(name for name in _ROW_KEYS if name not in PRIVATE_FIELDS), "seen_by"],
    {
        **{name: _ROW_FIELDS[name] for name in _ROW_KEYS},
        "seen_by": {
            **_STRINGS,
            "description": "The nodes that recorded it, the one it entered before the one "
            "that served it: their rows of it are merged into this one.",
        },
    },
    description="One request.",
)

_MISSING: Schema = {
    "type": "object",
    "additionalProperties": _STRING,
    "description": "Node id -> why it did not answer (in time): its rows are not in.",
}
_NODES_ASKED: Schema = {**_STRINGS, "description": "The nodes whose rows are in, this one too."}

_HISTORY = _obj(
    ["rows", "next_cursor", "nodes", "missing"],
    {
        "rows": {
            "type": "array",
            "items": _ref("HistoryRow"),
            "description": "Newest first, one row a request.",
        },
        "next_cursor": {
            **_nullable(_STRING),
            "description": "The cursor of the next (older) page; null: no more.",
        },
        "nodes": _NODES_ASKED,
        "missing": _MISSING,
    },
    description="A page of the request history.",
)

# meshllm/records/history.py HistoryStore.usage(), priced by meshllm/records/cost.py
# summarize().
_NUMBER_OR_NULL: Schema = {"type": ["number", "null"]}
_USAGE_GROUP = _obj(
    [
        "key_id",
        "model",
        "requests",
        "errors",
        "tokens_in",
        "tokens_out",
        "energy_j",
        "latency_ms_sum",
        "cost",
        "cost_per_request",
        "cost_per_mtok",
        "cost_source",
        "currency",
        "energy_kwh",
    ],
    {
        "bucket": {"type": "integer", "description": "With bucket: its start (Unix seconds)."},
        "key_id": {**_STRING, "description": 'The API key\'s id; "": none.'},
        "model": _STRING,
        "requests": _COUNT,
        "errors": {**_COUNT, "description": "Requests answered with a status of 400 or more."},
        "tokens_in": _COUNT,
        "tokens_out": _COUNT,
        "energy_j": {**_NUMBER_OR_NULL, "description": "Joules; null: not known."},
        "latency_ms_sum": {"type": "number"},
        "cost": {
            **_NUMBER_OR_NULL,
            "description": "By the price table (a cloud model), else by energy at "
            "--price-kwh; null: not known (never 0 for unknown).",
        },
        "cost_per_request": _NUMBER_OR_NULL,
        "cost_per_mtok": {**_NUMBER_OR_NULL, "description": "Per 1M tokens, in and out."},
        "cost_source": {"type": ["string", "null"], "enum": [PRICE_TABLE, ENERGY, None]},
        "currency": {
            **_nullable(_STRING),
            "description": f"{TABLE_CURRENCY} for the price table, else the energy price's.",
        },
        "energy_kwh": _NUMBER_OR_NULL,
    },
    description="The requests of one key and model (and bucket), each counted once "
    "mesh-wide: by the node that served it.",
)

_USAGE_REPORT = _obj(
    ["since", "until", "bucket_s", "usage", "totals", "nodes", "missing"],
    {
        "since": {"type": "number", "description": "Unix seconds."},
        "until": {"type": ["number", "null"], "description": "Unix seconds; null: none."},
        "bucket_s": {"type": ["integer", "null"], "enum": [*USAGE_BUCKETS_S, None]},
        "usage": {
            "type": "array",
            "items": _ref("UsageGroup"),
            "description": "By bucket, key id and model.",
        },
        "totals": _obj(
            ["requests", "errors", "tokens_in", "tokens_out", "cost"],
            {
                "requests": _COUNT,
                "errors": _COUNT,
                "tokens_in": _COUNT,
                "tokens_out": _COUNT,
                "cost": {
                    **_NUMBER_OR_NULL,
                    "description": "The sum of the known costs (currencies are not "
                    "converted); null: none is known.",
                },
            },
        ),
        "nodes": _NODES_ASKED,
        "missing": _MISSING,
    },
    description="Requests, tokens and cost over a period.",
)

# --- Ollama's API (meshllm/surfaces/ollama.py, meshllm/proxy/ollama_surface.py) --------------

_NDJSON = NDJSON_HEADERS["Content-Type"]

_OLLAMA_ERROR = _obj(
    ["error"],
    {"error": _STRING},
    additionalProperties=False,
    description="Ollama's error: a message only.",
)

_RFC3339: Schema = {
    "type": "string",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z$",
    "description": "RFC 3339, UTC.",
}
_NS: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_NS, "description": "Nanoseconds."}

_OLLAMA_MODEL: Schema = {
    "type": "string",
    "minLength": 1,
    "description": "A model of the mesh catalog, with or without ':latest'; one it does not "
    "know gets 404, never another model.  A catalog model loaded nowhere is loaded, as on "
    "/v1.",
}
_OLLAMA_KEEP_ALIVE: Schema = {
    "anyOf": [*_COMMON["keep_alive"]["anyOf"], {"type": "null"}],
    "description": "How long the model stays loaded after this request, on the node that "
    'answers it: seconds (300), or a Go duration ("90s", "15m", "1h30m"); 0 unloads it '
    "right after, a negative value never.  Anything else gets 400.",
}
_NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
_NULLABLE_INT: Schema = {"type": ["integer", "null"]}
# meshllm/surfaces/ollama.py OPTIONS: the options that go on (a KeyError here when one is
# added there and not described).
_OPTION_SCHEMAS: dict[str, Schema] = {
    "temperature": _NULLABLE_NUMBER,
    "top_p": _NULLABLE_NUMBER,
    "top_k": _NULLABLE_INT,
    "seed": _NULLABLE_INT,
    "stop": {"anyOf": [_STRING, _STRINGS, {"type": "null"}]},
    "num_predict": {**_NULLABLE_INT, "description": "max_tokens; 0 or less (-1, -2): no limit."},
    "presence_penalty": _NULLABLE_NUMBER,
    "frequency_penalty": _NULLABLE_NUMBER,
}
_OLLAMA_OPTIONS: Schema = {
    **_obj([], {name: _OPTION_SCHEMAS[name] for name in OPTIONS}, additionalProperties=True),
    "type": ["object", "null"],
    "description": "These go on to the backend; the others (num_ctx, num_gpu, ...) are the "
    "serving node's to choose, and dropped.",
}
# _common() in meshllm/surfaces/ollama.py: what chat and generate share.
_OLLAMA_GENERATION: dict[str, Schema] = {
    "stream": {
        "type": ["boolean", "null"],
        "description": f"Absent, null or true: the answer is {_NDJSON}; false: one object.",
    },
    "format": {
        "anyOf": [{"enum": ["json", ""]}, {"type": "object"}, {"type": "null"}],
        "description": '"json": a JSON answer; a JSON schema: an answer in it.',
    },
    "options": _OLLAMA_OPTIONS,
    "keep_alive": _OLLAMA_KEEP_ALIVE,
}
_IMAGES: Schema = {
    "type": ["array", "null"],
    "items": {"type": "string", "minLength": 1},
    "description": "Base64 images (or data: URLs).",
}

_OLLAMA_TOOL_CALL_IN = _obj(
    ["function"],
    {
        "id": _STRING,
        "function": _obj(
            ["name"],
            {
                "name": {"type": "string", "minLength": 1},
                "arguments": {
                    "anyOf": [{"type": "object"}, _STRING, {"type": "null"}],
                    "description": "An object; or OpenAI's form, the JSON text of one.",
                },
            },
            additionalProperties=True,
        ),
    },
    additionalProperties=True,
)

_OLLAMA_MESSAGE = _obj(
    ["role"],
    {
        "role": {"type": "string", "enum": sorted(OLLAMA_ROLES)},
        "content": {"type": ["string", "null"]},
        "images": {**_IMAGES, "description": "A user message's base64 images (another's: 400)."},
        "tool_calls": {
            "type": ["array", "null"],
            "items": _ref("OllamaToolCallRequest"),
            "description": "An assistant message's; others' are ignored.",
        },
        "tool_name": {**_STRING, "description": "A tool message's: the tool that answered."},
    },
    additionalProperties=True,
    description="Other fields (thinking, ...) are ignored.",
)

_OLLAMA_CHAT_REQUEST = _obj(
    ["model"],
    {
        "model": _OLLAMA_MODEL,
        "messages": {
            "type": ["array", "null"],
            "items": _ref("OllamaMessage"),
            "description": "Absent, null or []: a load request.",
        },
        "tools": {
            "type": ["array", "null"],
            "items": _obj(
                ["function"],
                {"type": _STRING, "function": {"type": "object"}},
                additionalProperties=True,
            ),
            "description": "OpenAI's function tools (type may be left out).",
        },
        **_OLLAMA_GENERATION,
    },
    additionalProperties=True,
    description="Ollama's chat request.  Other fields (think, ...) are ignored.",
)

_NOT_SUPPORTED: Schema = {"enum": ["", None]}

_OLLAMA_GENERATE_REQUEST = _obj(
    ["model"],
    {
        "model": _OLLAMA_MODEL,
        "prompt": {
            "type": ["string", "null"],
            "description": "Empty, with no images: a load request (the rest is not read).",
        },
        "system": {"type": ["string", "null"]},
        "images": _IMAGES,
        "raw": {
            "type": ["boolean", "null"],
            "description": "true: the prompt goes as it is to /v1/completions (no images, no "
            "format); else it is a chat of system and prompt.",
        },
        "suffix": {
            **_NOT_SUPPORTED,
            "description": "Not supported (400): the mesh has no fill-in-the-middle route.",
        },
        "template": {
            **_NOT_SUPPORTED,
            "description": "Not supported (400): the serving node applies the model's own "
            "template; send raw: true with the prompt formatted.",
        },
        **_OLLAMA_GENERATION,
    },
    additionalProperties=True,
    description="Ollama's generate request.  Other fields (context, think, ...) are ignored.",
)

_OLLAMA_EMBED_REQUEST = _obj(
    ["model"],
    {
        "model": _OLLAMA_MODEL,
        "input": {
            "anyOf": [_STRING, _STRINGS, {"type": "null"}],
            "description": 'Absent, null, "" or []: a load request.',
        },
        "dimensions": {"type": ["integer", "null"], "minimum": 1},
        "truncate": {
            "type": ["boolean", "null"],
            "description": "Not read: an input over the model's context is refused either way.",
        },
        "keep_alive": _OLLAMA_KEEP_ALIVE,
    },
    additionalProperties=True,
    description="Ollama's embed request.  Other fields (options, ...) are ignored.",
)

_OLLAMA_EMBEDDINGS_REQUEST = _obj(
    ["model"],
    {
        "model": _OLLAMA_MODEL,
        "prompt": {"type": ["string", "null"], "description": "Empty: a load request."},
        "keep_alive": _OLLAMA_KEEP_ALIVE,
    },
    additionalProperties=True,
    description="Ollama's legacy embeddings request.  Other fields are ignored.",
)

_OLLAMA_SHOW_REQUEST: Schema = {
    **_obj(
        [],
        {"model": _STRING, "name": {**_STRING, "description": "Ollama's older name for model."}},
        additionalProperties=True,
    ),
    "anyOf": [
        {"required": ["model"], "properties": {"model": {"minLength": 1}}},
        {"required": ["name"], "properties": {"name": {"minLength": 1}}},
    ],
    "description": "A model of the mesh catalog, with or without ':latest'.  Other fields "
    "(verbose, ...) are ignored.",
}

# The answers: chat_answer, generate_answer, embed_answer, legacy_embeddings_answer,
# load_answer and StreamTranslator's lines.
_OLLAMA_DONE: dict[str, Schema] = {
    "done": {"const": True},
    "done_reason": {
        "type": "string",
        "description": "The backend's finish_reason (stop, length, ...; stop after tool "
        "calls); a load request's: load, or unload for keep_alive 0.",
    },
    "total_duration": {**_NS, "description": "The whole answer, as this node waited for it."},
    "load_duration": {**_NS, "description": "0: a wait for the model is in total_duration."},
    "prompt_eval_duration": {**_NS, "description": "From llama-server's timings, else 0."},
    "eval_duration": {
        **_NS,
        "description": "From llama-server's timings, else total_duration less load_duration.",
    },
    "prompt_eval_count": _COUNT,
    "eval_count": _COUNT,
}
_OLLAMA_HEAD: dict[str, Schema] = {"model": _STRING, "created_at": _RFC3339}

_OLLAMA_TOOL_CALL = _obj(
    ["function"],
    {
        "id": _STRING,
        "function": _obj(
            ["index", "name", "arguments"],
            {"index": _COUNT, "name": _STRING, "arguments": {"type": "object"}},
            additionalProperties=False,
        ),
    },
    additionalProperties=False,
)

_OLLAMA_REPLY = _obj(
    ["role", "content"],
    {
        "role": {"const": "assistant"},
        "content": _STRING,
        "thinking": {**_STRING, "description": "The backend's reasoning_content."},
        "tool_calls": {"type": "array", "items": _ref("OllamaToolCall")},
    },
    additionalProperties=False,
)

_OLLAMA_CHAT = _obj(
    [*_OLLAMA_HEAD, "message", "done", "done_reason"],
    {**_OLLAMA_HEAD, "message": _ref("OllamaReply"), **_OLLAMA_DONE},
    additionalProperties=False,
    description="A whole chat answer, or a stream's done line; a load request's has no "
    "counts or durations.",
)

_OLLAMA_CHAT_LINE: Schema = {
    "oneOf": [
        _obj(
            [*_OLLAMA_HEAD, "message", "done"],
            {**_OLLAMA_HEAD, "message": _ref("OllamaReply"), "done": {"const": False}},
            additionalProperties=False,
            description="A piece: text, thinking, or the tool calls, each whole.",
        ),
        _ref("OllamaChatResponse"),
        _ref("OllamaError"),
    ],
    "description": "One line of a streamed chat: pieces, then the done line; an error line "
    "ends a stream that broke off.",
}

_OLLAMA_GENERATE = _obj(
    [*_OLLAMA_HEAD, "response", "done", "done_reason"],
    {
        **_OLLAMA_HEAD,
        "response": _STRING,
        "thinking": {**_STRING, "description": "The backend's reasoning_content."},
        **_OLLAMA_DONE,
    },
    additionalProperties=False,
    description="A whole generate answer, or a stream's done line; a load request's has no "
    "counts or durations.",
)

_OLLAMA_GENERATE_LINE: Schema = {
    "oneOf": [
        _obj(
            [*_OLLAMA_HEAD, "response", "done"],
            {
                **_OLLAMA_HEAD,
                "response": _STRING,
                "thinking": _STRING,
                "done": {"const": False},
            },
            additionalProperties=False,
            description="A piece of text or thinking.",
        ),
        _ref("OllamaGenerateResponse"),
        _ref("OllamaError"),
    ],
    "description": "One line of a streamed generate: pieces, then the done line; an error "
    "line ends a stream that broke off.",
}

_FLOATS: Schema = {"type": "array", "items": {"type": "number"}}

_OLLAMA_EMBED = _obj(
    ["model", "embeddings"],
    {
        "model": _STRING,
        "embeddings": {"type": "array", "items": _FLOATS, "description": "One an input."},
        "total_duration": _NS,
        "load_duration": {**_NS, "description": "0: a wait for the model is in total_duration."},
        "prompt_eval_count": _COUNT,
    },
    additionalProperties=False,
    description="A load request's: model and embeddings [] only.",
)

_OLLAMA_EMBEDDINGS = _obj(
    ["embedding"],
    {"embedding": {**_FLOATS, "description": "[]: a load request's."}},
    additionalProperties=False,
)

# The listings: tags, ps, show and version, from the mesh catalog.
_OLLAMA_DETAILS = _obj(
    ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"],
    {
        "parent_model": _STRING,
        "format": {"const": "gguf"},
        "family": {**_STRING, "description": '"": not known.'},
        "families": _STRINGS,
        "parameter_size": {**_STRING, "description": '"": not known.'},
        "quantization_level": {**_STRING, "description": '"": not known.'},
    },
    additionalProperties=False,
)

_OLLAMA_LISTED: dict[str, Schema] = {
    "name": {**_STRING, "description": "The mesh's name, with ':latest' where it has no tag."},
    "model": {**_STRING, "description": "As name."},
    "size": {**_COUNT, "description": "Its GGUF's bytes; 0: not known."},
    "digest": {
        "type": "string",
        "pattern": "^([0-9a-f]{64})?$",
        "description": 'Its GGUF\'s SHA-256, as a node announces it; "": not known.',
    },
    "details": _ref("OllamaModelDetails"),
}

_OLLAMA_TAG = _obj(
    [*_OLLAMA_LISTED, "modified_at"],
    {**_OLLAMA_LISTED, "modified_at": {**_RFC3339, "description": "Not known: the epoch."}},
    additionalProperties=False,
)

_OLLAMA_LOADED = _obj(
    [*_OLLAMA_LISTED, "expires_at", "size_vram"],
    {
        **_OLLAMA_LISTED,
        "expires_at": {
            **_RFC3339,
            "description": f"When it unloads if idle; {FOREVER}: never, or not known.",
        },
        "size_vram": {**_COUNT, "description": "0: not known."},
        "context_length": _COUNT,
    },
    additionalProperties=False,
)

_OLLAMA_SHOW = _obj(
    [
        "license",
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    ],
    {
        "license": _STRING,
        "modelfile": _STRING,
        "parameters": _STRING,
        "template": {**_STRING, "description": '"": the serving node applies its own.'},
        "details": _ref("OllamaModelDetails"),
        "model_info": {
            "type": "object",
            "description": "GGUF metadata (general.architecture, ...), where known.",
        },
        "capabilities": {
            **_STRINGS,
            "minItems": 1,
            "description": "completion or embedding, then tools, vision, ... where known.",
        },
        "modified_at": {**_RFC3339, "description": "Not known: the epoch."},
    },
    additionalProperties=False,
)

_OLLAMA_VERSION = _obj(
    ["version", "meshllm_version"],
    {
        "version": {
            "const": OLLAMA_API_VERSION,
            "description": "The Ollama release whose API this speaks: Ollama's clients gate "
            "features on it.",
        },
        "meshllm_version": _STRING,
    },
    additionalProperties=False,
)

# --- Anthropic's Messages API (meshllm/surfaces/anthropic.py) --------------------------------

_ANTHROPIC_ERROR_TYPES = sorted(
    {anthropic.error_body(status, "")["error"]["type"] for status in range(400, 600)}
)

_ANTHROPIC_ERROR = _obj(
    ["type", "error"],
    {
        "type": {"const": "error"},
        "error": _obj(
            ["type", "message"],
            {
                "type": {
                    "type": "string",
                    "enum": _ANTHROPIC_ERROR_TYPES,
                    "description": "By the HTTP status (400 invalid_request_error, 404 "
                    "not_found_error, ...; other 5xx api_error).",
                },
                "message": _STRING,
            },
            additionalProperties=False,
        ),
    },
    additionalProperties=False,
    description="Anthropic's error.",
)


def _block(kind: str, required: list[str], properties: dict[str, Schema], **extra: Any) -> Schema:
    """A content block of type ``kind``; other fields (cache_control, ...) are ignored."""
    return _obj(
        ["type", *required],
        {"type": {"const": kind}, **properties},
        additionalProperties=True,
        **extra,
    )


_NAME: Schema = {"type": "string", "minLength": 1}
_TEXT_BLOCK = _block("text", ["text"], {"text": _STRING})
_IMAGE_BLOCK = _block(
    "image",
    ["source"],
    {
        "source": {
            "oneOf": [
                _obj(
                    ["type", "media_type", "data"],
                    {
                        "type": {"const": "base64"},
                        "media_type": {"type": "string", "enum": sorted(IMAGE_MEDIA_TYPES)},
                        "data": {"type": "string", "minLength": 1},
                    },
                    additionalProperties=True,
                ),
                _obj(
                    ["type", "url"],
                    {"type": {"const": "url"}, "url": {"type": "string", "pattern": "^https?://"}},
                    additionalProperties=True,
                ),
            ]
        }
    },
)
_DOCUMENT_BLOCK = _block(
    "document",
    ["source"],
    {
        "source": _obj(
            ["type", "data"],
            {"type": {"const": "text"}, "data": _STRING},
            additionalProperties=True,
        )
    },
    description="Plain text only.",
)
_TOOL_RESULT_BLOCK = _block(
    "tool_result",
    ["tool_use_id"],
    {
        "tool_use_id": _NAME,
        "content": {
            "anyOf": [
                _STRING,
                {"type": "array", "items": {"oneOf": [_TEXT_BLOCK, _IMAGE_BLOCK, _DOCUMENT_BLOCK]}},
            ]
        },
        "is_error": {"type": "boolean"},
    },
)
_TOOL_USE_BLOCK = _block(
    "tool_use", ["id", "name", "input"], {"id": _NAME, "name": _NAME, "input": {"type": "object"}}
)
_THINKING_BLOCK = _obj(
    ["type"],
    {"type": {"type": "string", "enum": ["thinking", "redacted_thinking"]}},
    additionalProperties=True,
    description="Dropped: a backend cannot read it.",
)


def _turn(role: str, blocks: list[Schema]) -> Schema:
    return _obj(
        ["role", "content"],
        {
            "role": {"const": role},
            "content": {
                "anyOf": [
                    _STRING,
                    {"type": "array", "items": {"oneOf": blocks}, "minItems": 1},
                ]
            },
        },
        additionalProperties=True,
    )


_ANTHROPIC_MESSAGE: Schema = {
    "oneOf": [
        _turn(
            "user",
            [_TEXT_BLOCK, _IMAGE_BLOCK, _DOCUMENT_BLOCK, _TOOL_RESULT_BLOCK, _THINKING_BLOCK],
        ),
        _turn("assistant", [_TEXT_BLOCK, _TOOL_USE_BLOCK, _THINKING_BLOCK]),
    ],
    "description": "A turn; one of only thinking blocks is dropped.",
}

# _chat_body() in meshllm/surfaces/anthropic.py: what a Messages and a count_tokens
# request share.
_ANTHROPIC_CHAT: dict[str, Schema] = {
    "model": {
        **_NAME,
        "description": "A model of the mesh catalog; one it does not know gets 404, never "
        "another model.  A catalog model loaded nowhere is loaded, as on /v1.",
    },
    "messages": {"type": "array", "items": _ref("AnthropicMessageParam"), "minItems": 1},
    "system": {"anyOf": [_STRING, {"type": "array", "items": _TEXT_BLOCK}, {"type": "null"}]},
    "tools": {
        "type": ["array", "null"],
        "items": _obj(
            ["name", "input_schema"],
            {
                "type": {"enum": ["custom", None], "description": "Only custom tools."},
                "name": _NAME,
                "description": _STRING,
                "input_schema": {"type": "object"},
            },
            additionalProperties=True,
        ),
    },
    "tool_choice": {
        **_obj(
            ["type"],
            {
                "type": {"type": "string", "enum": ["auto", "any", "tool", "none"]},
                "name": {**_NAME, "description": "type tool's: the tool (required there)."},
                "disable_parallel_tool_use": {"type": "boolean"},
            },
            additionalProperties=True,
        ),
        "type": ["object", "null"],
    },
}

_ANTHROPIC_REQUEST = _obj(
    ["model", "max_tokens", "messages"],
    {
        **_ANTHROPIC_CHAT,
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_CEILING},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {
            "type": "integer",
            "minimum": 0,
            "description": "Checked, then dropped: a chat completion has none.",
        },
        "stop_sequences": _STRINGS,
        "stream": {"type": "boolean", "description": "true: the answer is a text/event-stream."},
        "metadata": {"type": "object"},
    },
    additionalProperties=True,
    description="Anthropic's Messages request, put to the mesh as a chat completion.  Other "
    "fields (thinking, service_tier, ...) are ignored.",
)

_COUNT_TOKENS_REQUEST = _obj(
    ["model", "messages"],
    {**_ANTHROPIC_CHAT},
    additionalProperties=True,
    description="A Messages request without max_tokens; the body goes on to the serving "
    "node's llama-server as it is.",
)

_ANTHROPIC_USAGE = _obj(
    ["input_tokens", "output_tokens"],
    {
        "input_tokens": {**_COUNT, "description": "Less cache reads."},
        "output_tokens": _COUNT,
        "cache_read_input_tokens": _COUNT,
    },
    additionalProperties=False,
)

_ANTHROPIC_TEXT_OUT = _obj(["type", "text"], {"type": {"const": "text"}, "text": _STRING})
_ANTHROPIC_TOOL_USE_OUT = _obj(
    ["type", "id", "name", "input"],
    {"type": {"const": "tool_use"}, "id": _STRING, "name": _STRING, "input": {"type": "object"}},
)
_ANTHROPIC_ANSWER = _obj(
    ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
    {
        "id": {"type": "string", "pattern": "^msg_"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": _STRING,
        "content": {
            "type": "array",
            "items": {"oneOf": [_ANTHROPIC_TEXT_OUT, _ANTHROPIC_TOOL_USE_OUT]},
            "description": "Text and tool calls; never thinking (the backend's reasoning is "
            "dropped).",
        },
        "stop_reason": {
            "type": ["string", "null"],
            "enum": [*sorted({"end_turn", "stop_sequence", *_ANTHROPIC_STOPS.values()}), None],
            "description": "null in message_start only.",
        },
        "stop_sequence": {
            **_nullable(_STRING),
            "description": "The stop sequence that ended it, where the backend says (vLLM).",
        },
        "usage": _ref("AnthropicUsage"),
    },
    additionalProperties=False,
    description="Anthropic's Message, from the backend's chat completion.",
)


def _stream_event(kind: str, required: list[str], properties: dict[str, Schema]) -> Schema:
    return _obj(
        ["type", *required],
        {"type": {"const": kind}, **properties},
        additionalProperties=False,
    )


_BLOCK_INDEX: dict[str, Schema] = {"index": _COUNT}

_ANTHROPIC_STREAM_EVENT: Schema = {
    "oneOf": [
        _stream_event("message_start", ["message"], {"message": _ref("AnthropicMessage")}),
        _stream_event(
            "content_block_start",
            ["index", "content_block"],
            {
                **_BLOCK_INDEX,
                "content_block": {"oneOf": [_ANTHROPIC_TEXT_OUT, _ANTHROPIC_TOOL_USE_OUT]},
            },
        ),
        _stream_event(
            "content_block_delta",
            ["index", "delta"],
            {
                **_BLOCK_INDEX,
                "delta": {
                    "oneOf": [
                        _obj(
                            ["type", field],
                            {"type": {"const": kind}, field: _STRING},
                            additionalProperties=False,
                        )
                        for kind, field in (
                            ("text_delta", "text"),
                            ("input_json_delta", "partial_json"),
                        )
                    ]
                },
            },
        ),
        _stream_event("content_block_stop", ["index"], _BLOCK_INDEX),
        _stream_event(
            "message_delta",
            ["delta", "usage"],
            {
                "delta": _obj(
                    ["stop_reason", "stop_sequence"],
                    {
                        "stop_reason": _ANTHROPIC_ANSWER["properties"]["stop_reason"],
                        "stop_sequence": _nullable(_STRING),
                    },
                    additionalProperties=False,
                ),
                "usage": {
                    **_ANTHROPIC_USAGE,
                    "required": ["output_tokens"],
                    "description": "The backend's counts; else output_tokens only, a token "
                    "an event.",
                },
            },
        ),
        _stream_event("message_stop", [], {}),
        _stream_event("ping", [], {}),
        _ref("AnthropicError"),
    ],
    "description": "The data of an event: its type is the event's name.",
}

_ANTHROPIC_SSE_EVENT = _obj(
    ["event", "data"],
    {
        "event": {
            "type": "string",
            "enum": [
                e["properties"]["type"]["const"] for e in _ANTHROPIC_STREAM_EVENT["oneOf"][:-1]
            ]
            + ["error"],
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": _ref("AnthropicStreamEvent"),
        },
    },
    description="One server-sent event of a streamed Message: message_start, then each "
    "content block's start, deltas and stop, message_delta and message_stop; ping while the "
    "model loads or the backend sends a keep-alive; an error event ends a stream that broke "
    "off.",
)

_TOKEN_COUNT = _obj(
    ["input_tokens"],
    {"input_tokens": _COUNT},
    additionalProperties=True,
    description="llama-server's count, as it answers.",
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
    "RerankRequest": _RERANK_REQUEST,
    "Rerank": _obj(
        ["results"],
        {
            "results": {
                "type": "array",
                "items": _obj(
                    ["index", "relevance_score"],
                    {"index": _COUNT, "relevance_score": {"type": "number"}},
                    additionalProperties=True,
                ),
            },
            "model": _STRING,
        },
        additionalProperties=True,
        description="The documents by relevance to the query, from a rerank model.",
    ),
    "ModelList": _MODEL_LIST,
    "Status": _STATUS,
    "Peer": _PEER,
    "CatalogEntry": _CATALOG_ENTRY,
    "PoolEntry": _POOL_ENTRY,
    "Demand": _DEMAND_ENTRY,
    "PoolDetail": _POOL_DETAIL,
    "PoolModel": _POOL_MODEL,
    "PoolNode": _POOL_NODE,
    "PoolModels": _obj(["models"], {"models": {"type": "array", "items": _ref("PoolModel")}}),
    "Resources": _RESOURCES,
    "Gpu": _GPU,
    "AnnouncedEndpoint": _ANNOUNCED_ENDPOINT,
    "EndpointModel": _ENDPOINT_MODEL,
    "Fleet": _FLEET,
    "FleetModel": _FLEET_MODEL,
    "FleetNode": _FLEET_NODE,
    "FleetGpu": _FLEET_GPU,
    "MemorySum": _MEMORY_SUM,
    "Endpoint": _ENDPOINT,
    "Endpoints": _obj(["endpoints"], {"endpoints": {"type": "array", "items": _ref("Endpoint")}}),
    "EndpointRequest": _ENDPOINT_REQUEST,
    "EndpointAdded": _obj(
        ["endpoint"],
        {"endpoint": {"oneOf": [_ref("EndpointRecord"), _ref("PendingEndpoint")]}},
    ),
    "EndpointRecord": _ENDPOINT_RECORD,
    "PendingEndpoint": _PENDING_ENDPOINT,
    "EndpointRemoved": _obj(
        ["removed", "node_id"],
        {
            "removed": {**_STRING, "description": "The endpoint's id."},
            "node_id": {**_STRING, "description": "The node it was on."},
        },
    ),
    "MeshEvent": _MESH_EVENT,
    "MeshServerSentEvent": _MESH_SSE_EVENT,
    "Health": _obj(["ok", "node_id"], {"ok": {"const": True}, "node_id": _STRING}),
    "JoinToken": _obj(["token"], {"token": {**_STRING, "description": "meshllm --join <token>"}}),
    "DropRequest": _obj(
        ["model"], {"model": {"type": "string", "minLength": 1}}, additionalProperties=True
    ),
    "Dropped": _obj(
        ["dropped", "nodes"],
        {"dropped": _STRING, "nodes": {**_STRINGS, "description": "Node ids told to drop it."}},
    ),
    "PoolCommandRequest": _obj(
        [],
        {
            "node": {
                **_STRING,
                "description": "The node to command; absent: where it makes sense (see the "
                "operation).",
            },
            "seconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_EXTEND_S,
                "description": "extend-ttl's seconds to add (required there, at most a "
                "week); other actions ignore it.",
            },
        },
        additionalProperties=True,
        description="Other fields are ignored.",
    ),
    "PoolCommandResult": _obj(
        ["model", "action", "nodes"],
        {
            "model": _STRING,
            "action": {"type": "string", "enum": list(ACTIONS)},
            "nodes": {**_STRINGS, "description": "Node ids the command went to."},
        },
    ),
    "ApiKey": _API_KEY,
    "ApiKeys": _obj(["keys"], {"keys": {"type": "array", "items": _ref("ApiKey")}}),
    "ApiKeyRequest": _KEY_REQUEST,
    "NewApiKey": _NEW_KEY,
    "ApiKeyRevoked": _obj(["id", "revoked"], {"id": _KEY_ID, "revoked": {"const": True}}),
    "HistoryRow": _HISTORY_ROW,
    "History": _HISTORY,
    "UsageGroup": _USAGE_GROUP,
    "Usage": _USAGE_REPORT,
    "OllamaError": _OLLAMA_ERROR,
    "OllamaChatRequest": _OLLAMA_CHAT_REQUEST,
    "OllamaMessage": _OLLAMA_MESSAGE,
    "OllamaToolCallRequest": _OLLAMA_TOOL_CALL_IN,
    "OllamaGenerateRequest": _OLLAMA_GENERATE_REQUEST,
    "OllamaEmbedRequest": _OLLAMA_EMBED_REQUEST,
    "OllamaEmbeddingsRequest": _OLLAMA_EMBEDDINGS_REQUEST,
    "OllamaShowRequest": _OLLAMA_SHOW_REQUEST,
    "OllamaChatResponse": _OLLAMA_CHAT,
    "OllamaChatLine": _OLLAMA_CHAT_LINE,
    "OllamaReply": _OLLAMA_REPLY,
    "OllamaToolCall": _OLLAMA_TOOL_CALL,
    "OllamaGenerateResponse": _OLLAMA_GENERATE,
    "OllamaGenerateLine": _OLLAMA_GENERATE_LINE,
    "OllamaEmbedResponse": _OLLAMA_EMBED,
    "OllamaEmbeddingsResponse": _OLLAMA_EMBEDDINGS,
    "OllamaModelDetails": _OLLAMA_DETAILS,
    "OllamaTags": _obj(
        ["models"],
        {"models": {"type": "array", "items": _OLLAMA_TAG}},
        additionalProperties=False,
        description="Every model of the mesh catalog.",
    ),
    "OllamaProcesses": _obj(
        ["models"],
        {"models": {"type": "array", "items": _OLLAMA_LOADED}},
        additionalProperties=False,
        description="The catalog models a node or an endpoint has hot (or cooling).",
    ),
    "OllamaShowResponse": _OLLAMA_SHOW,
    "OllamaVersion": _OLLAMA_VERSION,
    "AnthropicError": _ANTHROPIC_ERROR,
    "AnthropicMessagesRequest": _ANTHROPIC_REQUEST,
    "AnthropicMessageParam": _ANTHROPIC_MESSAGE,
    "AnthropicCountTokensRequest": _COUNT_TOKENS_REQUEST,
    "AnthropicMessage": _ANTHROPIC_ANSWER,
    "AnthropicUsage": _ANTHROPIC_USAGE,
    "AnthropicStreamEvent": _ANTHROPIC_STREAM_EVENT,
    "AnthropicServerSentEvent": _ANTHROPIC_SSE_EVENT,
    "AnthropicTokenCount": _TOKEN_COUNT,
}


def _error(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": _json(_ref("Error"))}
    if headers:
        response["headers"] = headers
    return response


_RESPONSES: dict[str, Schema] = {
    "InvalidJson": _error(
        "The body is not JSON, not a JSON object, 'model' is not a string, or 'keep_alive' "
        "is not a duration (invalid_json, invalid_model, invalid_keep_alive)."
    ),
    "Unauthorized": _error(
        "From this machine, neither the admin token nor a valid API key (unauthorized)."
    ),
    "KeyRequired": _error(
        "No valid API key where one is needed: none (missing_api_key), malformed or unknown "
        "(invalid_api_key), revoked (revoked_api_key) or expired (expired_api_key).",
        headers={
            "WWW-Authenticate": {
                "description": 'Bearer realm="meshllm".',
                "required": True,
                "schema": _STRING,
            }
        },
    ),
    "Forbidden": _error(
        "A web page's Origin not allowed with --cors-origin (origin_not_allowed); for "
        "inference, a key not allowed the model (model_not_allowed); for an admin route, a "
        "key whose scope is not admin (insufficient_scope), or a caller not on this machine "
        "without an admin key (forbidden); for a drop, a pool command, an endpoint change "
        "on other nodes or a key change, a node without the mesh owner key (not_mesh_owner)."
    ),
    "RateLimited": _error(
        "The key is over its requests (rpm) or tokens (tpm) a minute, mesh-wide "
        "(rate_limit_exceeded).",
        headers={
            "Retry-After": {
                "description": "Seconds until the key is admitted again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        },
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
        "The model is known but no node serves it right now and none can load it, or it "
        "is still loading after --load-timeout (no_target).",
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


def _routed(absent: str | None = None) -> dict[str, Schema]:
    """The routed headers of a 200; ``absent``: when it may lack them."""
    if absent is None:
        return _ROUTED_HEADERS
    return {
        name: {**header, "required": False, "description": f"{header['description']}  {absent}"}
        for name, header in _ROUTED_HEADERS.items()
    }


_WAITED = "Absent on a stream that waited for its model (its head went out first)."


def _in_shape(description: str, schema: Schema, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": _json(schema)}
    if headers:
        response["headers"] = headers
    return response


def _surface_responses(api: str, bad_request: str) -> dict[str, Schema]:
    """The refusals of ``api``'s inference routes, in its error shape (the schema
    ``{api}Error``); but the guard's and the body limits', which are OpenAI's, as on every
    route: 403 for an Origin (so 403 is either), 415, 421, 413, and 503 server_busy."""
    own = _ref(f"{api}Error")
    either: Schema = {"oneOf": [own, _ref("Error")]}
    return {
        f"{api}BadRequest": _in_shape(bad_request, own),
        f"{api}KeyRequired": _in_shape(
            "No valid API key where one is needed: none, malformed, unknown, revoked or expired.",
            own,
            _RESPONSES["KeyRequired"]["headers"],
        ),
        f"{api}Forbidden": _in_shape(
            "A key not allowed the model; or a web page's Origin not allowed with "
            "--cors-origin (OpenAI's error, as on every route).",
            either,
        ),
        f"{api}ModelNotFound": _in_shape("The model is not in the mesh catalog.", own),
        f"{api}RateLimited": _in_shape(
            "The key is over its requests (rpm) or tokens (tpm) a minute, mesh-wide.",
            own,
            _RESPONSES["RateLimited"]["headers"],
        ),
        f"{api}BadGateway": _in_shape(
            "No replica of the model could be reached, or the backend broke off, or its "
            "answer is not OpenAI's shape.",
            own,
        ),
        f"{api}Unavailable": _in_shape(
            "The model is known but no node serves it right now and none can load it, or it "
            "is still loading after --load-timeout; or this node holds too many request "
            "bodies (OpenAI's error: server_busy).",
            either,
            _RESPONSES["Unavailable"]["headers"],
        ),
    }


_RESPONSES.update(
    _surface_responses(
        "Ollama",
        "The body is not JSON or not an object, a field is bad (the message names it), or "
        "'keep_alive' is not a duration.",
    )
)
_RESPONSES.update(
    _surface_responses(
        "Anthropic",
        "The body is not JSON or not an object, or a field is missing or bad (the message "
        "names it): invalid_request_error.",
    )
)

_INFERENCE_ACCESS = (
    "Open while the node has no API key and listens on loopback only; else it needs a valid "
    "key, within its rate limits and allowed the model (the admin token, from this machine, "
    "counts as an admin key)."
)


def _surface(
    api: str,
    operation_id: str,
    summary: str,
    description: str,
    request: str,
    ok: Schema,
    responses: dict[str, Schema] | None = None,
) -> Schema:
    """An inference route of ``api`` (Ollama, Anthropic): put to the mesh as OpenAI's."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": f"{description}  {_INFERENCE_ACCESS}  Errors are {api}'s (a "
        "backend's own is relayed with its status); the guard's and the body limits' are "
        "OpenAI's, as on every route.",
        "tags": [api],
        "security": _ANY_KEY,
        "requestBody": {"required": True, "content": _json(_ref(request))},
        "responses": {
            "200": ok,
            "400": _response(f"{api}BadRequest"),
            "401": _response(f"{api}KeyRequired"),
            "403": _response(f"{api}Forbidden"),
            "404": _response(f"{api}ModelNotFound"),
            "413": _response("TooLarge"),
            "415": _response("UnsupportedMediaType"),
            "421": _response("MisdirectedRequest"),
            "429": _response(f"{api}RateLimited"),
            "502": _response(f"{api}BadGateway"),
            "503": _response(f"{api}Unavailable"),
            **(responses or {}),
        },
    }


def _translated(
    description: str, answer: str, absent: str | None, stream: tuple[str, str] | None = None
) -> Schema:
    """The 200 of a surface route: ``answer`` as JSON, and ``stream`` (media type, schema
    of one line or event) when it streams."""
    content = _json(_ref(answer))
    if stream is not None:
        content[stream[0]] = {"schema": _ref(stream[1])}
    return {"description": description, "headers": _routed(absent), "content": content}


_LOADED = "Absent on a load request's answer"
_OLLAMA_STREAMED = (
    f"With stream (the default), {_NDJSON}: a line a piece, then the done line with the "
    "counts and durations (an error line ends one that fails once under way: nothing comes "
    "while it waits for its model); with stream false, one object.  A load request's answer "
    "is one object."
)
_LOAD_REQUEST = (
    "A load request gets the model ready, loading it where the mesh places it if need be "
    "(as any request would), then answers done_reason load (keep_alive 0: unload) without "
    "asking it anything."
)


def _get(
    operation_id: str, summary: str, ok: Schema, errors: Schema | None = None, **extra: Any
) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, **(errors or {}), **_GUARD},
        **extra,
    }


# meshllm/proxy/access.py: who may call what.  Open to this machine (inference: while the
# node has no key and listens on loopback only), else with a valid API key.
_ANY_KEY: list[Schema] = [{}, {API_KEY_SCHEME: []}, {API_KEY_HEADER_SCHEME: []}]
# The admin routes: the admin token from this machine, or a key of scope admin.
_ADMIN: list[Schema] = [{ADMIN_SCHEME: []}, {API_KEY_SCHEME: []}, {API_KEY_HEADER_SCHEME: []}]
_ADMIN_ONLY = "From this machine with the admin token, or from anywhere with a key of scope admin."


def _page(
    operation_id: str, summary: str, ok: Schema, errors: Schema | None = None, **extra: Any
) -> Schema:
    """A read-only page (READ_ONLY_PATHS): open to this machine, else any valid API key."""
    errors = {"401": _response("KeyRequired"), **(errors or {})}
    return _get(operation_id, summary, ok, errors, security=_ANY_KEY, **extra)


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


# meshllm/records/query.py: the parameters of GET /api/history and /api/usage (a KeyError
# here when one is added there and not described).
_PARAM: Schema = {"type": "string", "maxLength": MAX_PARAM_CHARS}
_NUM = r"[0-9]+(\.[0-9]*)?"
_ISO_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?)?"
_TIME: Schema = {
    **_PARAM,
    "pattern": rf"^({_NUM}|({_NUM}[smhdw])+|{_ISO_DATE}(Z|[+-][0-9]{{2}}:[0-9]{{2}})?)$",
}
_TIME_TEXT = 'Unix seconds, ISO 8601 (UTC unless it names a zone), or a duration ago ("15m", "7d")'
_FILTERS: dict[str, Schema] = {
    "model": _query("model", _PARAM, "Only requests for this model."),
    "key": _query("key", _PARAM, "Only requests made with this key (its id)."),
    "since": _query("since", _TIME, f"At or after this time: {_TIME_TEXT}."),
    "until": _query("until", _TIME, "Before this time; as since."),
}
_SCOPE_PARAM = _query(
    "scope",
    {"type": "string", "enum": list(RECORD_SCOPES), "default": RECORD_SCOPES[0]},
    "mesh: every live node's rows; local: this node's.",
)
_HISTORY_PARAMETERS: dict[str, Schema] = {
    **_FILTERS,
    "node": _query("node", _PARAM, "Only requests this node entered or served."),
    "status": _query(
        "status",
        {"type": "string", "pattern": "^([1-5][0-9][0-9]|[1-5]xx|error|ok)$"},
        'A status ("404"), a class ("5xx"), "error" (400 and up) or "ok" (below 400).',
    ),
    "search": _query(
        "search", _PARAM, "A substring of the model, path, error or request id (any case)."
    ),
    "kind": _query("kind", {"type": "string", "enum": [str(k) for k in RecordKind]}, "As rows'."),
    "limit": _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "Rows in the page at most.",
    ),
    "cursor": _query(
        "cursor",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,400}$"},
        "The next_cursor of the page before: this page holds the rows older than it.",
    ),
    "scope": _SCOPE_PARAM,
    "format": _query(
        "format",
        {"type": "string", "enum": ["json", "csv"], "default": "json"},
        "csv: the page's rows as CSV.",
    ),
}
_HISTORY_PARAM_ORDER = [*sorted(HISTORY_PARAMS), "scope", "format"]
_USAGE_PARAMETERS: dict[str, Schema] = {
    **_FILTERS,
    "since": _query(
        "since",
        _TIME,
        f"At or after this time: {_TIME_TEXT}; absent: "
        f"{DEFAULT_USAGE_PERIOD_S / 3600:g} hours ago.",
    ),
    "bucket": _query(
        "bucket",
        {"type": "string", "enum": [*BUCKET_NAMES, *(str(s) for s in USAGE_BUCKETS_S)]},
        "Also per minute, hour or day (or 60, 3600, 86400 seconds).",
    ),
    "scope": _SCOPE_PARAM,
}
_USAGE_PARAM_ORDER = [*sorted(USAGE_PARAMS), "scope"]


def _inference(operation_id: str, summary: str, request: str, answer: str, stream: bool) -> Schema:
    content = _json(_ref(answer))
    if stream:
        content["text/event-stream"] = {"schema": _ref("ServerSentEvent")}
    ok = {
        "description": "The backend's answer, relayed; with stream: true, a text/event-stream "
        "of server-sent events, relayed event by event.",
        "headers": _routed(_WAITED if stream else None),
        "content": content,
    }
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": _INFERENCE_ACCESS,
        "tags": ["OpenAI"],
        "security": _ANY_KEY,
        "requestBody": {"required": True, "content": _json(_ref(request))},
        "responses": {
            "200": ok,
            "400": _response("InvalidJson"),
            "401": _response("KeyRequired"),
            **_GUARD,
            "404": _response("ModelNotFound"),
            "413": _response("TooLarge"),
            "415": _response("UnsupportedMediaType"),
            "429": _response("RateLimited"),
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
    admin = _ADMIN
    admin_errors = {"401": _response("Unauthorized")}
    paths: dict[str, Any] = {
        "/health": {
            "get": _get("health", "Liveness", _ok("The node is up.", "Health"), tags=["Node"])
        },
        "/api/status": {
            "get": _page(
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
                description="From this machine with the admin token "
                "(<state-dir>/admin_token) as a bearer token, or from anywhere with a key "
                "of scope admin.",
            )
        },
        "/api/drop": {
            "post": {
                "operationId": "drop",
                "summary": "Stop serving a model (admin)",
                "description": "Here if this node serves it (the node then exits), else on "
                f"every peer serving it.  {_ADMIN_ONLY}",
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
        "/api/models": {
            "get": _page(
                "poolModels",
                "Every catalog model's state in the mesh and on each node",
                _ok("The mesh's model pool, by model.", "PoolModels"),
                tags=["Node"],
            )
        },
        "/api/models/{name}/{action}": {
            "post": {
                "operationId": "poolCommand",
                "summary": "Load, unload, pin, unpin or extend-ttl a model (admin)",
                "description": "On the node named by 'node', else where it makes sense: "
                "load where the placement rule puts it; unload, unpin and extend-ttl on "
                "every node that has it loaded; pin there too, or on the placement's node "
                "when it is loaded nowhere.  A command for another node needs the mesh "
                f"owner key on this machine.  {_ADMIN_ONLY}  The body may be empty (still "
                "sent as application/json).",
                "tags": ["Admin"],
                "security": admin,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "The model; it may hold '/'.",
                    },
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(ACTIONS)},
                    },
                ],
                "requestBody": {
                    "required": False,
                    "content": _json(_ref("PoolCommandRequest")),
                },
                "responses": {
                    "200": _ok("The nodes the command went to.", "PoolCommandResult"),
                    "400": _error(
                        "The body is not JSON (invalid_json), not an object or 'node' not "
                        "a string (invalid_request), or an unknown action or bad seconds "
                        "(pool_command_refused)."
                    ),
                    **admin_errors,
                    **_GUARD,
                    "404": _error(
                        "No node has the model, or no live node has that id (pool_command_refused)."
                    ),
                    "409": _error(
                        "Refused: it cannot be loaded, is loaded nowhere or not loaded "
                        "there, or the node has no pool (pool_command_refused)."
                    ),
                    "413": _response("TooLarge"),
                    "415": _response("UnsupportedMediaType"),
                    "503": _error(
                        "No link to the node to command right now (pool_command_refused)."
                    ),
                },
            }
        },
        "/api/events": {
            "get": _page(
                "events",
                "The mesh's model-state events, as server-sent events",
                {
                    "description": "A text/event-stream that does not end: a snapshot event, "
                    "then an event for each change (model_state, node_joined, node_left); "
                    "an overflow event ends it when this client falls behind.",
                    "content": {"text/event-stream": {"schema": _ref("MeshServerSentEvent")}},
                },
                {
                    "503": _error(
                        f"{MAX_SUBSCRIBERS} clients are on the stream already (server_busy).",
                        headers={
                            "Retry-After": {
                                "description": f"Seconds to wait: {RETRY_AFTER_S}.",
                                "required": True,
                                "schema": {"type": "integer", "minimum": 0},
                            }
                        },
                    )
                },
                tags=["Node"],
            )
        },
        "/api/fleet": {
            "get": _page(
                "fleet",
                "The mesh at a glance: models and where they are hot, memory, nodes",
                _ok(
                    "Every model with the nodes and endpoints that have it, the memory for "
                    "models, hosts by role and each node's live resources.",
                    "Fleet",
                ),
                tags=["Node"],
            )
        },
        "/api/endpoints": {
            "get": _page(
                "listEndpoints",
                "Every node's endpoints, their state and models",
                _ok(
                    "This node's endpoints, then its peers' (as announced), by node id and "
                    "endpoint id; never an API key.",
                    "Endpoints",
                ),
                tags=["Node"],
                parameters=[
                    {
                        "name": "refresh",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                        "description": "1: poll this node's endpoints and discover their "
                        "models before answering.",
                    }
                ],
            ),
            "post": {
                "operationId": "addEndpoint",
                "summary": "Front an OpenAI-compatible or Ollama server for the mesh (admin)",
                "description": "Here, or on the node named by 'node' (that needs the mesh "
                "owner key on this machine).  Here it is stored (at most "
                f"{MAX_STORED_ENDPOINTS}), kept after restarts, and polled once before the "
                "answer; its models are served to the mesh while it is up.  "
                f"{_ADMIN_ONLY}",
                "tags": ["Admin"],
                "security": admin,
                "requestBody": {"required": True, "content": _json(_ref("EndpointRequest"))},
                "responses": {
                    "201": _ok(
                        "The endpoint added here, or asked of another node.", "EndpointAdded"
                    ),
                    "400": _error(
                        "The body is not JSON (invalid_json), not an object of the fields "
                        "above or a field not a string (invalid_request), or a bad url, kind, "
                        "name or api_key, or too many endpoints stored (invalid_endpoint)."
                    ),
                    **admin_errors,
                    **_GUARD,
                    "404": _error("No live node has that id (not_found)."),
                    "409": _error("This node is a lite client: it fronts none (refused)."),
                    "413": _response("TooLarge"),
                    "415": _response("UnsupportedMediaType"),
                    "503": _error("No link to that node right now (no_link)."),
                },
            },
        },
        "/api/endpoints/{id}": {
            "delete": {
                "operationId": "removeEndpoint",
                "summary": "Stop fronting an endpoint, wherever it is (admin)",
                "description": "This node's: its models leave the mesh at once, and the "
                "answer comes once its requests in flight have ended (at most "
                f"{DRAIN_TIMEOUT_S:g} s); one from --endpoint comes back when the node "
                "restarts.  Another node's: that node is told (it needs the mesh owner key "
                "on this machine) and does the same; the answer does not wait for it.  "
                f"{_ADMIN_ONLY}",
                "tags": ["Admin"],
                "security": admin,
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "The endpoint's id, as GET /api/endpoints lists it.",
                    }
                ],
                "responses": {
                    "200": _ok("The endpoint removed, and the node it was on.", "EndpointRemoved"),
                    **admin_errors,
                    **_GUARD,
                    "404": _error("No node of the mesh has that endpoint (not_found)."),
                    "409": _error("It is being removed already (refused)."),
                    "503": _error("No link to the node that has it right now (no_link)."),
                },
            }
        },
        "/api/keys": {
            "get": _get(
                "listKeys",
                "The mesh's API keys (admin)",
                _ok(
                    "Every key, oldest first: revoked and expired ones too, until "
                    f"{EXPIRED_KEEP_S // 86400} days past their expiry; never a secret.",
                    "ApiKeys",
                ),
                admin_errors,
                tags=["Admin"],
                security=admin,
                description=_ADMIN_ONLY,
            ),
            "post": {
                "operationId": "createKey",
                "summary": "Create an API key, mesh-wide (admin)",
                "description": "Signed with the mesh owner key, which this machine must "
                "hold (else 403, before the fields are read), and sent to every node.  The "
                f"answer holds the key's text, shown only there.  {_ADMIN_ONLY}  The body may "
                "be empty: an inference key for every model, without limits or expiry.",
                "tags": ["Admin"],
                "security": admin,
                "requestBody": {"required": False, "content": _json(_ref("ApiKeyRequest"))},
                "responses": {
                    "201": _ok("The key created, with its text.", "NewApiKey"),
                    "400": _error(
                        "The body is not JSON (invalid_json) or not an object "
                        "(invalid_request), or a field is unknown or bad (invalid_key_request)."
                    ),
                    **admin_errors,
                    **_GUARD,
                    "409": _error("The mesh's key book is full (invalid_key_request)."),
                    "413": _response("TooLarge"),
                    "415": _response("UnsupportedMediaType"),
                },
            },
        },
        "/api/keys/{id}": {
            "delete": {
                "operationId": "revokeKey",
                "summary": "Revoke an API key, mesh-wide, for good (admin)",
                "description": "Signed with the mesh owner key, which this machine must hold, "
                f"and sent to every node.  {_ADMIN_ONLY}",
                "tags": ["Admin"],
                "security": admin,
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "The key's id, as GET /api/keys lists it.",
                    }
                ],
                "responses": {
                    "200": _ok("The key revoked.", "ApiKeyRevoked"),
                    **admin_errors,
                    **_GUARD,
                    "404": _error("No key has that id (key_not_found)."),
                },
            }
        },
        "/api/history": {
            "get": _get(
                "history",
                "The request history, mesh-wide or this node's (admin)",
                {
                    "description": "A page of it, newest first; with format=csv, the page's "
                    "rows as CSV.",
                    "headers": {
                        "Content-Disposition": {
                            "description": 'With format=csv: attachment; filename="...".',
                            "required": False,
                            "schema": _STRING,
                        }
                    },
                    "content": {
                        **_json(_ref("History")),
                        "text/csv": {
                            "schema": {
                                "type": "string",
                                "description": f"A header line ({', '.join(CSV_FIELDS)}, "
                                "then prompt and answer when a row has either), then a line "
                                "a row: null is an empty cell, seen_by space-separated.",
                            }
                        },
                    },
                },
                {"400": _error("A parameter unknown or bad (invalid_query)."), **admin_errors},
                tags=["Admin"],
                security=admin,
                description="Mesh-wide, each live node is asked for its rows over QUIC (one "
                "that does not answer in time is named in missing), and a request two nodes "
                "recorded (entered at one, served by the other) is one row.  An empty filter "
                f"is as if absent.  {_ADMIN_ONLY}",
                parameters=[_HISTORY_PARAMETERS[name] for name in _HISTORY_PARAM_ORDER],
            )
        },
        "/api/usage": {
            "get": _get(
                "usage",
                "Requests, tokens and cost per key and model, mesh-wide or this node's (admin)",
                _ok("The usage over the period, and its totals.", "Usage"),
                {"400": _error("A parameter unknown or bad (invalid_query)."), **admin_errors},
                tags=["Admin"],
                security=admin,
                description="Each request is counted once, by the node that served it.  An "
                f"empty filter is as if absent.  {_ADMIN_ONLY}",
                parameters=[_USAGE_PARAMETERS[name] for name in _USAGE_PARAM_ORDER],
            )
        },
        "/v1/models": {
            "get": _page(
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
        "/v1/rerank": {
            "post": _inference(
                "rerank",
                "Documents ranked against a query, by a rerank model (llama-server --reranking)",
                "RerankRequest",
                "Rerank",
                stream=False,
            )
        },
        MESSAGES_PATH: {
            "post": _surface(
                "Anthropic",
                "createMessage",
                "Anthropic's Messages, routed to a node serving the model",
                "Put to the mesh as a chat completion, and its answer back as a Message.",
                "AnthropicMessagesRequest",
                _translated(
                    "With stream: true, a text/event-stream of Anthropic's events (while the "
                    "model loads: message_start, then pings); else one Message.",
                    "AnthropicMessage",
                    _WAITED,
                    ("text/event-stream", "AnthropicServerSentEvent"),
                ),
            )
        },
        COUNT_TOKENS_PATH: {
            "post": _surface(
                "Anthropic",
                "countMessageTokens",
                "A Messages request's input tokens, counted on a node serving the model",
                "Checked here as a Messages request (without max_tokens), then counted by "
                "the serving node's llama-server, whose answer is relayed.",
                "AnthropicCountTokensRequest",
                _translated("The count.", "AnthropicTokenCount", None),
                {
                    "404": _in_shape(
                        "The model is not in the mesh catalog; or the server that serves it "
                        "counts no tokens (not a llama-server): its 404, relayed.",
                        _ref("AnthropicError"),
                    )
                },
            )
        },
        "/api/chat": {
            "post": _surface(
                "Ollama",
                "ollamaChat",
                "Ollama's chat, routed to a node serving the model",
                f"Put to the mesh as a chat completion, and its answer back.  {_LOAD_REQUEST}",
                "OllamaChatRequest",
                _translated(
                    _OLLAMA_STREAMED,
                    "OllamaChatResponse",
                    f"{_LOADED}, and on a stream that waited for its model.",
                    (_NDJSON, "OllamaChatLine"),
                ),
            )
        },
        "/api/generate": {
            "post": _surface(
                "Ollama",
                "ollamaGenerate",
                "Ollama's generate, routed to a node serving the model",
                "Put to the mesh as a chat of system and prompt, or with raw as a completion "
                f"of the prompt, and its answer back.  {_LOAD_REQUEST}",
                "OllamaGenerateRequest",
                _translated(
                    _OLLAMA_STREAMED,
                    "OllamaGenerateResponse",
                    f"{_LOADED}, and on a stream that waited for its model.",
                    (_NDJSON, "OllamaGenerateLine"),
                ),
            )
        },
        "/api/embed": {
            "post": _surface(
                "Ollama",
                "ollamaEmbed",
                "Ollama's embeddings, routed to a node serving the model",
                "Put to the mesh as an embeddings request, and its answer back.  No input: a "
                "load request, answered with embeddings [] once the model is ready.",
                "OllamaEmbedRequest",
                _translated("One embedding an input.", "OllamaEmbedResponse", f"{_LOADED}."),
            )
        },
        "/api/embeddings": {
            "post": _surface(
                "Ollama",
                "ollamaEmbeddings",
                "Ollama's legacy embedding of one prompt, routed to a node serving the model",
                "Put to the mesh as an embeddings request, and its answer back.  No prompt: a "
                "load request, answered with embedding [] once the model is ready.",
                "OllamaEmbeddingsRequest",
                _translated("The prompt's embedding.", "OllamaEmbeddingsResponse", f"{_LOADED}."),
            )
        },
        "/api/tags": {
            "get": _page(
                "ollamaTags",
                "The mesh catalog as Ollama's model list",
                _ok("Every model of the mesh catalog.", "OllamaTags"),
                tags=["Ollama"],
            )
        },
        "/api/ps": {
            "get": _page(
                "ollamaPs",
                "The models hot in the mesh, as Ollama's running models",
                _ok("The catalog models a node or an endpoint has hot.", "OllamaProcesses"),
                tags=["Ollama"],
            )
        },
        "/api/show": {
            "post": {
                "operationId": "ollamaShow",
                "summary": "A catalog model's details, as Ollama's show",
                "description": "A read-only page, though a POST: open to this machine, else "
                "any valid API key (its 401 is OpenAI's, as the other pages').",
                "tags": ["Ollama"],
                "security": _ANY_KEY,
                "requestBody": {"required": True, "content": _json(_ref("OllamaShowRequest"))},
                "responses": {
                    "200": _ok("What the mesh knows of the model.", "OllamaShowResponse"),
                    "400": _in_shape(
                        'The body is not JSON, or names no model (not {"model": NAME}).',
                        _ref("OllamaError"),
                    ),
                    "401": _response("KeyRequired"),
                    **_GUARD,
                    "404": _in_shape("The model is not in the mesh catalog.", _ref("OllamaError")),
                    "413": _response("TooLarge"),
                    "415": _response("UnsupportedMediaType"),
                },
            }
        },
        "/api/version": {
            "get": _page(
                "ollamaVersion",
                "The version of Ollama's API this node speaks",
                _ok("Ollama's API version, and meshllm's.", "OllamaVersion"),
                tags=["Ollama"],
            )
        },
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The web dashboard",
                "description": "A page built on this API and /api/events; it takes the admin "
                "token from its URL's fragment (meshllm dashboard prints the address).",
                "tags": ["Node"],
                "responses": {
                    "200": {
                        "description": "The page (Content-Security-Policy: this node only).",
                        "content": {"text/html": {"schema": _STRING}},
                    },
                    **_GUARD,
                },
            }
        },
        "/ui/{name}": {
            "get": {
                "operationId": "dashboardFile",
                "summary": "A file of the web dashboard (script, style, icon)",
                "tags": ["Node"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "The file's path inside the dashboard.",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            media.split(";")[0]: {"schema": _STRING}
                            for media in DASHBOARD_MEDIA_TYPES.values()
                        },
                    },
                    "404": _error("No such file in the dashboard."),
                    **_GUARD,
                },
            }
        },
        "/openapi.json": {
            "get": _page(
                "openapi",
                "This document",
                {
                    "description": "The OpenAPI 3.1 description of this API.",
                    "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                },
                tags=["Node"],
            )
        },
        "/metrics": {
            "get": _page(
                "metrics",
                "This node's metrics, for Prometheus",
                {
                    "description": f"meshllm_* metrics in Prometheus' text format "
                    f"({METRICS_CONTENT_TYPE}).",
                    "content": {METRICS_CONTENT_TYPE.split(";")[0]: {"schema": _STRING}},
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
            "every model of the mesh, Ollama's and Anthropic's APIs over the same models, and "
            "the node's own status and admin routes.  Every "
            "route checks the Host header (421) and a browser's Origin (403); a POST body "
            "must be application/json (415).  From another machine, every route but /health "
            "needs an API key (Authorization: Bearer or x-api-key); an admin route, one of "
            "scope admin.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "OpenAI", "description": "OpenAI-compatible proxy routes."},
            {
                "name": "Ollama",
                "description": "Ollama's API: inference through the mesh (NDJSON streams), "
                "and its listings of the mesh catalog.",
            },
            {"name": "Anthropic", "description": "Anthropic's Messages API through the mesh."},
            {"name": "Node", "description": "This node."},
            {
                "name": "Admin",
                "description": "From this machine with the admin token, or with a key of "
                "scope admin.",
            },
        ],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "securitySchemes": {
                ADMIN_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The node's admin token, in <state-dir>/admin_token; "
                    "only from this machine.",
                },
                API_KEY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": f"{KEY_PREFIX}<id>-<secret>",
                    "description": "An API key of the mesh (POST /api/keys).",
                },
                API_KEY_HEADER_SCHEME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same key in Anthropic's header, where there is no "
                    "Authorization: Bearer.",
                },
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
