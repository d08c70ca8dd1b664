"""Ollama's API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags`` …) as
translations to and from the OpenAI shape the mesh speaks (pure: no I/O, no clock).

The shapes are Ollama's ``docs/api.md`` as the official ``ollama`` Python client parses
them (``ollama._types``).  A route calls:

* ``chat_request``, ``generate_request``, ``embed_request`` or
  ``legacy_embeddings_request`` on the Ollama body, for the OpenAI body (and path) to
  send; a ``ValueError`` is the client's fault, its message a 400 ``error_body``.  A body
  for which :func:`is_load` holds asks only to load (or, ``keep_alive`` 0, unload) the
  model, as Ollama reads an empty prompt, message list or input: answer it with
  :func:`load_answer` once the mesh has done so;
* ``chat_answer``, ``generate_answer``, ``embed_answer`` or ``legacy_embeddings_answer``
  on the OpenAI answer, or one :class:`StreamTranslator` per streamed answer (SSE in,
  NDJSON out).  These raise ``ValueError`` on an answer that is not OpenAI's shape: the
  backend's fault, a 502;
* ``tags``, ``ps``, ``show`` and ``version`` for the listings, from the mesh's own data.

Ollama's durations are integer nanoseconds; its timestamps RFC 3339 (UTC, ``Z`` here).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote  # the C one: ~0.2 µs a string
from typing import Any, Literal

from meshllm.serving.durations import duration
from meshllm.surfaces.sse import plain_content

OLLAMA_API_VERSION = "0.5.0"  # the Ollama release whose API this covers (format as a schema)
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
LOAD_KEYS = frozenset({"model", "keep_alive"})  # all a load/unload request carries
ROLES = frozenset({"system", "user", "assistant", "tool"})
# Ollama options the OpenAI body takes, and under which name.  top_k is not OpenAI's, but
# llama-server and vLLM read it under that name.  The rest are dropped: load-time ones
# (num_ctx, num_gpu, …) are the serving node's to choose, and a strict OpenAI-compatible
# server refuses fields it does not know.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
_INT_OPTIONS = frozenset({"top_k", "seed", "num_predict"})
# The image type of a base64 string, from its first bytes (Ollama takes raw base64).
_IMAGE_TYPES = (("iVBORw0KGgo", "png"), ("/9j/", "jpeg"), ("R0lGOD", "gif"), ("UklGR", "webp"))
MAX_TOOL_CALLS = 128  # in one streamed answer
MAX_TOOL_ARGUMENT_CHARS = 1 << 20  # of one streamed tool call's arguments
MAX_NS = (1 << 63) - 1  # Go's time.Duration is an int64 of nanoseconds
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z, RFC 3339's last second
# expires_at of a model kept forever: Ollama writes now + the longest Go duration
# (~292 years), and its CLI shows anything 20+ years off as "Forever".
FOREVER = "2318-01-01T00:00:00Z"
# finish_reason → done_reason: Ollama says "stop" after tool calls too.
_DONE_REASONS = {"tool_calls": "stop", "function_call": "stop"}

Kind = Literal["chat", "generate"]


# ---------------------------------------------------------------- requests ---------------


def chat_request(body: Any) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for an ``/api/chat`` body (no ``messages``, or
    an empty list: a load request, see :func:`is_load`)."""
    out = _head(body)
    messages = body.get("messages")
    if messages is None or messages == []:
        return out
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list of {role, content} objects")
    out["messages"] = _messages(messages)
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
    _common(body, out)
    return out


