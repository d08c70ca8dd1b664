"""The node's local HTTP app: ``/health``, ``/api/*``, ``/openapi.json`` and the
OpenAI-compatible proxy routes.  It reaches the node only through :class:`NodeAPI`
and the proxy's :class:`~meshllm.proxy.routes.ProxyMesh`.

Every route sits behind :mod:`meshllm.proxy.guard` (Host allow-list, Origin, JSON-only
POST bodies; no cookie or foreign CORS header out).  ``/api/status`` carries no secret:
the join token, which holds the mesh secret, is only at ``GET /api/token``, which like
``POST /api/drop`` takes the admin token (``<state-dir>/admin_token``) from this machine.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from meshllm.errors import AuthError, CommandError
from meshllm.proxy import anthropic_surface, ollama_surface
from meshllm.proxy.access import AccessPolicy, install_access
from meshllm.proxy.admin import admin_refusal, read_json_object
from meshllm.proxy.dashboard_routes import add_dashboard_routes
from meshllm.proxy.errors import error_response, openai_error_middleware
from meshllm.proxy.events import EventSource, add_event_routes
from meshllm.proxy.fleet_routes import FleetAPI, add_fleet_routes
from meshllm.proxy.guard import GuardSettings, install_guard
from meshllm.proxy.key_routes import KeysAPI, add_key_routes
from meshllm.proxy.limits import DEFAULT_LIMITS, ByteBudget, HttpLimits
from meshllm.proxy.observe import RequestLog
from meshllm.proxy.openapi import openapi_handler
from meshllm.proxy.records_routes import RecordsAPI, add_records_routes
from meshllm.proxy.routes import LOAD_TIMEOUT_S, MAX_BODY_BYTES, ProxyMesh, add_proxy_routes


class NodeAPI(Protocol):
    """What the app needs of the node."""

    node_id: str
    admin_token: str
    """The secret of the admin routes (``<state-dir>/admin_token``); "" refuses them all."""
    token: str
    """The mesh's join token: a secret, only at ``/api/token``."""

    def status(self) -> dict[str, Any]:
        """``/api/status``: this node, its live peers and the catalog; never a secret."""
        ...

    async def drop(self, model: str) -> list[str]:
        """Stop ``model`` where it is served; the node ids told.  Raises AuthError when
        only the mesh owner may (it is served elsewhere)."""
        ...

    def models(self) -> list[dict[str, Any]]:
        """``GET /api/models``: every catalog model's state on every node."""
        ...

    async def pool_command(
        self, model: str, action: str, node_id: str | None, seconds: float | None
    ) -> list[str]:
        """A pool command (load, unload, pin, unpin, extend-ttl); the node ids it went to.
        Raises CommandError (with its HTTP status) or AuthError (needs the owner key)."""
        ...


NODE_KEY = web.AppKey("node", NodeAPI)


