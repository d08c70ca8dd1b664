"""What a pool command may say: its actions and their bounds (pure).

Shared by the command's carrier (:mod:`meshllm.commands`), which checks a command
from the HTTP API and from an owner's statement alike, and the API's description.
"""

from __future__ import annotations

import math
from typing import Any

from meshllm.errors import CommandError

ACTIONS = ("load", "unload", "pin", "unpin", "extend-ttl")
MAX_EXTEND_S = 7 * 24 * 3600.0  # extend-ttl by at most a week


def check_command(action: Any, seconds: Any) -> None:
    """Raise CommandError (400) for an unknown action or a bad ``seconds``."""
    if action not in ACTIONS:
        raise CommandError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}", 400)
    if action == "extend-ttl":
        ok = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not ok or not (0 < seconds <= MAX_EXTEND_S) or math.isnan(seconds):
            raise CommandError(f"extend-ttl needs seconds in (0, {MAX_EXTEND_S:.0f}]", 400)