def generate_request(body: Any) -> tuple[str, dict[str, Any]]:
    """The OpenAI path and body for an ``/api/generate`` body: ``raw`` → /v1/completions,
    else a chat of ``system`` and the user's ``prompt`` (and ``images``).  An empty prompt
    without images is Ollama's load (``keep_alive`` 0: unload) request: the path is ``""``
    and the body just ``model`` (and ``keep_alive``), for :func:`load_answer`."""
    out = _head(body)
    prompt = _optional_str(body, "prompt")
    images = body.get("images") or []
    if not prompt and not images:
        return "", out
    for unsupported, why in (
        ("suffix", "the mesh has no fill-in-the-middle endpoint"),
        (
            "template",
            "the serving node applies the model's own template; send raw: true "
            "with the prompt already formatted",
        ),
    ):
        if _optional_str(body, unsupported):
            raise ValueError(f"'{unsupported}' is not supported: {why}")
    # 'context' (deprecated) is the token history of an earlier answer; these answers never
    # carry one, so a context can only be another server's: dropped, as Ollama drops it.
    raw = body.get("raw", False)
    if not isinstance(raw, bool | None):
        raise ValueError("'raw' must be true or false")
    if raw:
        if images:
            raise ValueError("'images' need raw: false (a raw prompt is text only)")
        if body.get("format"):
            raise ValueError("'format' needs raw: false (a raw completion takes no format)")
        out["prompt"] = prompt
        _common(body, out)
        return COMPLETIONS_PATH, out
    messages: list[dict[str, Any]] = []
    system = _optional_str(body, "system")
    if system:
        messages.append({"role": "system", "content": system})
    content = _with_images(prompt, images, "'images'") if images else prompt
    messages.append({"role": "user", "content": content})
    out["messages"] = messages
    _common(body, out)
    return CHAT_PATH, out


def embed_request(body: Any) -> dict[str, Any]:
    """The ``/v1/embeddings`` body for an ``/api/embed`` body (``input``: a string or a
    list of them; empty: a load request)."""
    out = _head(body)
    given = body.get("input")
    if given is None or given in ("", []):
        return out
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise ValueError("'input' must be a string or a list of strings")
    out.update(input=given, encoding_format="float")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not _is_int(dimensions) or dimensions <= 0:
            raise ValueError("'dimensions' must be a positive integer")
        out["dimensions"] = dimensions
    # 'truncate' is dropped: the OpenAI body has no such switch, and a backend refuses an
    # input longer than its context (Ollama's truncate: false) either way.
    if not isinstance(body.get("truncate"), bool | None):
        raise ValueError("'truncate' must be true or false")
    return out


def legacy_embeddings_request(body: Any) -> dict[str, Any]:
    """The ``/v1/embeddings`` body for an ``/api/embeddings`` body (``prompt``: a
    string; empty: a load request)."""
    out = _head(body)
    prompt = _optional_str(body, "prompt")
    if prompt:
        out.update(input=prompt, encoding_format="float")
    return out


def is_load(openai_body: Mapping[str, Any]) -> bool:
    """Whether a translated body asks only to load or unload its model."""
    return openai_body.keys() <= LOAD_KEYS


def _head(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("'model' must be a non-empty string")
    out: dict[str, Any] = {"model": model}
    if body.get("keep_alive") is not None:
        out["keep_alive"] = body["keep_alive"]  # as given: the proxy reads and checks it
    return out


def _common(body: dict[str, Any], out: dict[str, Any]) -> None:
    """stream (Ollama's default: true), options and format, shared by chat and generate."""
    stream = body.get("stream")
    if not isinstance(stream, bool | None):
        raise ValueError("'stream' must be true or false")
    out["stream"] = stream is not False
    if out["stream"]:
        out["stream_options"] = {"include_usage": True}  # counts in the last chunk
    out.update(_options(body.get("options")))
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "schema", "schema": fmt},
        }
    elif fmt not in (None, ""):
        raise ValueError("'format' must be \"json\" or a JSON schema object")
    # 'think' is dropped: a model that thinks does so by its own template, and says so in
    # reasoning_content, which the answers carry as 'thinking'.


def _options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError("'options' must be an object")
    out: dict[str, Any] = {}
    for name, target in OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        if name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise ValueError("'options.stop' must be a string or a list of strings")
            if stops:
                out[target] = stops
        elif name in _INT_OPTIONS:
            if not _is_int(value) and not (_is_number(value) and float(value).is_integer()):
                raise ValueError(f"'options.{name}' must be an integer")
            # num_predict -1 (endless) and -2 (fill the context) are the default: no limit
            if name != "num_predict" or value > 0:
                out[target] = int(value)
        elif _is_number(value):
            out[target] = value
        else:
            raise ValueError(f"'options.{name}' must be a number")
    return out


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of tool calls not yet answered
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        converted = _message(message, where, i)
        role = converted["role"]
        if role == "assistant":
            calls = converted.get("tool_calls", [])
            pending = [(c["id"], c["function"]["name"]) for c in calls]
        elif role == "tool" and pending:
            # OpenAI ties a tool result to its call by id, Ollama by order (or tool_name).
            name = converted.get("name")
            k = next((k for k, (_, n) in enumerate(pending) if n == name), 0)
            converted["tool_call_id"] = pending.pop(k)[0]
        out.append(converted)
    return out


