"""What the stream translators share: the events of a stream as they come whole
(:class:`EventBuffer`), and the one OpenAI event they see most, a plain content delta.

Nearly every event of a streamed answer from llama-server is
``{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"…"}}],…}``;
:func:`plain_content` reads its text with one anchored regular expression instead of
parsing the whole event (a parse is most of a translator's time per token: 0.9 µs
against 3.8 here).  Any other event, or one in another field order, is None: the
caller parses it whole, as before.
"""

from __future__ import annotations

import json
import re

# The choice holds exactly finish_reason (null: not the last), index and a delta with
# only text: the delta's, the choice's and the list's closing brackets follow it.
_PLAIN = re.compile(
    rb'\{"choices":\[\{"finish_reason":null,"index":0,"delta":\{"content":'
    rb'"((?:[^"\\]|\\.)*)"\}\}\]'
)


def plain_content(payload: bytes) -> str | None:
    """The text of an event (its ``data:`` payload) if it is a plain content delta that
    is not the last; None otherwise (then parse the event whole)."""
    match = _PLAIN.match(payload)
    if match is None:
        return None
    raw = match.group(1)
    try:
        return raw.decode() if b"\\" not in raw else json.loads(b'"' + raw + b'"')
    except ValueError:  # not UTF-8, or a bad escape: the whole parse will say
        return None


class EventBuffer:
    """SSE bytes in, whole events out: what follows the last blank line is kept for the
    next piece (line ends normalised to LF), at most ``max_pending`` bytes of it."""

    __slots__ = ("_max", "_pending")

    def __init__(self, max_pending: int) -> None:
        self._max = max_pending
        self._pending = b""

    def events(self, data: bytes) -> list[bytes]:
        """The events ``data`` ends, with what was kept before it."""
        if self._pending:  # may end in a CR whose LF starts this piece
            data = self._pending + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        cut = data.rfind(b"\n\n")
        self._pending = data[cut + 2 :] if cut >= 0 else data
        return data[:cut].split(b"\n\n") if cut >= 0 else []

    def overflowed(self) -> bool:
        """Whether the kept part grew past ``max_pending`` (then it is dropped)."""
        if len(self._pending) <= self._max:
            return False
        self._pending = b""
        return True

    def rest(self) -> bytes | None:
        """The unfinished last event, taken (None when there is none)."""
        rest, self._pending = self._pending.strip(b"\n"), b""
        return rest if rest.strip() else None


class EventTranslator:
    """What a translator of a provider's stream shares: :meth:`feed` takes any piece of
    the stream and hands each whole event to ``_event``, which appends what to send and
    sets ``_done`` once the answer is over; an event over ``max_pending`` bytes ends the
    stream with ``_oversized()``."""

    __slots__ = ("_done", "_pending")

    def __init__(self, max_pending: int) -> None:
        self._pending = EventBuffer(max_pending)
        self._done = False

    def feed(self, sse_bytes: bytes) -> bytes:
        """What to send for ``sse_bytes`` (a trailing unfinished event is kept)."""
        if self._done:
            return b""
        out: list[bytes] = []
        for event in self._pending.events(sse_bytes):
            self._event(event, out)
            if self._done:
                break
        if not self._done and self._pending.overflowed():
            self._done = True
            out.append(self._oversized())
        return b"".join(out)

    def _flush(self, out: list[bytes]) -> bool:
        """The stream closed: translate its unfinished last event into ``out``; whether
        the answer is over (``_done``), so that ``end()`` adds nothing of its own."""
        if (rest := self._pending.rest()) is not None:
            self._event(rest, out)
        return self._done

    def _event(self, event: bytes, out: list[bytes]) -> None:
        raise NotImplementedError

    def _oversized(self) -> bytes:
        raise NotImplementedError