def create_app(
    node: NodeAPI,
    mesh: ProxyMesh | None,
    guard: GuardSettings,
    *,
    events: EventSource | None = None,
    fleet: FleetAPI | None = None,
    access: AccessPolicy | None = None,
    keys: KeysAPI | None = None,
    records: RecordsAPI | None = None,
    log: RequestLog | None = None,
    load_timeout: float = LOAD_TIMEOUT_S,
    limits: HttpLimits = DEFAULT_LIMITS,
    budget: ByteBudget | None = None,
) -> web.Application:
    """The aiohttp application served on the node's ``--port``.

    The guard comes first: its refusals are OpenAI-shaped responses of its own, answered
    before routing errors, the body cap or any handler.  ``limits`` are the budgets of the
    proxy routes (bodies, buffered answers, tunnels); ``budget`` the bytes of request
    bodies in flight, to share with :func:`~meshllm.proxy.tunnel.serve_tunnel` (default:
    one for this app alone).  Serve it with :func:`meshllm.proxy.server.start_http`, which
    applies the connection budgets of the same ``limits``.  ``access`` checks API keys
    after the guard (None: none are checked); ``log`` records every proxied request.
    """
    app = web.Application(middlewares=[openai_error_middleware], client_max_size=MAX_BODY_BYTES)
    install_guard(app, guard)
    surfaces = {**ollama_surface.SURFACES, **anthropic_surface.SURFACES} if mesh else {}
    if access is not None:
        install_access(app, access, surfaces)
    app[NODE_KEY] = node
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/token", token)
    app.router.add_post("/api/drop", drop)
    app.router.add_get("/api/models", models)
    app.router.add_post("/api/models/{name:.+}/{action}", pool_command)
    if events is not None:
        add_event_routes(app, events, node.admin_token)
    if fleet is not None:
        add_fleet_routes(app, fleet)
    if keys is not None:
        add_key_routes(app, keys)
    if records is not None:
        add_records_routes(app, records)
    app.router.add_get("/openapi.json", openapi_handler)
    add_dashboard_routes(app)
    if mesh is not None:
        add_proxy_routes(
            app,
            mesh,
            load_timeout=load_timeout,
            limits=limits,
            budget=budget,
            log=log,
            node_id=node.node_id,
            surfaces=surfaces,
        )
        ollama_surface.add_ollama_listings(
            app, ollama_surface.OllamaCatalog(lambda: mesh.catalog())
        )
    return app


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "node_id": request.app[NODE_KEY].node_id})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].status())


async def token(request: web.Request) -> web.Response:
    """``GET /api/token``: the mesh's join token (localhost + admin token only): it holds
    the mesh secret, so it is never in ``/api/status``."""
    node = request.app[NODE_KEY]
    if (refused := admin_refusal(request, node.admin_token, "the join token")) is not None:
        return refused
    return web.json_response({"token": node.token})


async def drop(request: web.Request) -> web.Response:
    """``POST /api/drop {"model"}``: stop serving a model (localhost + admin token only);
    on other nodes only with the mesh owner key on this machine, else 403."""
    node = request.app[NODE_KEY]
    if (refused := admin_refusal(request, node.admin_token, "drop")) is not None:
        return refused
    body = await read_json_object(request, '{"model": NAME}')
    if isinstance(body, web.Response):
        return body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error_response(400, 'body must be {"model": NAME}', "invalid_request")
    try:
        nodes = await node.drop(model)
    except AuthError as exc:  # served elsewhere, and this machine lacks the mesh owner key
        return error_response(403, str(exc), "not_mesh_owner")
    if not nodes:
        return error_response(404, f"no node serves {model}", "model_not_found")
    return web.json_response({"dropped": model, "nodes": nodes})


async def models(request: web.Request) -> web.Response:
    """``GET /api/models``: every catalog model with its state on every node."""
    return web.json_response({"models": request.app[NODE_KEY].models()})


async def pool_command(request: web.Request) -> web.Response:
    """``POST /api/models/{name}/{action}`` with an optional ``{"node": ID, "seconds": N}``
    (localhost + admin token): load, unload, pin, unpin or extend-ttl a model, here or
    on another node (that needs the mesh owner key on this machine, else 403)."""
    node = request.app[NODE_KEY]
    name, action = request.match_info["name"], request.match_info["action"]
    if (refused := admin_refusal(request, node.admin_token, f"{action} of a model")) is not None:
        return refused
    body = await read_json_object(request, '{"node": ID, "seconds": N}, or empty', empty_ok=True)
    if isinstance(body, web.Response):
        return body
    target, seconds = body.get("node"), body.get("seconds")
    if target is not None and not isinstance(target, str):
        return error_response(400, "'node' must be a node id", "invalid_request")
    try:
        nodes = await node.pool_command(name, action, target, seconds)
    except CommandError as exc:
        return error_response(exc.status, str(exc), "pool_command_refused")
    except AuthError as exc:
        return error_response(403, str(exc), "not_mesh_owner")
    return web.json_response({"model": name, "action": action, "nodes": nodes})