def _message(message: Any, where: str, index: int) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object with 'role' and 'content'")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise ValueError(f"{where}.role must be one of system, user, assistant, tool")
    content = message.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        raise ValueError(f"{where}.content must be a string")
    out: dict[str, Any] = {"role": role, "content": content}
    images = message.get("images")
    if images:
        if role != "user":
            raise ValueError(f"{where}.images: images go on user messages only")
        out["content"] = _with_images(content, images, f"{where}.images")
    calls = message.get("tool_calls")
    if calls and role == "assistant":
        out["tool_calls"] = _tool_calls(calls, where, index)
    if role == "tool":
        name = message.get("tool_name")
        if isinstance(name, str) and name:
            out["name"] = name  # llama-server's templates read a tool result's name here
    return out


def _with_images(text: str, images: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI content parts: the text, then each base64 image as a data URL."""
    if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images):
        raise ValueError(f"{where} must be a list of base64 strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": _data_url(x)}} for x in images]
    return parts


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    kind = next((t for prefix, t in _IMAGE_TYPES if image.startswith(prefix)), "png")
    return f"data:image/{kind};base64,{image}"


def _tool_calls(calls: Any, where: str, index: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.tool_calls[{j}] must be {{function: {{name, arguments}}}}")
        arguments = function.get("arguments")
        try:
            if isinstance(arguments, str):  # OpenAI's form, which some clients send back
                arguments = arguments if isinstance(json.loads(arguments), dict) else None
            elif isinstance(arguments, dict | None):
                arguments = json.dumps(arguments or {})
            else:
                arguments = None
        except (TypeError, ValueError, RecursionError):
            arguments = None
        if arguments is None:
            raise ValueError(f"{where}.tool_calls[{j}].arguments must be a JSON object")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{index}_{j}"  # deterministic: the same history, the same ids
        out.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    # Ollama's tools are OpenAI's function tools already: the shape is checked, the type
    # (which Ollama lets a client leave out) filled in.
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools
    ):
        raise ValueError("'tools' must be a list of {type: function, function: {...}}")
    return [t if t.get("type") else {**t, "type": "function"} for t in tools]


# ----------------------------------------------------------------- answers ---------------


def chat_answer(
    openai: Any, model: str, now: float, total_s: float | None = None, load_s: float = 0.0
) -> dict[str, Any]:
    """The ``/api/chat`` answer for a non-streamed OpenAI chat answer.  Durations come
    from llama-server's ``timings``, else ``total_s`` (the time the caller waited, of
    which ``load_s`` loading the model), else 0."""
    choice = _choice(openai)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ValueError("backend answer has no choices[0].message")
    out: dict[str, Any] = {"model": model, "created_at": rfc3339(now)}
    reply: dict[str, Any] = {"role": "assistant", "content": _text(message.get("content"))}
    if thinking := _text(message.get("reasoning_content")):
        reply["thinking"] = thinking
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise ValueError("backend answer's tool_calls is not a list")
        reply["tool_calls"] = [_ollama_call(i, c) for i, c in enumerate(calls)]
    out["message"] = reply
    out.update(_final(choice.get("finish_reason"), openai, total_s, load_s))
    return out


def generate_answer(
    openai: Any, model: str, now: float, total_s: float | None = None, load_s: float = 0.0
) -> dict[str, Any]:
    """The ``/api/generate`` answer for a non-streamed OpenAI answer (chat or completion);
    durations as in :func:`chat_answer`."""
    choice = _choice(openai)
    message = choice.get("message")
    if isinstance(message, dict):
        text, thinking = message.get("content"), message.get("reasoning_content")
    else:
        text, thinking = choice.get("text"), None
    out: dict[str, Any] = {"model": model, "created_at": rfc3339(now), "response": _text(text)}
    if thinking := _text(thinking):
        out["thinking"] = thinking
    out.update(_final(choice.get("finish_reason"), openai, total_s, load_s))
    return out


def embed_answer(openai: Any, model: str, total_s: float, load_s: float = 0.0) -> dict[str, Any]:
    """The ``/api/embed`` answer for an OpenAI embeddings answer."""
    data = _embeddings(openai)
    prompt, _ = _counts(openai.get("usage"), None)
    return {
        "model": model,
        "embeddings": data,
        "total_duration": _ns(total_s),
        "load_duration": _ns(load_s),
        "prompt_eval_count": prompt,
    }


def legacy_embeddings_answer(openai: Any) -> dict[str, Any]:
    """The ``/api/embeddings`` answer (``{"embedding": [...]}``) for an OpenAI one."""
    data = _embeddings(openai)
    return {"embedding": data[0] if data else []}


def load_answer(
    kind: Literal["chat", "generate", "embed", "embeddings"],
    model: str,
    keep_alive: Any,
    now: float,
) -> dict[str, Any]:
    """Ollama's answer to a load request (:func:`is_load`): done_reason ``"unload"`` when
    ``keep_alive`` is zero, else ``"load"``.  ValueError for a keep_alive that is not a
    duration."""
    if kind not in ("chat", "generate", "embed", "embeddings"):
        raise ValueError(f"no load answer for {kind!r}")
    if kind == "embed":
        return {"model": model, "embeddings": []}
    if kind == "embeddings":
        return {"embedding": []}
    unload = keep_alive is not None and duration(keep_alive, "keep_alive") == 0.0
    out: dict[str, Any] = {"model": model, "created_at": rfc3339(now)}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason="unload" if unload else "load")
    return out


def error_body(message: str) -> dict[str, Any]:
    """Ollama's error answer (any status), and a stream's error line."""
    return {"error": message}


def error_from_openai(answer: Any, fallback: str = "the backend failed") -> dict[str, Any]:
    """The :func:`error_body` for an OpenAI error answer (``{"error": {"message"}}``)."""
    error = answer.get("error") if isinstance(answer, dict) else None
    return error_body(_error_message(error) if error is not None else fallback)


def _choice(openai: Any) -> dict[str, Any]:
    choices = openai.get("choices") if isinstance(openai, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("backend answer has no choices")
    return choices[0]


def _ollama_call(index: int, call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError("backend answer has a tool call without a function name")
    out: dict[str, Any] = {
        "function": {
            "index": index,
            "name": function["name"],
            "arguments": _arguments(function.get("arguments"), function["name"]),
        }
    }
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _arguments(arguments: Any, name: str) -> dict[str, Any]:
    """A call's JSON-string arguments as the object Ollama sends."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"the model called tool {name!r} with arguments that are not an object")
    return parsed


