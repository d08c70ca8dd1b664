"""Asking a peer to load a model, and answering such a request (DESIGN.md §6).

A request for a model that is hot nowhere is placed by the mesh's placement rule;
when it names another node, the entry node sends ``{t: load, model}`` on a new
stream of its authenticated link, and that node answers ``{t: load, ok: true}`` once
the load is under way (the request then waits for its announcement to say ``ready``),
or ``{t: load, ok: false, message}`` saying why not, so the asker tries the next node
in placement order.  Only mesh members can ask, and a load only ever evicts idle
models within the node's own budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from meshllm.errors import PeerError
from meshllm.gossip import is_model_name
from meshllm.wire import Frame, FrameStream, FrameType, make_frame

LOAD_ANSWER_TIMEOUT = 10.0  # seconds to wait for a peer to say whether it loads
MAX_MESSAGE_CHARS = 500  # a refusal's message, as relayed to a client


async def ask_to_load(
    stream: FrameStream, model: str, timeout: float = LOAD_ANSWER_TIMEOUT
) -> str | None:
    """Ask the peer on ``stream`` to load ``model``: None when it does, else why not."""
    try:
        await stream.send(make_frame(FrameType.LOAD, model=model))
        reply = await asyncio.wait_for(stream.recv(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except PeerError as exc:
        return f"the link failed: {exc}"
    finally:
        stream.reset()
    if not reply or reply.get("t") != FrameType.LOAD:
        return "no answer"
    if reply.get("ok") is True:
        return None
    message = reply.get("message")
    return str(message)[:MAX_MESSAGE_CHARS] if message else "refused"


async def answer_load_request(
    stream: FrameStream, head: Frame, load: Callable[[str], str | None]
) -> None:
    """A peer asks this node to load a model: ``load(model)`` says None (under way) or
    why not; the answer goes back on ``stream``."""
    model = head.get("model")
    if not is_model_name(model):
        refusal: str | None = "not a model name"
    else:
        refusal = load(model)
    answer = make_frame(FrameType.LOAD, ok=refusal is None)
    if refusal is not None:
        answer["message"] = refusal[:MAX_MESSAGE_CHARS]
    with contextlib.suppress(PeerError):
        await stream.send(answer)
        await stream.end()
