"""Google's Gemini API under an OpenAI client, as pure translation (no I/O, no clock).

:func:`openai_to_gemini` turns a chat completions body into the body of Gemini's
``:generateContent`` or ``:streamGenerateContent?alt=sse`` (the model is in the URL);
:func:`gemini_to_openai` a ``GenerateContentResponse`` into a ``chat.completion``;
:class:`GeminiToOpenAIStream` Gemini SSE into ``chat.completion.chunk`` SSE;
:func:`error_to_openai` Gemini's error body into OpenAI's.

A malformed request raises ``ValueError`` with a one-line message that names the field
(``messages.2.content.0.image_url.url``); unknown top-level fields are ignored.  What
Gemini answers is read as far as it makes sense and never raises.  An http(s)
``image_url`` becomes ``fileData`` (Gemini fetches public and signed URLs itself since
January 2026).  Tool call ids are not sent back (Gemini pairs responses by name and
order); a ``thoughtSignature`` travels in a tool call's
``extra_content.google.thought_signature``, where Google's own OpenAI endpoint puts it,
and a step's first call without one gets the skip sentinel of Google's thought-signatures
page (Gemini 3 rejects a replayed call with none).  Thoughts come as
``reasoning_content``, as llama-server gives them.  Field names are the REST ones
(camelCase), checked against ``google.genai.types``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from meshllm.surfaces import openai_chat
from meshllm.surfaces.openai_chat import is_int, is_number
from meshllm.surfaces.sse import EventTranslator

INT32_MAX = (1 << 31) - 1  # Gemini reads maxOutputTokens, topK and seed as int32
MAX_CANDIDATES = 8  # Gemini's candidateCount ceiling; higher candidate indexes are ignored
MAX_STOP_SEQUENCES = 5  # Gemini's stopSequences limit
MAX_ERROR_CHARS = 2000  # of Gemini's error message passed on to the client
MAX_PENDING_BYTES = 4 << 20  # of an unfinished SSE event held between feed() calls
MAX_ID_CHARS = 64  # of the completion id reused in a tool call id
SKIP_SIGNATURE = "skip_thought_signature_validator"

_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(
    (*_FILTERED, "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"), "content_filter"
)
# OpenAI field, Gemini generationConfig field, integer?, lowest, highest.
_CONFIG_FIELDS = (
    ("max_completion_tokens", "maxOutputTokens", True, 1, INT32_MAX),
    ("max_tokens", "maxOutputTokens", True, 1, INT32_MAX),  # the older name loses
    ("temperature", "temperature", False, 0, 2),
    ("top_p", "topP", False, 0, 1),
    ("top_k", "topK", True, 1, INT32_MAX),  # not OpenAI's; llama.cpp clients send it
    ("n", "candidateCount", True, 1, MAX_CANDIDATES),
    ("presence_penalty", "presencePenalty", False, -2, 2),
    ("frequency_penalty", "frequencyPenalty", False, -2, 2),
    ("seed", "seed", True, -INT32_MAX - 1, INT32_MAX),
)
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_URL_MIME_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg"} | {
    ext: f"image/{ext}" for ext in ("png", "webp", "gif", "heic", "heif", "bmp")
}
_DEFAULT_MIME = "image/jpeg"  # a URL with no known extension: Gemini reads the bytes anyway
_DONE = b"data: [DONE]\n\n"
_NOT_LAST = b',"finish_reason":null}]}\n\n'
# Nearly every event of a stream: one text part of choice 0, not the last.  Its text, a
# JSON string, goes into the OpenAI chunk as it is: no parse, no dump (a third the time).
_PLAIN = re.compile(
    rb'\{"candidates":\s*\[\{"content":\s*\{"parts":\s*\[\{"text":\s*"('
    rb'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})+)"\}\],'
    rb'\s*"role":\s*"model"\},\s*"index":\s*0\}\]'
)


# -- OpenAI request -> Gemini request ---------------------------------------------------


def openai_to_gemini(body: dict) -> dict:
    """An OpenAI chat completions body as a Gemini ``GenerateContentRequest`` body:
    system and developer messages joined into ``systemInstruction``, consecutive turns
    of one role merged, tool messages as ``functionResponse`` parts of a user turn."""
    system: list[str] = []
    turns: list[dict] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool messages
    for role, message, where in openai_chat.messages(body):
        content = message.get("content")
        if role in openai_chat.SYSTEM_ROLES:
            system.append(openai_chat.plain_text(content, f"{where}.content"))
        elif role == "user":
            _turn(turns, "user", _user_parts(content, f"{where}.content"))
        elif role == "assistant":
            _turn(turns, "model", _model_parts(message, where, names))
        else:
            _turn(turns, "user", [_function_response(message, where, names)])
    if not turns:
        raise ValueError("messages: a user or assistant message with content is required")
    out: dict[str, Any] = {"contents": turns}
    if any(system):
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(s for s in system if s)}]}
    if config := _generation_config(body):
        out["generationConfig"] = config
    _tools(body, out)
    return out


def _turn(turns: list[dict], role: str, parts: list[dict]) -> None:
    if parts and turns and turns[-1]["role"] == role:
        turns[-1]["parts"].extend(parts)
    elif parts:
        turns.append({"role": role, "parts": parts})


def _user_parts(content: Any, where: str) -> list[dict]:
    return [  # Gemini refuses an empty text part: user_content leaves them out
        {"text": part} if isinstance(part, str) else _image_part(part)
        for part in openai_chat.user_content(content, where)
    ]


def _image_part(read: openai_chat.Image) -> dict:
    if read.url is not None:  # Gemini fetches it; the type from its name, else JPEG
        name = read.url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
        mime_type = _URL_MIME_TYPES.get(name.rpartition(".")[2].lower(), _DEFAULT_MIME)
        return {"fileData": {"mimeType": mime_type, "fileUri": read.url}}
    return {"inlineData": {"mimeType": read.media_type, "data": read.data}}


def _model_parts(message: dict, where: str, names: dict[str, str]) -> list[dict]:
    content = message.get("content")
    text = openai_chat.plain_text(content, f"{where}.content") if content is not None else ""
    parts: list[dict] = [{"text": text}] if text else []
    for k, call in enumerate(openai_chat.tool_calls(message, where)):
        names[call.id] = call.name
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
        extra = call.call.get("extra_content")
        google = extra.get("google") if isinstance(extra, dict) else None
        signature = _str(google.get("thought_signature")) if isinstance(google, dict) else ""
        if signature or k == 0:  # a step's signature is on its first call
            part["thoughtSignature"] = signature or SKIP_SIGNATURE
        parts.append(part)
    return parts


def _function_response(message: dict, where: str, names: dict[str, str]) -> dict:
    ident = message.get("tool_call_id")
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"{where}.tool_call_id: a non-empty string is required")
    name = names.get(ident) or message.get("name")  # Gemini wants the function's name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.tool_call_id: no earlier assistant tool call has this id")
    text = openai_chat.plain_text(message.get("content") or "", f"{where}.content")
    parsed = _loads(text)
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


def _generation_config(body: dict) -> dict:
    config: dict[str, Any] = {}
    for name, key, integer, low, high in _CONFIG_FIELDS:
        value = body.get(name)
        if value is None or key in config:
            continue
        if not (is_int(value) if integer else is_number(value)) or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{name}: {kind} from {low} to {high} is required")
        config[key] = value
    stops = openai_chat.stop_sequences(body)
    if stops is not None:
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop: at most {MAX_STOP_SEQUENCES} sequences are allowed")
        if stops := [s for s in stops if s]:  # an empty sequence means nothing
            config["stopSequences"] = stops
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema: an object is required")
        config["responseJsonSchema"] = schema  # full JSON Schema, unlike responseSchema
    elif response_format is not None and kind not in ("text", "json_object"):
        raise ValueError("response_format.type: 'text', 'json_object' or 'json_schema'")
    return config


def _tools(body: dict, out: dict) -> None:
    declarations = []
    for tool in openai_chat.function_tools(body):
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if tool.parameters:  # JSON Schema as OpenAI has it, unlike the OpenAPI-subset
            declaration["parametersJsonSchema"] = tool.parameters  # parameters
        declarations.append(declaration)
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = openai_chat.tool_choice(body)
    if choice is None:
        return
    mode, name = choice
    if mode == "function":
        config: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [name]}
    else:
        config = {"mode": _TOOL_MODES[mode]}
    out["toolConfig"] = {"functionCallingConfig": config}


# -- Gemini answer -> OpenAI answer -----------------------------------------------------


def gemini_to_openai(answer: dict, model: str, created: int, completion_id: str) -> dict:
    """A Gemini ``GenerateContentResponse`` as an OpenAI chat completion for ``model``;
    a prompt Gemini blocked is one empty choice finished by ``content_filter``."""
    answer = answer if isinstance(answer, dict) else {}
    choices: list[dict] = []
    calls = 0  # over all choices, so that tool call ids are unique in the answer
    for index, candidate in enumerate(_candidates(answer)):
        texts, thoughts, tool_calls = [], [], []
        for part in _parts(candidate):
            if isinstance(part.get("text"), str):
                (thoughts if part.get("thought") is True else texts).append(part["text"])
            elif isinstance(part.get("functionCall"), dict):
                tool_calls.append(_tool_call(part, completion_id, calls + len(tool_calls)))
        calls += len(tool_calls)
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if thoughts:
            reply["reasoning_content"] = "".join(thoughts)
        if tool_calls:
            reply["content"], reply["tool_calls"] = reply["content"] or None, tool_calls
        finish = _finish(candidate.get("finishReason"), bool(tool_calls))
        choices.append({"index": index, "message": reply, "finish_reason": finish})
    if not choices:
        finish = "content_filter" if _blocked(answer) else "stop"
        reply = {"role": "assistant", "content": ""}
        choices.append({"index": 0, "message": reply, "finish_reason": finish})
    completion: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
    }
    completion.update(model=model, choices=choices, usage=_usage(answer.get("usageMetadata")))
    return completion


def _candidates(answer: dict) -> list[dict]:
    candidates = answer.get("candidates")
    candidates = candidates[:MAX_CANDIDATES] if isinstance(candidates, list) else []
    return [c if isinstance(c, dict) else {} for c in candidates]


def _parts(candidate: dict) -> list[dict]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _blocked(answer: dict) -> bool:
    feedback = answer.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _tool_call(part: dict, completion_id: str, number: int) -> dict:
    """An OpenAI tool call from a ``functionCall`` part: Gemini's id, else one made of
    the completion id and ``number``; its thought signature in ``extra_content``."""
    call = part["functionCall"]
    ident = _str(call.get("id"))
    if not ident:
        safe = "".join(c for c in completion_id.removeprefix("chatcmpl-") if c.isalnum())
        ident = f"call_{safe[:MAX_ID_CHARS]}_{number}"
    args = call.get("args") if isinstance(call.get("args"), dict) else {}
    function = {"name": _str(call.get("name")), "arguments": _dumps(args)}
    out: dict[str, Any] = {"id": ident, "type": "function", "function": function}
    if signature := _str(part.get("thoughtSignature")):
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def _finish(reason: Any, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _usage(usage: Any) -> dict:
    """OpenAI usage from ``usageMetadata``; thoughts count as completion tokens, as
    OpenAI counts reasoning tokens."""
    usage = usage if isinstance(usage, dict) else {}
    prompt, thoughts = _count(usage, "promptTokenCount"), _count(usage, "thoughtsTokenCount")
    completion = _count(usage, "candidatesTokenCount") + thoughts
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    out["total_tokens"] = prompt + completion
    if cached := _count(usage, "cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return out


# -- Gemini stream -> OpenAI stream -----------------------------------------------------


class GeminiToOpenAIStream(EventTranslator):
    """Turns one streamed Gemini answer into OpenAI SSE: :meth:`feed` each piece of
    Gemini's stream (``data: {GenerateContentResponse}`` events), then :meth:`end`.
    Function calls come whole, as Gemini sends them; a ``finishReason`` gives its
    choice's finish chunk at once."""

    __slots__ = (
        "_calls",
        "_finished",
        "_head",
        "_id",
        "_usage",
        "_usage_chunk",
        "_usage_event",
    )

    def __init__(
        self, model: str, completion_id: str, created: int, include_usage: bool = False
    ) -> None:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
        head["model"] = model
        # Every chunk is this head (its closing brace cut off), then its choices.
        self._head = b"data: " + _dumps(head).encode()[:-1]
        self._id = completion_id
        super().__init__(MAX_PENDING_BYTES)
        self._calls: dict[int, int] = {}  # choice index -> tool calls so far (started choices)
        self._finished: set[int] = set()  # choices given their finish chunk
        self._usage: dict = {}  # the newest usageMetadata
        self._usage_event: bytes | None = None  # a newer one, in an event not parsed yet
        self._usage_chunk = include_usage  # a chunk of its own at the end, as OpenAI's

    def _oversized(self) -> bytes:
        return _error_event({"message": "upstream sent an oversized event"})

    def end(self) -> bytes:
        """What to send when Gemini's stream closed: the finish chunks not yet sent, the
        usage chunk if asked, ``[DONE]``; or an error event if no candidate finished
        (the answer was cut off)."""
        if self._done:
            return b""
        out: list[bytes] = []
        if self._flush(out):
            return b"".join(out)
        self._done = True
        if not self._finished:
            out.append(_error_event({"message": "upstream stream ended before finishReason"}))
            return b"".join(out)
        for index in sorted(self._calls.keys() - self._finished):
            out.append(self._chunk(index, {}, _finish(None, self._calls[index] > 0)))
        if self._usage_chunk:
            usage = _dumps(_usage(self._current_usage())).encode()
            out.append(self._head + b',"choices":[],"usage":' + usage + b"}\n\n")
        return b"".join(out) + _DONE

    def _event(self, event: bytes, out: list[bytes]) -> None:
        lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        payload = b"\n".join(line[1:] if line[:1] == b" " else line for line in lines)
        started = 0 in self._calls and 0 not in self._finished
        plain = _PLAIN.match(payload) if started else None
        if plain is not None and b'"finishReason"' not in payload and b"thought" not in payload:
            if b'"usageMetadata"' in payload:
                self._usage_event = payload  # read only if a finish chunk or the end asks
            text = b'{"content":"' + plain.group(1) + b'"}'
            out.append(self._head + b',"choices":[{"index":0,"delta":' + text + _NOT_LAST)
            return
        data = _loads(payload) if lines else None
        if not isinstance(data, dict):
            return
        if "error" in data:
            self._done = True
            error = data["error"]
            out.append(_error_event(error if isinstance(error, dict) else {"message": error}))
            return
        if isinstance(data.get("usageMetadata"), dict):
            self._usage = data["usageMetadata"]  # cumulative: the newest wins
            self._usage_event = None
        candidates = _candidates(data)
        for position, candidate in enumerate(candidates):
            index = candidate.get("index")
            ok = is_int(index) and 0 <= index < MAX_CANDIDATES
            self._candidate(candidate, index if ok else position, out)
        if not candidates and _blocked(data) and 0 not in self._finished:
            self._start(0, out)
            self._finished.add(0)
            out.append(self._chunk(0, {}, "content_filter"))

    def _candidate(self, candidate: dict, index: int, out: list[bytes]) -> None:
        if index in self._finished:
            return
        self._start(index, out)
        for part in _parts(candidate):
            if isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") is True else "content"
                out.append(self._chunk(index, {key: part["text"]}))
            elif isinstance(part.get("functionCall"), dict):
                total = sum(self._calls.values())  # ids unique over all choices
                call = {"index": self._calls[index], **_tool_call(part, self._id, total)}
                self._calls[index] += 1
                out.append(self._chunk(index, {"tool_calls": [call]}))
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason:
            self._finished.add(index)
            finish = _finish(reason, self._calls[index] > 0)
            out.append(self._chunk(index, {}, finish, usage=True))

    def _current_usage(self) -> dict:
        """The newest usageMetadata, from the last event that had one."""
        if self._usage_event is not None:
            data = _loads(self._usage_event)
            self._usage_event = None
            if isinstance(data, dict) and isinstance(data.get("usageMetadata"), dict):
                self._usage = data["usageMetadata"]
        return self._usage

    def _start(self, index: int, out: list[bytes]) -> None:
        if index not in self._calls:
            self._calls[index] = 0
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))

    def _chunk(
        self, index: int, delta: dict, reason: str | None = None, usage: bool = False
    ) -> bytes:
        """A chunk of one choice; ``usage``: with the usage so far (a finish chunk: the
        records count from it when the client asked for no usage chunk)."""
        choice = {"index": index, "delta": delta, "finish_reason": reason}
        chunk = self._head + b',"choices":[' + _dumps(choice).encode() + b"]"
        if usage and self._current_usage():
            chunk += b',"usage":' + _dumps(_usage(self._usage)).encode()
        return chunk + b"}\n\n"