def _embeddings(openai: Any) -> list[Any]:
    data = openai.get("data") if isinstance(openai, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(d, dict) and isinstance(d.get("embedding"), list) for d in data
    ):
        raise ValueError("backend answer has no data[].embedding lists of floats")
    ordered = sorted(data, key=lambda d: d["index"] if _is_int(d.get("index")) else 0)
    return [d["embedding"] for d in ordered]


def _final(
    finish: Any, answer: Mapping[str, Any], total_s: float | None, load_s: float
) -> dict[str, Any]:
    """The ``done`` fields: done_reason, counts and durations."""
    usage, timings = answer.get("usage"), answer.get("timings")
    timings = timings if isinstance(timings, dict) else None
    prompt, generated = _counts(usage, timings)
    return {
        "done": True,
        "done_reason": _done_reason(finish),
        **_durations(timings, total_s, load_s),
        "prompt_eval_count": prompt,
        "eval_count": generated,
    }


def _done_reason(finish: Any) -> str:
    if not isinstance(finish, str) or not finish:
        return "stop"
    return _DONE_REASONS.get(finish, finish)


def _counts(usage: Any, timings: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt, generated) tokens: OpenAI's usage first, else llama-server's timings."""
    if isinstance(usage, dict):
        return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if timings is not None:
        prompt = _count(timings.get("prompt_n")) + _count(timings.get("cache_n"))
        return prompt, _count(timings.get("predicted_n"))
    return 0, 0


def _durations(
    timings: dict[str, Any] | None, total_s: float | None, load_s: float
) -> dict[str, int]:
    load = _ns(load_s)
    if timings is not None and ("prompt_ms" in timings or "predicted_ms" in timings):
        prompt, generating = (
            _ns(timings.get("prompt_ms"), 1e6),
            _ns(timings.get("predicted_ms"), 1e6),
        )
        total = _ns(total_s) if total_s is not None else min(MAX_NS, load + prompt + generating)
    else:
        # Without timings the whole wait after loading counts as generating, so that a
        # client's eval_count / eval_duration is a rate, not a division by zero.
        total = _ns(total_s) if total_s is not None else 0
        prompt, generating = 0, max(0, total - load)
    return {
        "total_duration": total,
        "load_duration": load,
        "prompt_eval_duration": prompt,
        "eval_duration": generating,
    }


def _ns(value: Any, per_ns: float = 1e9) -> int:
    """``value`` (seconds, or ms with per_ns 1e6) as Go's int64 nanoseconds, 0 if bad."""
    if not _is_number(value) or not 0 < value < math.inf:  # also NaN
        return 0
    return int(min(value * per_ns, MAX_NS))


