"""The pool's admin commands, mesh-wide: load, unload, pin, unpin, extend-ttl (DESIGN.md §6).

``POST /api/models/{name}/{action}`` and ``meshllm load|unload|pin NAME [--node ID]``
come here.  This node carries out a command itself; another node is told by a
statement signed with the mesh owner key (:mod:`meshllm.owner`), on a ``pool`` frame,
as ``drop`` is, so only the owner commands other people's machines.  A plain ``load``
with no node is what a request does: the placement rule picks the node, which any
member may ask.

Without ``--node`` a command goes where it makes sense: ``unload``, ``unpin`` and
``extend-ttl`` to every node that has the model loaded; ``pin`` there too, or to the
placement's node when it is loaded nowhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshllm.election import Placement
from meshllm.errors import AuthError, CommandError
from meshllm.gossip import Gossip, Link, ModelState
from meshllm.owner import OwnerKey, SeenNonces, sign_statement, verify_statement
from meshllm.serving.manager import ServingManager
from meshllm.serving.pool_commands import check_command
from meshllm.wire import Frame, FrameType, make_frame

log = logging.getLogger(__name__)


class PoolCommands:
    """Runs pool commands here, and sends them, owner-signed, to other nodes."""

    def __init__(
        self,
        gossip: Gossip,
        serving: ServingManager | None,
        *,
        mesh_id: str,
        owner_public_key: bytes,
        owner_key: Callable[[], OwnerKey | None],
        seen: SeenNonces,
        load_anywhere: Callable[[str], Awaitable[str | None]],
    ) -> None:
        """``load_anywhere``: have a model loaded where placement puts it (the proxy's)."""
        self._gossip = gossip
        self._serving = serving
        self._mesh_id = mesh_id
        self._owner_public_key = owner_public_key
        self._owner_key = owner_key
        self._seen = seen
        self._load_anywhere = load_anywhere

    async def run(
        self, model: str, action: str, node_id: str | None = None, seconds: float | None = None
    ) -> list[str]:
        """Carry out ``action`` on ``model`` (on ``node_id``, or where it makes sense);
        the node ids it went to.  Raises CommandError (404: no such model or node, 400: a
        bad argument, 409: refused) or AuthError (another node, and no owner key here)."""
        check_command(action, seconds)
        state = self._gossip.state
        if not any(model in a.available_models or model in a.serving for a in state.all()):
            raise CommandError(f"no node has {model}", 404)
        if node_id is not None and node_id != state.me.node_id and node_id not in state.peers:
            raise CommandError(f"no live node {node_id}", 404)
        if action == "load" and node_id is None:
            refused = await self._load_anywhere(model)
            if refused is not None:
                raise CommandError(refused)
            return self._placed(model)
        targets = [node_id] if node_id is not None else self._targets(model, action)
        if not targets:
            raise CommandError(f"{model} is loaded nowhere", 409)
        for target in targets:
            if target == state.me.node_id:
                self.apply(action, model, seconds)
            else:
                self._send(target, action, model, seconds)
        return targets

    def apply(self, action: str, model: str, seconds: float | None) -> None:
        """Carry out ``action`` here.  Raises CommandError."""
        serving = self._serving
        if serving is None:
            raise CommandError("a lite client has no model pool", 409)
        runner = serving.runner
        known = model in runner.pool.models()
        if action == "load" or (action == "pin" and not serving.serves(model)):
            if action == "pin" and known:
                runner.pin(model)
            refused = serving.load(model)
            if refused is not None:
                raise CommandError(refused)
            if action == "pin":
                runner.pin(model)
            return
        if not known:
            raise CommandError(f"{model} is not on this node", 404)
        if action == "unload":
            if not runner.unload(model, "asked by the admin"):
                raise CommandError(f"{model} is not loaded here")
        elif action == "pin":
            runner.pin(model)
        elif action == "unpin":
            runner.unpin(model)
        elif action == "extend-ttl":
            runner.extend_ttl(model, seconds or 0.0)

    def on_frame(self, link: Link, frame: Frame) -> None:
        """A ``pool`` frame: carried out only on a fresh statement signed by the mesh
        owner naming this node; anything else is logged and ignored."""
        try:
            body = verify_statement(
                self._owner_public_key,
                frame.get("statement"),
                time.time(),
                mesh_id=self._mesh_id,
                kind=FrameType.POOL.value,
                seen=self._seen,
            )
            if body.get("node_id") != self._gossip.state.me.node_id:
                raise AuthError("the owner's statement names another node")
            action, model, seconds = body.get("action"), body.get("model"), body.get("seconds")
            if not isinstance(model, str) or not isinstance(action, str):
                raise AuthError("the owner's statement names no model or action")
            check_command(action, seconds)
            log.warning("the mesh owner asks for %s of %s (via %s)", action, model, link.node_id)
            self.apply(action, model, seconds)
        except (AuthError, CommandError) as exc:
            log.warning("ignoring a pool command from peer %s: %s", link.node_id, exc)

    def _targets(self, model: str, action: str) -> list[str]:
        state = self._gossip.state
        loaded = sorted(
            a.node_id
            for a in state.all()
            if a.serving.get(model) in (ModelState.READY, ModelState.STARTING)
        )
        if loaded or action != "pin" or self._serving is None:
            return loaded
        target = self._serving.placement(model)
        if not isinstance(target, Placement):
            raise CommandError(target)
        return [target.node_id]

    def _placed(self, model: str) -> list[str]:
        return sorted(
            a.node_id
            for a in self._gossip.state.all()
            if a.serving.get(model) in (ModelState.READY, ModelState.STARTING, ModelState.FETCHING)
        )

    def _send(self, node_id: str, action: str, model: str, seconds: float | None) -> None:
        owner = self._owner_key()
        if owner is None:
            raise AuthError(
                f"only the mesh owner can {action} a model on another node ({node_id}): this "
                "machine has no owner key; run `meshllm owner import KEY` here with the key "
                "`meshllm owner export` prints on the seed"
            )
        link = self._gossip.link(node_id)
        if link is None:
            raise CommandError(f"no link to {node_id} right now", 503)
        body: dict[str, Any] = {"action": action, "model": model, "node_id": node_id}
        if seconds is not None:
            body["seconds"] = seconds
        statement = sign_statement(
            owner, FrameType.POOL.value, body, time.time(), mesh_id=self._mesh_id
        )
        link.send(make_frame(FrameType.POOL, statement=statement))