# -- errors -----------------------------------------------------------------------------


def error_to_openai(status: int, body: bytes) -> dict:
    """OpenAI's error body for Gemini's HTTP ``status`` and ``body`` (Google's
    ``{"error": {"code", "message", "status"}}``, a list of one, or anything else)."""
    data = _loads(body)
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else ""
        error = {"message": text.strip()}
    return {"error": _error(error, status)}


def _error(error: dict, status: Any) -> dict:
    """A Google error object as OpenAI's; Google's ``status`` (``INVALID_ARGUMENT``) is
    the code, and the HTTP status (or the object's ``code``) picks the type."""
    status = status if is_int(status) else error.get("code")
    kind = "invalid_request_error" if is_int(status) and 400 <= status < 500 else "api_error"
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"upstream error (HTTP {status})" if is_int(status) else "upstream error"
    code = _str(error.get("status")) or None
    return {"message": message[:MAX_ERROR_CHARS], "type": kind, "code": code}


def _error_event(error: dict) -> bytes:
    return b"data: " + _dumps({"error": _error(error, None)}).encode() + b"\n\n"


# -- small helpers ----------------------------------------------------------------------


def _dumps(value: Any) -> str:
    """Compact ASCII JSON (safe for any string, even a lone surrogate), or ``{}`` for
    what JSON can't hold (NaN, cycles, too deep)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return "{}"


def _loads(data: Any) -> Any:
    """Parsed JSON, or None for what is not JSON (NaN and Infinity included)."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except (ValueError, TypeError, RecursionError):
        return None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _count(usage: dict, key: str) -> int:
    """A token count Gemini reported, or 0."""
    value = usage.get(key)
    return value if is_int(value) and 0 <= value < 1 << 40 else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