def _count(value: Any) -> int:
    return value if _is_int(value) and 0 <= value < 1 << 40 else 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) and error else "the backend failed"


# ----------------------------------------------------------------- streams ---------------


class StreamTranslator:
    """One streamed answer: OpenAI SSE events in (:meth:`feed`), NDJSON lines out, and
    the final ``done`` line (:meth:`end`).

    Each event is parsed once (json.loads) and each delta written from a prefix made
    once per stream and a timestamp made once per second.  Tool calls, which OpenAI
    streams in fragments and Ollama sends whole (arguments as an object), are gathered
    and sent in one line when the finishing chunk comes.  After an error line
    (an OpenAI error event), :meth:`end` returns nothing: the client has raised already.
    """

    __slots__ = (
        "_chat",
        "_deltas",
        "_failed",
        "_finish",
        "_head",
        "_now",
        "_sec",
        "_sec_text",
        "_stamp_text",
        "_timings",
        "_tools",
        "_usage",
        "model",
    )

    def __init__(self, kind: Kind, model: str) -> None:
        if kind not in ("chat", "generate"):
            raise ValueError(f"kind must be 'chat' or 'generate', not {kind!r}")
        self.model = model
        self._chat = kind == "chat"
        self._head = '{"model":' + _quote(model) + ',"created_at":"'
        self._sec = -1
        self._sec_text = ""
        self._now = -1.0
        self._stamp_text = ""
        self._finish: str | None = None
        self._usage: Any = None
        self._timings: dict[str, Any] | None = None
        self._tools: dict[int, list[Any]] = {}  # index → [id, name, argument fragments]
        self._deltas = 0  # lines of content sent: the eval_count when the backend says none
        self._failed = False

    def feed(self, events: bytes, now: float) -> bytes:
        """NDJSON lines for one or more whole SSE events (comments and ``[DONE]`` are
        skipped, as is an event that is not a JSON object; after an error line, all is)."""
        out: list[str] = []
        for line in events.splitlines():
            if self._failed:
                break
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if (text := plain_content(payload)) is not None:  # most events: fast
                    if text:
                        self._line(now, text, None, out)
                    continue
                if payload and payload != b"[DONE]":
                    try:
                        event = json.loads(payload)
                    except (ValueError, RecursionError):
                        continue
                    if type(event) is dict:
                        self._event(event, now, out)
            elif line.startswith(b"error:"):  # llama-server's error event in a stream
                payload = line[6:].strip()
                self._event(
                    {"error": _parse(payload) or payload.decode(errors="replace")}, now, out
                )
        return "".join(out).encode("ascii") if out else b""

    def end(self, now: float, total_s: float, load_s: float = 0.0) -> bytes:
        """The final ``done: true`` line, with done_reason, counts and durations
        (``total_s``: the whole wait, of which ``load_s`` loading the model)."""
        if self._failed:
            return b""
        out: list[str] = []
        if self._tools:
            self._flush_tools(now, out)
            if self._failed:
                return out[0].encode("ascii")
        final: dict[str, Any] = {"model": self.model, "created_at": self._stamp(now)}
        if self._chat:
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        answer = {"usage": self._usage, "timings": self._timings}
        final.update(_final(self._finish, answer, total_s, load_s))
        if not isinstance(self._usage, dict) and self._timings is None:
            final["eval_count"] = self._deltas  # a fair guess: a token an event
        out.append(json.dumps(final) + "\n")
        return "".join(out).encode("ascii")

    def _event(self, event: dict[str, Any], now: float, out: list[str]) -> None:
        error = event.get("error")
        if error is not None:
            self._fail(_error_message(error), out)
            return
        choices = event.get("choices")
        if choices and type(choices) is list and type(choices[0]) is dict:
            choice = choices[0]
            delta = choice.get("delta")
            if type(delta) is dict:
                text = delta.get("content")
                thinking = delta.get("reasoning_content")
                if delta.get("tool_calls"):
                    self._gather(delta["tool_calls"], now, out)
            else:
                text, thinking = choice.get("text"), None
            if thinking and type(thinking) is str:
                self._line(now, "", thinking, out)
            if text and type(text) is str:
                self._line(now, text, None, out)
            finish = choice.get("finish_reason")
            if finish and type(finish) is str:
                self._finish = finish
                if self._tools:
                    self._flush_tools(now, out)
        usage = event.get("usage")
        if usage and type(usage) is dict:
            self._usage = usage
        timings = event.get("timings")
        if timings and type(timings) is dict:
            self._timings = timings

    def _line(self, now: float, text: str, thinking: str | None, out: list[str]) -> None:
        self._deltas += 1
        extra = "" if thinking is None else ',"thinking":' + _quote(thinking)
        head, stamp = self._head, self._stamp(now)
        if self._chat:
            content = _quote(text)
            out.append(
                f'{head}{stamp}","message":{{"role":"assistant","content":{content}{extra}}},'
                '"done":false}\n'
            )
        else:
            out.append(f'{head}{stamp}","response":{_quote(text)}{extra},"done":false}}\n')

    def _gather(self, calls: Any, now: float, out: list[str]) -> None:
        if type(calls) is not list:
            return
        for position, call in enumerate(calls):
            if type(call) is not dict:
                continue
            index = call.get("index", position)
            if not _is_int(index):
                continue
            entry = self._tools.get(index)
            if entry is None:
                if len(self._tools) >= MAX_TOOL_CALLS:
                    self._fail(f"the model made more than {MAX_TOOL_CALLS} tool calls", out)
                    return
                entry = self._tools[index] = [None, "", [], 0]
            if isinstance(call.get("id"), str):
                entry[0] = call["id"]
            function = call.get("function")
            if type(function) is not dict:
                continue
            name, fragment = function.get("name"), function.get("arguments")
            if name and isinstance(name, str) and not entry[1]:
                entry[1] = name
            if fragment and isinstance(fragment, str):
                entry[3] += len(fragment)
                if entry[3] > MAX_TOOL_ARGUMENT_CHARS:
                    self._fail(f"tool call arguments longer than {MAX_TOOL_ARGUMENT_CHARS}", out)
                    return
                entry[2].append(fragment)

    def _flush_tools(self, now: float, out: list[str]) -> None:
        calls = []
        for i, (_, (call_id, name, fragments, _)) in enumerate(sorted(self._tools.items())):
            try:
                if not name:
                    raise ValueError("the model called a tool without naming it")
                arguments = _arguments("".join(fragments), name)
            except ValueError as exc:
                self._fail(str(exc), out)
                return
            call: dict[str, Any] = {"function": {"index": i, "name": name, "arguments": arguments}}
            if call_id:
                call["id"] = call_id
            calls.append(call)
        self._tools = {}
        line: dict[str, Any] = {"model": self.model, "created_at": self._stamp(now)}
        if self._chat:
            line["message"] = {"role": "assistant", "content": "", "tool_calls": calls}
        else:
            line["response"] = ""  # /api/generate has no tools: nothing to say
        line["done"] = False
        out.append(json.dumps(line) + "\n")

    def _fail(self, message: str, out: list[str]) -> None:
        out.append(json.dumps(error_body(message)) + "\n")
        self._failed = True
        self._tools = {}

    def _stamp(self, now: float) -> str:
        """rfc3339(now), made once per ``now`` (and its date and time of day once a
        second)."""
        if now == self._now:
            return self._stamp_text
        sec = math.floor(now) if 0 <= now <= MAX_TIMESTAMP else 0
        if sec != self._sec:
            self._sec, self._sec_text = sec, _second(sec)
        micro = int((now - sec) * 1e6) if sec else 0
        self._now, self._stamp_text = now, f"{self._sec_text}.{micro:06d}Z"
        return self._stamp_text


