"""Admin commands, mesh-wide: the pool's (load, unload, pin, unpin, extend-ttl; DESIGN.md
§6) and the endpoints' (add, remove).

``POST /api/models/{name}/{action}``, ``/api/endpoints`` and their CLI come here.  This
node carries out a command itself; another node is told by a statement signed with the
mesh owner key (:mod:`meshllm.owner`), on a ``pool`` frame, as ``drop`` is, so only the
owner commands other people's machines (:class:`OwnerChannel`).  A plain ``load`` with
no node is what a request does: the placement rule picks the node, which any member
may ask.

Without ``--node`` a pool command goes where it makes sense: ``unload``, ``unpin`` and
``extend-ttl`` to every node that has the model loaded; ``pin`` there too, or to the
placement's node when it is loaded nowhere.  An endpoint is removed from the node that
announces it.
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

POOL_KIND = FrameType.POOL.value  # the statement kind of a pool command
ENDPOINT_KIND = "endpoint"  # ... of an endpoint command, on the same frame


class OwnerChannel:
    """Statements signed by the mesh owner key, to other nodes and from them."""

    def __init__(
        self,
        gossip: Gossip,
        *,
        mesh_id: str,
        owner_public_key: bytes,
        owner_key: Callable[[], OwnerKey | None],
        seen: SeenNonces,
    ) -> None:
        """``owner_key``: the key, when this machine holds it (read afresh each time)."""
        self._gossip = gossip
        self._mesh_id = mesh_id
        self._owner_public_key = owner_public_key
        self._owner_key = owner_key
        self._seen = seen

    def send(self, node_id: str, kind: str, body: dict[str, Any], what: str) -> None:
        """Tell ``node_id`` to do ``body`` (``what``: for the error without a key).  Raises
        AuthError without the owner key, CommandError (503) without a link."""
        owner = self._owner_key()
        if owner is None:
            raise AuthError(
                f"only the mesh owner can {what} on another node ({node_id}): this "
                "machine has no owner key; run `meshllm owner import KEY` here with the key "
                "`meshllm owner export` prints on the seed"
            )
        link = self._gossip.link(node_id)
        if link is None:
            raise CommandError(f"no link to {node_id} right now", 503)
        statement = sign_statement(
            owner, kind, {**body, "node_id": node_id}, time.time(), mesh_id=self._mesh_id
        )
        link.send(make_frame(FrameType.POOL, statement=statement))

    def receive(self, frame: Frame, kind: str) -> dict[str, Any]:
        """The body of a fresh owner statement of ``kind`` naming this node.  Raises
        AuthError for anything else."""
        body = verify_statement(
            self._owner_public_key,
            frame.get("statement"),
            time.time(),
            mesh_id=self._mesh_id,
            kind=kind,
            seen=self._seen,
        )
        if body.get("node_id") != self._gossip.state.me.node_id:
            raise AuthError("the owner's statement names another node")
        return body


class PoolCommands:
    """Runs pool commands here, and sends them, owner-signed, to other nodes."""

    def __init__(
        self,
        gossip: Gossip,
        serving: ServingManager | None,
        owner: OwnerChannel,
        load_anywhere: Callable[[str], Awaitable[str | None]],
    ) -> None:
        """``load_anywhere``: have a model loaded where placement puts it (the proxy's)."""
        self._gossip = gossip
        self._serving = serving
        self._owner = owner
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

    def on_statement(self, link: Link, frame: Frame) -> None:
        """An owner's pool statement: carried out only when fresh, signed by the mesh
        owner and naming this node; anything else is logged and ignored."""
        try:
            body = self._owner.receive(frame, POOL_KIND)
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
        body: dict[str, Any] = {"action": action, "model": model}
        if seconds is not None:
            body["seconds"] = seconds
        self._owner.send(node_id, POOL_KIND, body, f"{action} a model")


class EndpointCommands:
    """Adds and removes endpoints here, and, owner-signed, on other nodes."""

    def __init__(self, gossip: Gossip, serving: ServingManager | None, owner: OwnerChannel) -> None:
        self._gossip = gossip
        self._serving = serving
        self._owner = owner

    def listed(self) -> list[dict[str, Any]]:
        """Every node's endpoints: this node's in full (no keys), peers' as announced."""
        me = self._gossip.state.me.node_id
        out: list[dict[str, Any]] = []
        if self._serving is not None:
            out += [{**e, "node_id": me} for e in self._serving.endpoints.listed()]
        for peer in sorted(self._gossip.state.peers.values(), key=lambda a: a.node_id):
            for endpoint_id, entry in sorted(peer.endpoints.items()):
                out.append(
                    {"id": endpoint_id, "node_id": peer.node_id, "url": None,
                     "has_api_key": None, "latency_ms": None, "error": None, **entry}
                )  # fmt: skip
        return out

    async def add(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Add the endpoint ``fields`` describe, here or on ``fields["node"]``; its record.
        Raises CommandError (400: a bad field) or AuthError."""
        me = self._gossip.state.me.node_id
        node_id = fields.get("node") or me
        args = {k: fields.get(k) for k in ("url", "kind", "name", "api_key")}
        args["kind"] = args["kind"] or "auto"
        if node_id != me:
            if node_id not in self._gossip.state.peers:
                raise CommandError(f"no live node {node_id}", 404)
            self._owner.send(node_id, ENDPOINT_KIND, {"action": "add", **args}, "add an endpoint")
            return {"id": None, "url": args["url"], "node_id": node_id, "pending": True}
        return await self._add_here(args)

    async def remove(self, endpoint_id: str) -> str:
        """Remove the endpoint wherever it is; the node it was on."""
        me = self._gossip.state.me.node_id
        if self._serving is not None and endpoint_id in self._serving.endpoints.endpoints:
            try:
                await self._serving.endpoints.remove(endpoint_id)
            except ValueError as exc:  # being removed already
                raise CommandError(str(exc), 409) from None
            return me
        for peer in self._gossip.state.peers.values():
            if endpoint_id in peer.endpoints:
                body = {"action": "remove", "id": endpoint_id}
                self._owner.send(peer.node_id, ENDPOINT_KIND, body, "remove an endpoint")
                return peer.node_id
        raise CommandError(f"no endpoint {endpoint_id} in the mesh", 404)

    def on_statement(self, link: Link, frame: Frame, spawn: Callable[[Any], None]) -> None:
        """An owner's endpoint statement naming this node: carried out (on ``spawn``)."""
        try:
            body = self._owner.receive(frame, ENDPOINT_KIND)
        except AuthError as exc:
            log.warning("ignoring an endpoint command from peer %s: %s", link.node_id, exc)
            return
        action = body.get("action")
        log.warning("the mesh owner asks to %s an endpoint (via %s)", action, link.node_id)
        if action == "add":
            spawn(self._add_quietly(body))
        elif action == "remove" and isinstance(body.get("id"), str):
            spawn(self._remove_quietly(body["id"]))

    async def _add_here(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._serving is None:
            raise CommandError("a lite client fronts no endpoints", 409)
        try:
            record = await self._serving.endpoints.add(**args)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc), 400) from None
        return {**record.public(), "node_id": self._gossip.state.me.node_id}

    async def _remove_quietly(self, endpoint_id: str) -> None:
        try:
            await self.remove(endpoint_id)
        except CommandError as exc:
            log.warning("cannot remove the owner's endpoint: %s", exc)

    async def _add_quietly(self, body: dict[str, Any]) -> None:
        args = {k: body.get(k) for k in ("url", "kind", "name", "api_key")}
        try:
            await self._add_here({**args, "kind": args["kind"] or "auto"})
        except CommandError as exc:
            log.warning("cannot add the owner's endpoint: %s", exc)


def statement_kind(frame: Frame) -> str | None:
    """The kind a ``pool`` frame's statement says it is (unverified: for dispatch only;
    the handler verifies the statement as that kind)."""
    statement = frame.get("statement")
    kind = statement.get("kind") if isinstance(statement, dict) else None
    return kind if isinstance(kind, str) else None
