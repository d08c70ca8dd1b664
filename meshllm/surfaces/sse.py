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
