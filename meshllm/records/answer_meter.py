"""What an answer tells as it goes by: when its first token came, how many tokens it
took and gave, and (with ``--log-prompts``) its text.

The proxy hands every chunk of an answer, as it relays it, to an :class:`AnswerMeter`;
the meter never changes or holds up a byte.  Token
counts come from what the backend says, in order of trust:

* OpenAI's ``usage`` (``prompt_tokens``, ``completion_tokens``): every non-streamed
  answer, and a stream's last chunk when the client asked for it; Anthropic's
  (``input_tokens`` with cache reads and writes, ``output_tokens``), in a ``Message``
  and in the ``message_start`` and ``message_delta`` events of its streams;
* llama-server's ``timings`` (``cache_n + prompt_n`` in, ``predicted_n`` out), on the
  last chunk of each of its streams;
* else, for a stream, one token per event that carries content (a fair guess: servers
  send a token an event).

Per chunk the work is a few byte searches; only an event that holds ``usage`` or
``timings`` (one per answer) is parsed, so a streamed token costs about a microsecond.
"""

from __future__ import annotations

import json
from typing import Any

MAX_TEXT_CHARS = 64 * 1024  # of an answer's text kept for --log-prompts
MAX_COUNTED_BODY_BYTES = 1 << 20  # a bigger non-streamed answer is relayed, not counted
_COUNTED = (b'"usage"', b'"timings"')
_DATA = b"data:"


class AnswerMeter:
    """Watches one answer: call :meth:`chunk` for each piece relayed, in order."""

    __slots__ = (
        "_body",
        "_body_bytes",
        "_events",
        "_keep_text",
        "_stream",
        "_text",
        "_text_chars",
        "first_token_at",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, stream: bool, keep_text: bool = False) -> None:
        """``stream``: an SSE answer, else one JSON body (however it is chunked)."""
        self._stream = stream
        self._keep_text = keep_text
        self._events = 0  # data events with content seen: the fallback count
        self._body: list[bytes] = []  # a non-streamed answer, to read its counts at the end
        self._body_bytes = 0
        self._text: list[str] = []
        self._text_chars = 0
        self.first_token_at: float | None = None
        """When the first token (a stream's first data event; a body's first byte) went by."""
        self.tokens_in = 0
        self.tokens_out = 0

    def feed(self, data: bytes, now: float) -> None:
        """``data`` of the answer went by at ``now``."""
        if not self._stream:
            if self.first_token_at is None:
                self.first_token_at = now
            if self._body_bytes + len(data) <= MAX_COUNTED_BODY_BYTES:
                self._body.append(data)
                self._body_bytes += len(data)
            else:
                self._body_bytes = MAX_COUNTED_BODY_BYTES + 1  # too big to count: say so
            return
        if _DATA not in data:
            return  # comments (": loading …") and keep-alives carry no token
        if self.first_token_at is None:
            self.first_token_at = now
        # Content that is text, not a role chunk's null: compact JSON, or with a space.
        self._events += data.count(b'"content":"') + data.count(b'"content": "')
        if self._keep_text:
            for event in data.split(b"\n\n"):
                self._event(event)
        elif _COUNTED[0] in data or _COUNTED[1] in data:  # only the events that say
            for event in data.split(b"\n\n"):
                if _COUNTED[0] in event or _COUNTED[1] in event:
                    self._event(event)

    def finish(self) -> None:
        """The answer is over: a body is read for its counts; a stream without counts is
        counted by its events."""
        if self._stream:
            if self.tokens_out == 0:
                self.tokens_out = self._events
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        if not body or not (self._keep_text or _COUNTED[0] in body or _COUNTED[1] in body):
            return
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return
        if isinstance(parsed, dict):
            self._take_counts(parsed)
            if self._keep_text:
                self._text = [_message_text(parsed) or body.decode(errors="replace")]

    @property
    def text(self) -> str | None:
        """The answer's text, when kept (``keep_text``), capped at MAX_TEXT_CHARS."""
        if not self._keep_text:
            return None
        return "".join(self._text)[:MAX_TEXT_CHARS]

    def _event(self, event: bytes) -> None:
        start = event.find(_DATA)
        if start < 0:
            return
        payload = event[start + len(_DATA) :].strip()
        if not payload.startswith(b"{"):
            return
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        self._take_counts(parsed)
        if self._keep_text and self._text_chars < MAX_TEXT_CHARS:
            piece = _delta_text(parsed)
            if piece:
                self._text.append(piece)
                self._text_chars += len(piece)

    def _take_counts(self, parsed: dict[str, Any]) -> None:
        usage, timings = parsed.get("usage"), parsed.get("timings")
        message = parsed.get("message")  # Anthropic's message_start event
        if usage is None and isinstance(message, dict):
            usage = message.get("usage")
        if isinstance(usage, dict) and ("input_tokens" in usage or "output_tokens" in usage):
            # Anthropic's: the prompt is input plus cache reads and writes
            read = _count(usage.get("cache_read_input_tokens"), 0)
            written = _count(usage.get("cache_creation_input_tokens"), 0)
            if "input_tokens" in usage:
                self.tokens_in = _count(usage["input_tokens"], 0) + read + written
            self.tokens_out = _count(usage.get("output_tokens"), self.tokens_out)
        elif isinstance(usage, dict):
            self.tokens_in = _count(usage.get("prompt_tokens"), self.tokens_in)
            self.tokens_out = _count(usage.get("completion_tokens"), self.tokens_out)
        elif isinstance(timings, dict):
            prompt = _count(timings.get("prompt_n"), 0) + _count(timings.get("cache_n"), 0)
            self.tokens_in = prompt or self.tokens_in
            self.tokens_out = _count(timings.get("predicted_n"), self.tokens_out)


def _count(value: object, default: int) -> int:
    """A token count a backend reported, if it is one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40:
        return value
    return default


def _delta_text(parsed: dict[str, Any]) -> str:
    delta = parsed.get("delta")
    if parsed.get("type") == "content_block_delta" and isinstance(delta, dict):
        text = delta.get("text")  # Anthropic's text_delta
        return text if isinstance(text, str) else ""
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    text = delta.get("content") if isinstance(delta, dict) else None
    if text is None:
        text = choices[0].get("text")
    return text if isinstance(text, str) else ""


def _message_text(parsed: dict[str, Any]) -> str:
    if parsed.get("type") == "message" and isinstance(parsed.get("content"), list):
        blocks = parsed["content"]  # Anthropic's Message
        return "".join(b["text"] for b in blocks if isinstance(b, dict) and _is_text(b))
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    text = message.get("content") if isinstance(message, dict) else choices[0].get("text")
    return text if isinstance(text, str) else ""


def _is_text(block: dict[str, Any]) -> bool:
    return block.get("type") == "text" and isinstance(block.get("text"), str)
