"""The node's local HTTP app: ``/health``, ``/api/*`` and the OpenAI-compatible proxy routes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshllm.gossip.announcement import ModelState, PeerAnnouncement

if TYPE_CHECKING:
    from meshllm.node import Node

NODE_KEY = web.AppKey("node", object)


def openai_error(status: int, message: str, code: str, **headers: str) -> web.Response:
    """An error in OpenAI's shape ``{"error": {"message", "type", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": code}},
        status=status,
        headers=headers or None,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown routes and wrong methods answer in OpenAI's error shape too."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return openai_error(404, f"no route {request.method} {request.path}", "not_found")
    except web.HTTPMethodNotAllowed:
        return openai_error(405, f"{request.method} not allowed on {request.path}", "bad_method")
    except web.HTTPRequestEntityTooLarge:
        return openai_error(413, "request body too large", "too_large")


def create_app(node: Node) -> web.Application:
    """The aiohttp application served on the node's ``--port``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=32 << 20)
    app[NODE_KEY] = node
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
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
    return {
        **me.to_wire(),
        "token": node.token,
        "uptime_s": round(time.time() - node.started_at, 1),
        "peers": peers,
        "catalog": catalog(state.all()),
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
