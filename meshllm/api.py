"""The node's local HTTP app: ``/health``, ``/api/*`` and the OpenAI-compatible proxy routes."""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshllm.election import elect
from meshllm.gossip.announcement import ModelState, PeerAnnouncement
from meshllm.proxy import MAX_BODY_BYTES, add_proxy_routes, error_response, openai_error_middleware

if TYPE_CHECKING:
    from meshllm.node import Node

NODE_KEY = web.AppKey("node", object)


def create_app(node: Node) -> web.Application:
    """The aiohttp application served on the node's ``--port``."""
    app = web.Application(middlewares=[openai_error_middleware], client_max_size=MAX_BODY_BYTES)
    app[NODE_KEY] = node
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/drop", drop)
    if node.proxy_mesh is not None:
        add_proxy_routes(app, node.proxy_mesh, load_timeout=node.config.load_timeout)
    return app


async def health(request: web.Request) -> web.Response:
    node: Node = request.app[NODE_KEY]  # type: ignore[assignment]
    return web.json_response({"ok": True, "node_id": node.identity.node_id})


async def status(request: web.Request) -> web.Response:
    node: Node = request.app[NODE_KEY]  # type: ignore[assignment]
    return web.json_response(status_snapshot(node))


def status_snapshot(node: Node) -> dict[str, Any]:
    """``/api/status``: this node, its live peers and the mesh catalog (DESIGN.md §4)."""
    state = node.state
    me = state.me
    assert node.gossip is not None
    probes, now = node.gossip.probes, node.gossip.now()
    peers = []
    for peer in sorted(state.peers.values(), key=lambda p: p.node_id):
        rtt, heard = probes.rtt(peer.node_id), probes.last_heard(peer.node_id)
        peers.append(
            {
                **peer.to_wire(),
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
                "last_seen_s": round(now - heard, 3) if heard is not None else None,
                "linked": node.gossip.link(peer.node_id) is not None,
            }
        )
    groups = elect(state.all())
    entries = catalog(state.all())
    for entry in entries:
        group = groups.get(entry["model"])
        entry["host"] = group.host if group else None
    return {
        **me.to_wire(),
        "token": node.token,
        "uptime_s": round(time.time() - node.started_at, 1),
        # Why auto-assignment serves nothing on this node (None: it serves, or was told what).
        "idle_reason": node.serving.idle_reason if node.serving is not None else None,
        "peers": peers,
        "catalog": entries,
    }


def catalog(announcements: list[PeerAnnouncement]) -> list[dict[str, Any]]:
    """Every model on any node's disk or in anyone's request list; warm if someone serves it."""
    sizes: dict[str, int] = {}
    names: set[str] = set()
    for ann in announcements:
        names.update(ann.requested_models, ann.serving)
        for name, size in ann.available_models.items():
            names.add(name)
            sizes[name] = max(size, sizes.get(name, 0))
    entries = []
    for name in sorted(names):
        nodes = sorted(a.node_id for a in announcements if a.serving.get(name) == ModelState.READY)
        entries.append(
            {"model": name, "warm": bool(nodes), "nodes": nodes, "size_bytes": sizes.get(name)}
        )
    return entries


async def drop(request: web.Request) -> web.Response:
    """``POST /api/drop {"model"}``: stop serving a model (localhost + admin token only)."""
    node: Node = request.app[NODE_KEY]  # type: ignore[assignment]
    remote = request.remote or ""
    try:
        local_caller = ipaddress.ip_address(remote).is_loopback
    except ValueError:
        local_caller = False
    if not local_caller:
        return error_response(403, "drop is only allowed from this machine", "forbidden")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not node.admin_token or not hmac.compare_digest(given, node.admin_token):
        return error_response(401, "drop needs this node's admin token", "unauthorized")
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error_response(400, "body is not JSON", "invalid_json")
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        return error_response(400, 'body must be {"model": NAME}', "invalid_request")
    nodes = await node.drop(model)
    if not nodes:
        return error_response(404, f"no node serves {model}", "model_not_found")
    return web.json_response({"dropped": model, "nodes": nodes})
