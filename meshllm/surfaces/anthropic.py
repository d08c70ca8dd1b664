"""Anthropic's Messages API over OpenAI chat completions, both ways, as pure translation.

A client that speaks Anthropic, a backend that speaks OpenAI:

* :func:`messages_request`, :func:`count_tokens_request`: a request body, to an OpenAI
  chat completions body; :func:`estimate_tokens` guesses its size where the backend
  has no tokenizer route;
* :func:`message_answer`: an OpenAI chat completion, to an Anthropic ``Message``;
* :class:`StreamTranslator`: OpenAI SSE (``data: {chunk}``), to Anthropic SSE
  (``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``);
* :func:`error_body`: an HTTP status and message, to Anthropic's error shape.

An OpenAI client and a model on Anthropic's cloud (``anthropic:claude-…``):
:func:`openai_to_messages`, :func:`messages_to_openai`, :class:`AnthropicToOpenAIStream`.

A malformed request raises ``ValueError`` with a one-line message that names the field
(``messages.0.content.1.source``), which the route answers with a 400
``invalid_request_error``; unknown top-level fields are ignored, as new SDK options
come faster than this module.  What a backend answers is read as far as it makes
sense and never raises.  Shapes follow Anthropic's Messages, streaming and errors
documentation, checked against the official SDK's ``anthropic.types``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from meshllm.surfaces import openai_chat
from meshllm.surfaces.openai_chat import is_int, is_number, json_object
from meshllm.surfaces.sse import EventTranslator, plain_content

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out
MAX_TOKENS_CEILING = (1 << 31) - 1  # llama-server reads n_predict as an int32
MAX_ERROR_CHARS = 2000  # of a backend's error message passed on to the client
MAX_PENDING_BYTES = 4 << 20  # of an unfinished SSE event held between feed() calls
MAX_ID_CHARS = 64  # of a backend's completion id reused in a message id
BYTES_PER_TOKEN = 4  # estimate_tokens: about 4 bytes of English or code a token
MESSAGE_OVERHEAD_TOKENS = 4  # estimate_tokens: role and template markers of a message
IMAGE_TOKENS = 1600  # estimate_tokens: Anthropic's width*height/750 for a ~1.2 MP image
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# Nearly every event of an Anthropic stream: a text delta.  Its text, a JSON string,
# goes into the OpenAI chunk as it is (AnthropicToOpenAIStream): no parse, no dump.
_TEXT_DELTA = re.compile(
    rb'\{"type":\s*"content_block_delta",\s*"index":\s*\d+,\s*"delta":\s*\{"type":\s*'
    rb'"text_delta",\s*"text":\s*"((?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*)"\}\}\s*$'
)
_NOT_LAST = b'"finish_reason":null}]}\n\n'
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # a backend can't read them
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_TOOL_CHOICE_TYPES = {"required": "any"}  # OpenAI's tool_choice as Anthropic's type
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_DONE = b"data: [DONE]\n\n"
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_TEXT, _TOOL, _THINKING = 1, 2, 3  # the kind of the open content block


# -- Anthropic request -> OpenAI request ------------------------------------------------


def messages_request(body: dict) -> dict:
    """An Anthropic Messages request body as an OpenAI chat completions body."""
    out = _chat_body(body)
    max_tokens = body.get("max_tokens")
    if not is_int(max_tokens) or not 0 < max_tokens <= MAX_TOKENS_CEILING:
        raise ValueError("max_tokens: a positive integer is required")
    out["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name}: a number from 0 to 1 is required")
            out[name] = value
    top_k = body.get("top_k")  # validated, then dropped: OpenAI has no top_k
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise ValueError("top_k: a non-negative integer is required")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop_sequences: a list of strings is required")
        if stops:
            out["stop"] = stops
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ValueError("stream: a boolean is required")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise ValueError("metadata: an object is required")
    return out


def count_tokens_request(body: dict) -> dict:
    """A ``/v1/messages/count_tokens`` body (a Messages body less ``max_tokens`` and the
    sampling fields) as an OpenAI chat body, for :func:`estimate_tokens`."""
    return _chat_body(body)


def wants_thinking(body: dict) -> bool:
    """Whether an Anthropic request asks for thinking blocks in its answer."""
    thinking = body.get("thinking") if isinstance(body, dict) else None
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def estimate_tokens(openai_body: dict) -> int:
    """A rough input token count of an OpenAI chat body, for backends without a
    tokenizer route: UTF-8 bytes of the text (message text, tool calls, tool schemas as
    JSON) over BYTES_PER_TOKEN, plus MESSAGE_OVERHEAD_TOKENS a message and IMAGE_TOKENS
    an image.  Near for English prose; code and non-Latin scripts take more tokens."""
    size, images = 0, 0
    messages = openai_body.get("messages") if isinstance(openai_body, dict) else None
    messages = messages if isinstance(messages, list) else []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            if isinstance(part, str):
                size += _utf8_len(part)
            elif isinstance(part, dict) and part.get("type") == "image_url":
                images += 1
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                size += _utf8_len(part["text"])
        for call in message.get("tool_calls") or ():
            size += _utf8_len(_dumps(call, "")) if isinstance(call, dict) else 0
    tools = openai_body.get("tools") if isinstance(openai_body, dict) else None
    if isinstance(tools, list):
        size += _utf8_len(_dumps(tools, ""))
    return (
        math.ceil(size / BYTES_PER_TOKEN)
        + MESSAGE_OVERHEAD_TOKENS * len(messages)
        + IMAGE_TOKENS * images
    )


def _chat_body(body: Any) -> dict:
    """The fields a Messages and a count_tokens request share: model, system, messages,
    tools and tool_choice."""
    if not isinstance(body, dict):
        raise ValueError("body: a JSON object is required")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model: a non-empty string is required")
    system = _system(body.get("system"))
    out: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages"), system)}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ValueError("tools: a list is required")
        if tools:
            out["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        _tool_choice(choice, out)
    return out


def _system(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise ValueError("system: a string or a list of text blocks is required")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ValueError(f"system.{i}: a text block is required")
        texts.append(_text(block, f"system.{i}"))
    return "\n\n".join(texts)


def _messages(raw: Any, system: str) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages: a non-empty list is required")
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise ValueError(f"{where}: an object is required")
        blocks = _blocks(message.get("content"), f"{where}.content")
        role = message.get("role")
        if role == "user":
            out.extend(_user(blocks, f"{where}.content"))
        elif role == "assistant":
            out.extend(_assistant(blocks, f"{where}.content"))
        else:
            raise ValueError(f"{where}.role: 'user' or 'assistant' is required")
    if len(out) == bool(system):
        raise ValueError("messages: no content a model can read (only thinking blocks)")
    return out


def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise ValueError(f"{where}: a string or a non-empty list of blocks is required")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ValueError(f"{where}.{j}: a content block with a type is required")
    return content


def _user(blocks: list[dict], where: str) -> list[dict]:
    """A user turn: its tool results as OpenAI ``tool`` messages (which must follow the
    assistant's calls), then one user message with the rest."""
    tool_messages: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        kind, at = block["type"], f"{where}.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            parts.append(_image_part(block.get("source"), f"{at}.source"))
        elif kind == "document":
            parts.append({"type": "text", "text": _document_text(block, at)})
        elif kind == "tool_result":
            tool_messages.append(_tool_result(block, at, parts))
        elif kind not in _DROPPED_BLOCKS:
            raise ValueError(f"{at}.type: unsupported content block {_name(kind)}")
    if not parts:
        return tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    return [*tool_messages, {"role": "user", "content": parts}]


def _assistant(blocks: list[dict], where: str) -> list[dict]:
    texts: list[str] = []
    calls: list[dict] = []
    for j, block in enumerate(blocks):
        kind, at = block["type"], f"{where}.{j}"
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind not in _DROPPED_BLOCKS:
            raise ValueError(f"{at}.type: unsupported assistant block {_name(kind)}")
    if not texts and not calls:
        return []  # only thinking: nothing a backend can read
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _text(block: dict, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}.text: a string is required")
    return text


def _image_part(source: Any, where: str) -> dict:
    if not isinstance(source, dict):
        raise ValueError(f"{where}: an image source object is required")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or media_type not in IMAGE_MEDIA_TYPES:
            raise ValueError(f"{where}.media_type: one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}")
        if not isinstance(data, str) or not data:
            raise ValueError(f"{where}.data: a base64 string is required")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError(f"{where}.url: an http(s) URL is required")
    else:
        raise ValueError(f"{where}.type: 'base64' or 'url' is required")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_text(block: dict, where: str) -> str:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "text":
        raise ValueError(f"{where}.source: only plain-text documents are supported")
    data = source.get("data")
    if not isinstance(data, str):
        raise ValueError(f"{where}.source.data: a string is required")
    return data


def _tool_result(block: dict, where: str, parts: list[dict]) -> dict:
    """A ``tool_result`` as an OpenAI ``tool`` message; its images, which a tool message
    cannot hold, go to ``parts`` (the user message after it)."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise ValueError(f"{where}.tool_use_id: a non-empty string is required")
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise ValueError(f"{where}.is_error: a boolean is required")
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, item in enumerate(content):
            at = f"{where}.content.{k}"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                texts.append(_text(item, at))
            elif kind == "image":
                parts.append(_image_part(item.get("source"), f"{at}.source"))
            elif kind == "document":
                texts.append(_document_text(item, at))
            else:
                raise ValueError(f"{at}: a text, image or document block is required")
        text = "\n".join(texts)
    else:
        raise ValueError(f"{where}.content: a string or a list of blocks is required")
    if is_error:
        text = f"Error: {text}"  # OpenAI has no error flag: say it in the text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _tool_call(block: dict, where: str) -> dict:
    ident, name, tool_input = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"{where}.id: a non-empty string is required")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: a non-empty string is required")
    if not isinstance(tool_input, dict):
        raise ValueError(f"{where}.input: an object is required")
    arguments = _dumps(tool_input, None)
    if arguments is None:
        raise ValueError(f"{where}.input: not representable as JSON")
    function = {"name": name, "arguments": arguments}
    return {"id": ident, "type": "function", "function": function}


def _tool(tool: Any, where: str) -> dict:
    if not isinstance(tool, dict):
        raise ValueError(f"{where}: an object is required")
    if tool.get("type") not in (None, "custom"):
        raise ValueError(f"{where}.type: only custom tools are supported")
    name, description, schema = tool.get("name"), tool.get("description"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: a non-empty string is required")
    if not isinstance(schema, dict):
        raise ValueError(f"{where}.input_schema: an object is required")
    function: dict[str, Any] = {"name": name}
    if description is not None:
        if not isinstance(description, str):
            raise ValueError(f"{where}.description: a string is required")
        function["description"] = description
    function["parameters"] = schema
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, out: dict) -> None:
    if not isinstance(choice, dict):
        raise ValueError("tool_choice: an object is required")
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("tool_choice.name: a non-empty string is required")
        value: Any = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        value = _TOOL_CHOICES[kind]
    else:
        raise ValueError("tool_choice.type: 'auto', 'any', 'tool' or 'none' is required")
    serial = choice.get("disable_parallel_tool_use", False)
    if not isinstance(serial, bool):
        raise ValueError("tool_choice.disable_parallel_tool_use: a boolean is required")
    if "tools" in out:  # a backend may refuse a tool choice without tools
        out["tool_choice"] = value
        if serial:
            out["parallel_tool_calls"] = False


# -- OpenAI answer -> Anthropic answer --------------------------------------------------


def message_answer(
    openai: dict, model: str, *, message_id: str | None = None, thinking: bool = False
) -> dict:
    """An OpenAI chat completion as an Anthropic ``Message``; ``thinking``: keep the
    backend's ``reasoning_content`` as a thinking block (see :func:`wants_thinking`)."""
    openai = openai if isinstance(openai, dict) else {}
    choice = _first(openai.get("choices"))
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[dict] = []
    reasoning = message.get("reasoning_content")
    if thinking and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _openai_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for n, call in enumerate(calls if isinstance(calls, list) else ()):
        if isinstance(call, dict):
            content.append(_tool_use_block(call, n))
    stop_reason, stop_sequence = _stop(choice, any(b["type"] == "tool_use" for b in content))
    usage = _anthropic_usage(openai.get("usage"), openai.get("timings"))
    return {
        "id": message_id or _message_id(openai.get("id"), model + text),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage or {"input_tokens": 0, "output_tokens": 0},
    }


def _tool_use_block(call: dict, n: int) -> dict:
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    ident = call.get("id")
    return {
        "type": "tool_use",
        "id": ident if isinstance(ident, str) and ident else f"toolu_{n}",
        "name": name if isinstance(name, str) else "",
        "input": json_object(function.get("arguments")),
    }


def _stop(choice: dict, has_tools: bool) -> tuple[str, str | None]:
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")  # vLLM names the stop string that ended the answer
    if finish == "stop" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    reason = _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if has_tools and reason == "end_turn":  # some backends finish a tool call with "stop"
        reason = "tool_use"
    return reason, None


def _anthropic_usage(usage: Any, timings: Any) -> dict | None:
    """Anthropic usage from OpenAI ``usage`` or, failing that, llama-server's
    ``timings``.  Anthropic's ``input_tokens`` leaves out cache reads (their sum is the
    prompt); OpenAI's ``prompt_tokens`` holds them, llama-server's ``prompt_n`` doesn't."""
    cached = _count(timings.get("cache_n")) if isinstance(timings, dict) else None
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        prompt = _count(usage.get("prompt_tokens")) or 0
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and _count(details.get("cached_tokens")) is not None:
            cached = _count(details.get("cached_tokens"))
        cached = min(cached, prompt) if cached is not None else None
        out = {"input_tokens": prompt - (cached or 0)}
        out["output_tokens"] = _count(usage.get("completion_tokens")) or 0
    elif isinstance(timings, dict) and "predicted_n" in timings:
        out = {"input_tokens": _count(timings.get("prompt_n")) or 0}
        out["output_tokens"] = _count(timings.get("predicted_n")) or 0
    else:
        return None
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    return out


# -- OpenAI stream -> Anthropic stream --------------------------------------------------


class StreamTranslator(EventTranslator):
    """Turns one streamed OpenAI answer into Anthropic SSE: :meth:`feed` each piece of
    the backend's stream as it comes, then :meth:`end` once it is over.

    OpenAI comments (``: …`` keep-alives) become Anthropic ``ping`` events, so a client
    still sees life while a model loads; ``[DONE]`` is left to :meth:`end`.  Each text
    delta costs one ``json.loads`` and one string encode."""

    __slots__ = (
        "_counted",
        "_delta_prefix",
        "_finish",
        "_index",
        "_input_tokens",
        "_message_id",
        "_model",
        "_open",
        "_started",
        "_stop_sequence",
        "_thinking",
        "_timings",
        "_tool_key",
        "_tools",
        "_usage",
    )

    def __init__(
        self, model: str, message_id: str, *, thinking: bool = False, input_tokens: int = 0
    ) -> None:
        """``thinking``: pass ``reasoning_content`` on as thinking blocks;
        ``input_tokens``: the prompt's size if known before the answer (else 0 until
        the backend's counts come, in ``message_delta``)."""
        self._model = model
        self._message_id = message_id
        self._thinking = thinking
        self._input_tokens = input_tokens
        super().__init__(MAX_PENDING_BYTES)  # done: message_stop or an error sent
        self._started = False  # message_start sent
        self._index = -1  # of the last content block opened
        self._open = 0  # the kind of the open block, 0 when none
        self._delta_prefix = b""  # a content_block_delta for the open block, up to its value
        self._tool_key: object = None  # the OpenAI tool call the open tool block is
        self._tools = 0  # tool blocks opened
        self._counted = 0  # content deltas: the output count if the backend gives none
        self._finish: str | None = None
        self._stop_sequence: object = None
        self._usage: dict | None = None
        self._timings: dict | None = None

    def _oversized(self) -> bytes:
        return self._error({"message": "backend sent an oversized event"})

    def end(self) -> bytes:
        """The closing events, once the backend's stream is over: close the open block,
        ``message_delta`` (stop reason, token counts) and ``message_stop``."""
        if self._done:
            return b""
        out: list[bytes] = []
        if self._flush(out):
            return b"".join(out)
        self._done = True
        if not self._started:
            out.append(self._message_start())
        self._close(out)
        usage = _anthropic_usage(self._usage, self._timings) or {"output_tokens": self._counted}
        choice = {"finish_reason": self._finish, "stop_reason": self._stop_sequence}
        stop_reason, stop_sequence = _stop(choice, self._tools > 0)
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        out.append(_sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        return b"".join(out)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        if event.startswith(b"data: ") and b"\n" not in event:
            payload = event[6:]
        else:
            payload = _data(event)
            if payload is None:
                if event.lstrip().startswith(b":"):  # a keep-alive comment
                    if not self._started:
                        out.append(self._message_start())
                    out.append(_PING)
                return
        if (text := plain_content(payload)) is not None:  # most events: no parse
            if not self._started:
                out.append(self._message_start())
            if text:
                self._delta(_TEXT, text, out)
            return
        if payload.strip() == b"[DONE]":
            return
        try:
            chunk = json.loads(payload)
        except (ValueError, RecursionError):
            return  # not JSON: nothing a client could use
        if isinstance(chunk, dict):
            self._chunk(chunk, out)

    def _chunk(self, chunk: dict, out: list[bytes]) -> None:
        error = chunk.get("error")
        if error is not None:
            self._done = True
            out.append(self._error(error))
            return
        if not self._started:
            out.append(self._message_start())
        usage, timings = chunk.get("usage"), chunk.get("timings")
        if usage and isinstance(usage, dict):
            self._usage = usage
        if timings and isinstance(timings, dict):
            self._timings = timings
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if self._thinking:
                reasoning = delta.get("reasoning_content")
                if reasoning and isinstance(reasoning, str):
                    self._delta(_THINKING, reasoning, out)
            text = delta.get("content")
            if text and isinstance(text, str):
                self._delta(_TEXT, text, out)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._tool_delta(call, out)
        finish = choice.get("finish_reason")
        if finish and isinstance(finish, str):
            self._finish = finish
            self._stop_sequence = choice.get("stop_reason")  # vLLM: the stop string

    def _delta(self, kind: int, text: str, out: list[bytes]) -> None:
        if self._open != kind:
            if kind == _TEXT:
                self._open_block(kind, {"type": "text", "text": ""}, b"text_delta", b"text", out)
            else:
                block = {"type": "thinking", "thinking": "", "signature": ""}
                self._open_block(kind, block, b"thinking_delta", b"thinking", out)
        self._counted += 1
        out.append(self._delta_prefix + json.dumps(text).encode() + b"}}\n\n")

    def _tool_delta(self, call: dict, out: list[bytes]) -> None:
        index, ident = call.get("index"), call.get("id")
        key = index if is_int(index) else ident if ident and isinstance(ident, str) else None
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if self._open != _TOOL or (key is not None and key != self._tool_key):
            self._tools += 1
            name = function.get("name")
            block = {
                "type": "tool_use",
                "id": ident if ident and isinstance(ident, str) else self._tool_id(),
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            self._open_block(_TOOL, block, b"input_json_delta", b"partial_json", out)
            self._tool_key = key
        arguments = function.get("arguments")
        if arguments and isinstance(arguments, str):
            self._counted += 1
            out.append(self._delta_prefix + json.dumps(arguments).encode() + b"}}\n\n")

    def _open_block(
        self, kind: int, block: dict, delta_type: bytes, field: bytes, out: list[bytes]
    ) -> None:
        self._close(out)
        self._index += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(_sse("content_block_start", start))
        self._delta_prefix = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"%s","%s":' % (self._index, delta_type, field)
        )

    def _close(self, out: list[bytes]) -> None:
        if self._open:
            out.append(
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
                % self._index
            )
            self._open = 0

    def _message_start(self) -> bytes:
        self._started = True
        message = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return _sse("message_start", {"type": "message_start", "message": message})

    def _error(self, error: Any) -> bytes:
        self._done = True
        return _sse("error", _stream_error(error))

    def _tool_id(self) -> str:
        return f"toolu_{self._message_id.removeprefix('msg_')[:MAX_ID_CHARS]}_{self._tools}"


def _stream_error(error: Any) -> dict:
    """An OpenAI error object (``{"message", "code", "type"}``) in Anthropic's shape;
    an HTTP ``code`` picks the type, as :func:`error_body` does."""
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = _dumps(error, "backend error")
    status = code if is_int(code) and 400 <= code <= 599 else 500
    return error_body(status, message[:MAX_ERROR_CHARS])


def error_body(status: int, message: str) -> dict:
    """Anthropic's error body for an HTTP ``status``; other 4xx are
    ``invalid_request_error`` and other 5xx ``api_error``, as Anthropic's errors page says."""
    kind = _ERROR_TYPES.get(status)
    if kind is None:
        kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
    return {"type": "error", "error": {"type": kind, "message": message}}


# -- OpenAI request -> Anthropic request (a model on Anthropic's cloud) -----------------


def openai_to_messages(body: dict, model: str) -> dict:
    """An OpenAI chat completions body as an Anthropic Messages body for ``model``:
    system and developer messages joined into ``system``, tool messages as
    ``tool_result`` blocks, ``max_tokens`` DEFAULT_MAX_TOKENS when absent."""
    system: list[str] = []
    turns: list[dict] = []
    for role, message, where in openai_chat.messages(body):
        content = message.get("content")
        if role in openai_chat.SYSTEM_ROLES:
            system.append(openai_chat.plain_text(content, f"{where}.content"))
        elif role == "user":
            _turn(turns, "user", _user_blocks(content, f"{where}.content"))
        elif role == "assistant":
            _turn(turns, "assistant", _assistant_blocks(message, where))
        else:
            _turn(turns, "user", [_tool_result_block(message, where)])
    if not turns:
        raise ValueError("messages: a user or assistant message is required")
    out: dict[str, Any] = {"model": model, "max_tokens": _openai_max_tokens(body)}
    if any(system):
        out["system"] = "\n\n".join(s for s in system if s)
    out["messages"] = turns
    _openai_sampling(body, out)
    _openai_tools(body, out)
    return out


def _turn(turns: list[dict], role: str, blocks: list[dict]) -> None:
    """Adds ``blocks`` as a turn of ``role``, merged into the last turn if it has that
    role (a run of tool messages is one user turn of tool results)."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _user_blocks(content: Any, where: str) -> list[dict]:
    return [
        {"type": "text", "text": part} if isinstance(part, str) else _image_block(part)
        for part in openai_chat.user_content(content, where)
    ]


def _image_block(read: openai_chat.Image) -> dict:
    if read.url is not None:
        return {"type": "image", "source": {"type": "url", "url": read.url}}
    if read.media_type not in IMAGE_MEDIA_TYPES:
        raise ValueError(f"{read.where}.url: one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}")
    source = {"type": "base64", "media_type": read.media_type, "data": read.data}
    return {"type": "image", "source": source}


def _assistant_blocks(message: dict, where: str) -> list[dict]:
    content = message.get("content")
    blocks = []
    if content is not None:
        text = openai_chat.plain_text(content, f"{where}.content")
        if text:
            blocks.append({"type": "text", "text": text})
    for call in openai_chat.tool_calls(message, where):
        tool_use = {"type": "tool_use", "id": call.id, "name": call.name}
        blocks.append({**tool_use, "input": call.arguments})
    return blocks


def _tool_result_block(message: dict, where: str) -> dict:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise ValueError(f"{where}.tool_call_id: a non-empty string is required")
    content = openai_chat.plain_text(message.get("content") or "", f"{where}.content")
    return {"type": "tool_result", "tool_use_id": tool_call_id, "content": content}


def _openai_max_tokens(body: dict) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if not is_int(value) or not 0 < value <= MAX_TOKENS_CEILING:
                raise ValueError(f"{name}: a positive integer is required")
            return value
    return DEFAULT_MAX_TOKENS


def _openai_sampling(body: dict, out: dict) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise ValueError("n: Anthropic models give one choice")
    temperature = body.get("temperature")
    if temperature is not None:
        if not is_number(temperature) or temperature < 0:
            raise ValueError("temperature: a non-negative number is required")
        out["temperature"] = min(temperature, 1.0)  # OpenAI's range is 0-2, Anthropic's 0-1
    top_p = body.get("top_p")
    if top_p is not None:
        if not is_number(top_p) or not 0 <= top_p <= 1:
            raise ValueError("top_p: a number from 0 to 1 is required")
        out["top_p"] = top_p
    if stops := openai_chat.stop_sequences(body):
        out["stop_sequences"] = stops
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ValueError("stream: a boolean is required")
    if stream:
        out["stream"] = True
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}


def _openai_tools(body: dict, out: dict) -> None:
    tools = openai_chat.function_tools(body)
    if not tools:
        return
    converted = []
    for tool in tools:
        tool_out: dict[str, Any] = {"name": tool.name}
        if tool.description:
            tool_out["description"] = tool.description
        tool_out["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
        converted.append(tool_out)
    out["tools"] = converted
    choice = openai_chat.tool_choice(body)
    mode, name = choice or ("auto", "")
    tool_choice: dict[str, Any] = {"type": _TOOL_CHOICE_TYPES.get(mode, mode)}
    if mode == "function":
        tool_choice = {"type": "tool", "name": name}
    parallel = body.get("parallel_tool_calls")
    if parallel is False and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    if choice is not None or parallel is False:
        out["tool_choice"] = tool_choice


# -- Anthropic answer -> OpenAI answer --------------------------------------------------


def messages_to_openai(message: dict, model: str, created: int) -> dict:
    """An Anthropic ``Message`` as an OpenAI chat completion for ``model``; thinking
    comes as ``reasoning_content``, as llama-server and DeepSeek give it."""
    message = message if isinstance(message, dict) else {}
    texts, reasoning, calls = [], [], []
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            reasoning.append(block["thinking"])
        elif kind == "tool_use":
            arguments = _dumps(block.get("input") or {}, "{}")
            function = {"name": _str(block.get("name")), "arguments": arguments}
            calls.append({"id": _str(block.get("id")), "type": "function", "function": function})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if reply["content"] is None and not calls:
        reply["content"] = ""
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if calls:
        reply["tool_calls"] = calls
    stop_reason = message.get("stop_reason")
    finish = _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    return {
        "id": "chatcmpl-" + _str(message.get("id")).removeprefix("msg_"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
        "usage": _openai_usage(message.get("usage")),
    }


def _openai_usage(usage: Any) -> dict:
    """OpenAI usage from Anthropic usage: the prompt is input plus cache reads and
    writes, and cache reads are OpenAI's ``cached_tokens``."""
    usage = usage if isinstance(usage, dict) else {}
    cached = _count(usage.get("cache_read_input_tokens")) or 0
    written = _count(usage.get("cache_creation_input_tokens")) or 0
    prompt = (_count(usage.get("input_tokens")) or 0) + cached + written
    completion = _count(usage.get("output_tokens")) or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


# -- Anthropic stream -> OpenAI stream --------------------------------------------------


class AnthropicToOpenAIStream(EventTranslator):
    """Turns one streamed Anthropic answer into OpenAI SSE chunks: :meth:`feed` each
    piece of Anthropic's stream; ``message_stop`` gives the finish chunk (with usage)
    and ``[DONE]``.  Anthropic ``ping`` events become SSE comments (keep-alives)."""

    __slots__ = ("_prefix", "_stop_reason", "_tool_index", "_usage")

    def __init__(self, model: str, completion_id: str, created: int) -> None:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
        head["model"] = model
        # Every chunk is this prefix, then its delta and the rest of its choice.
        self._prefix = b"data: " + _dumps(head, "{}").encode()[:-1]
        self._prefix += b',"choices":[{"index":0,"delta":'
        super().__init__(MAX_PENDING_BYTES)
        self._tool_index: dict[int | None, int] = {}  # Anthropic block index -> OpenAI call index
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None

    def _oversized(self) -> bytes:
        return _openai_error("api_error", "upstream sent an oversized event")

    def end(self) -> bytes:
        """What to send when Anthropic's stream closed: nothing after ``message_stop``,
        else an error event (the answer was cut off)."""
        if self._done:
            return b""
        out: list[bytes] = []
        if not self._flush(out):
            self._done = True
            out.append(_openai_error("api_error", "upstream stream ended before message_stop"))
        return b"".join(out)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        payload = _data(event)
        if payload is None:
            return
        if (plain := _TEXT_DELTA.match(payload)) is not None:  # most events: no parse
            out.append(self._prefix + b'{"content":"' + plain.group(1) + b'"},' + _NOT_LAST)
            return
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self._usage.update(usage if isinstance(usage, dict) else {})
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "message_delta":
            delta, usage = data.get("delta"), data.get("usage")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
            if isinstance(usage, dict):  # cumulative counts: the newest win
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self._done = True
            out.append(self._finish_chunk() + _DONE)
        elif kind == "ping":
            out.append(b": ping\n\n")
        elif kind == "error":
            self._done = True
            error = data.get("error")
            error = error if isinstance(error, dict) else {}
            message = _str(error.get("message")) or "upstream error"
            out.append(_openai_error(_str(error.get("type")) or "api_error", message))

    def _block_start(self, data: dict, out: list[bytes]) -> None:
        block = data.get("content_block")
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":
            call_index = len(self._tool_index)
            self._tool_index[_key(data.get("index"))] = call_index
            function = {"name": _str(block.get("name")), "arguments": ""}
            call = {"index": call_index, "id": _str(block.get("id")), "type": "function"}
            call["function"] = function
            out.append(self._chunk({"tool_calls": [call]}))
        elif kind == "text" and block.get("text") and isinstance(block["text"], str):
            out.append(self._chunk({"content": block["text"]}))

    def _block_delta(self, data: dict, out: list[bytes]) -> None:
        delta = data.get("delta")
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            out.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            call_index = self._tool_index.get(_key(data.get("index")))
            if call_index is not None and delta["partial_json"]:
                function = {"arguments": delta["partial_json"]}
                out.append(
                    self._chunk({"tool_calls": [{"index": call_index, "function": function}]})
                )
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            out.append(self._chunk({"reasoning_content": delta["thinking"]}))

    def _chunk(self, delta: dict) -> bytes:
        return self._prefix + _dumps(delta, "{}").encode() + b',"finish_reason":null}]}\n\n'

    def _finish_chunk(self) -> bytes:
        reason = _FINISH_REASONS.get(self._stop_reason or "", "stop")
        usage = _dumps(_openai_usage(self._usage), "{}").encode()
        return self._prefix + b'{},"finish_reason":"%s"}],"usage":%s}\n\n' % (
            reason.encode(),
            usage,
        )


def _openai_error(kind: str, message: str) -> bytes:
    error = {"message": message[:MAX_ERROR_CHARS], "type": kind, "code": None}
    return b"data: " + _dumps({"error": error}, "{}").encode() + b"\n\n"


# -- small helpers ----------------------------------------------------------------------


def _sse(name: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), _dumps(data, "{}").encode())


def _data(event: bytes) -> bytes | None:
    """The data of one SSE event (its ``data:`` lines joined), None when it has none."""
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def _dumps(value: Any, default: Any) -> Any:
    """Compact ASCII JSON (safe for any string, even a lone surrogate), or ``default``
    for what JSON can't hold (NaN, cycles, too deep)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return default


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _first(choices: Any) -> dict:
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _message_id(openai_id: Any, seed: str) -> str:
    """``msg_`` and the backend's completion id (made safe), else a hash of the answer."""
    if isinstance(openai_id, str):
        safe = "".join(c for c in openai_id[: MAX_ID_CHARS * 2] if c.isascii() and c.isalnum())
        if safe:
            return "msg_" + safe[:MAX_ID_CHARS]
    digest = hashlib.blake2b(seed.encode("utf-8", "replace"), digest_size=12).hexdigest()
    return "msg_" + digest


def _key(index: Any) -> int | None:
    """A content block index as a dict key (None for what is not one)."""
    return index if is_int(index) else None


def _count(value: Any) -> int | None:
    """A token count a server reported, if it is one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40:
        return value
    return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _name(value: Any) -> str:
    """A field's value for an error message: short and on one line."""
    return repr(value[:40]) if isinstance(value, str) else type(value).__name__


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "replace"))