# ---------------------------------------------------------------- listings ---------------


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model the mesh can serve, as the listings describe it."""

    name: str
    size: int  # bytes on disk
    sha256: str  # of the file, hex ("" when not known yet)
    family: str  # general.architecture, e.g. "llama"
    quantization: str  # e.g. "Q4_K_M"
    parameter_size: str  # e.g. "8.0B"
    modified_at: float  # seconds since the epoch
    context_length: int | None = None  # the model's training context, when known
    parameter_count: int | None = None
    embedding: bool = False  # an embedding model: /api/embed, not chat
    capabilities: tuple[str, ...] = ()  # more of Ollama's: "tools", "vision", "thinking"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model loaded on a node, for ``/api/ps``."""

    name: str
    size: int  # bytes it takes, in memory
    size_vram: int  # of which on the accelerator
    expires_at: float | None  # when it unloads if unused; None: never
    context_length: int | None = None  # the context it was loaded with


def tags(models: Iterable[LocalModel]) -> dict[str, Any]:
    """``/api/tags``: the models there are."""
    return {
        "models": [
            {
                "name": tagged(m.name),
                "model": tagged(m.name),
                "modified_at": rfc3339(m.modified_at),
                "size": m.size,
                "digest": m.sha256,
                "details": _details(m),
            }
            for m in models
        ]
    }


def ps(loaded: Iterable[LoadedModel], models: Iterable[LocalModel] = ()) -> dict[str, Any]:
    """``/api/ps``: the models loaded; digest and details from ``models`` by name."""
    known = {m.name: m for m in models}
    out = []
    for m in loaded:
        local = known.get(m.name)
        entry: dict[str, Any] = {
            "name": tagged(m.name),
            "model": tagged(m.name),
            "size": m.size,
            "digest": local.sha256 if local else "",
            "details": _details(local),
            "expires_at": FOREVER if m.expires_at is None else rfc3339(m.expires_at),
            "size_vram": m.size_vram,
        }
        if m.context_length is not None:
            entry["context_length"] = m.context_length
        out.append(entry)
    return {"models": out}


def show(model: LocalModel) -> dict[str, Any]:
    """``/api/show``: one model's details, ``model_info`` in GGUF's key names."""
    info: dict[str, Any] = {}
    if model.family:
        info["general.architecture"] = model.family
        if model.context_length is not None:
            info[f"{model.family}.context_length"] = model.context_length
    if model.parameter_count is not None:
        info["general.parameter_count"] = model.parameter_count
    base = ["embedding"] if model.embedding else ["completion"]
    return {
        "license": "",
        "modelfile": f"# Served by meshllm\nFROM {model.name}\n",
        "parameters": "",
        "template": "",  # the serving node applies the GGUF's own chat template
        "details": _details(model),
        "model_info": info,
        "capabilities": base + [c for c in model.capabilities if c not in base],
        "modified_at": rfc3339(model.modified_at),
    }


def version(meshllm_version: str) -> dict[str, Any]:
    """``/api/version``.  ``version`` is the Ollama API release this speaks, since Ollama
    clients compare it to gate features; meshllm's own goes beside it."""
    return {"version": OLLAMA_API_VERSION, "meshllm_version": meshllm_version}


def tagged(name: str) -> str:
    """``name`` as Ollama lists it: with a tag (``:latest`` when it has none)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def resolve_name(requested: str, known: Iterable[str]) -> str | None:
    """The mesh model an Ollama client means by ``requested``: the exact name, else it
    without ``:latest``, else it with ``:latest``; None if none is known."""
    names = known if isinstance(known, Set | Mapping) else set(known)
    if requested in names:
        return requested
    if requested.endswith(":latest") and requested[: -len(":latest")] in names:
        return requested[: -len(":latest")]
    if requested + ":latest" in names:
        return requested + ":latest"
    return None


def _details(model: LocalModel | None) -> dict[str, Any]:
    family = model.family if model else ""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else [],
        "parameter_size": model.parameter_size if model else "",
        "quantization_level": model.quantization if model else "",
    }


# ------------------------------------------------------------------ values ---------------


def _parse(payload: bytes) -> dict[str, Any] | None:
    """An SSE event's JSON object, or None (not JSON, not an object, nested too deep)."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return event if type(event) is dict else None


def rfc3339(t: float) -> str:
    """``t`` (seconds since the epoch) as RFC 3339 UTC with microseconds, as Ollama
    writes times; one that is not a time (NaN, negative, past year 9999) as the epoch."""
    sec = math.floor(t) if _is_number(t) and 0 <= t <= MAX_TIMESTAMP else 0
    micro = int((t - sec) * 1e6) if sec else 0
    return f"{_second(sec)}.{micro:06d}Z"


def _second(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value
