"""The fleet routes: ``GET /api/fleet`` and the run-time endpoints (``/api/endpoints``).

``GET /api/fleet`` is the mesh at a glance (every model with the nodes and endpoints
that have it, memory for models, hosts by role, each node's live resources).  An
endpoint is an OpenAI-compatible or Ollama server a node fronts for the mesh:
``GET /api/endpoints`` lists every node's (``?refresh=1``: this node's polled first);
``POST /api/endpoints`` adds one here (or, with ``"node"``, on another node, which
takes the mesh owner key on this machine);
``DELETE /api/endpoints/{id}`` removes one, after its requests in flight.  Changes take
the admin token, from this machine only.  An endpoint's API key is stored on the node
that fronts it and never shown back.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from meshllm.errors import AuthError, CommandError
from meshllm.proxy.admin import admin_refusal, read_json_object
from meshllm.proxy.errors import error_response

ENDPOINT_FIELDS = ("url", "kind", "name", "api_key", "node")
_CODES = {400: "invalid_endpoint", 404: "not_found", 409: "refused", 503: "no_link"}
"""The error code of a refused endpoint change, by its status."""


class FleetAPI(Protocol):
    """What the fleet routes need of the node."""

    admin_token: str

    def fleet(self) -> dict[str, Any]:
        """``GET /api/fleet``."""
        ...

    async def endpoints(self, refresh: bool = False) -> list[dict[str, Any]]:
        """Every node's endpoints, without their keys; ``refresh``: this node's polled
        and their models discovered first."""
        ...

    async def add_endpoint(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Add an endpoint (``url``, ``kind``, ``name``, ``api_key``; ``node``: where);
        its public record.  Raises CommandError (400: a bad field) or AuthError."""
        ...

    async def remove_endpoint(self, endpoint_id: str) -> str:
        """Remove an endpoint wherever it is; the node it was on.  Raises CommandError
        (404: no such endpoint) or AuthError (another node's, without the owner key)."""
        ...


FLEET_KEY = web.AppKey("fleet", FleetAPI)


def add_fleet_routes(app: web.Application, api: FleetAPI) -> None:
    """Register the fleet and endpoint routes on ``app``."""
    app[FLEET_KEY] = api
    app.router.add_get("/api/fleet", fleet)
    app.router.add_get("/api/endpoints", list_endpoints)
    app.router.add_post("/api/endpoints", add_endpoint)
    app.router.add_delete("/api/endpoints/{id}", remove_endpoint)


async def fleet(request: web.Request) -> web.Response:
    """The mesh at a glance."""
    return web.json_response(request.app[FLEET_KEY].fleet())


async def list_endpoints(request: web.Request) -> web.Response:
    """Every node's endpoints, their state and models; never a key.  ``?refresh=1``
    polls this node's first (discovery on demand)."""
    refresh = request.query.get("refresh", "") not in ("", "0", "false")
    return web.json_response({"endpoints": await request.app[FLEET_KEY].endpoints(refresh)})


async def add_endpoint(request: web.Request) -> web.Response:
    """Add an endpoint (admin): 201 with its record."""
    api = request.app[FLEET_KEY]
    if (refused := admin_refusal(request, api.admin_token, "adding an endpoint")) is not None:
        return refused
    shape = '{"url": URL, "kind": "openai"|"ollama"|"auto", "name"?, "api_key"?, "node"?}'
    body = await read_json_object(request, shape)
    if isinstance(body, web.Response):
        return body
    unknown = sorted(set(body) - set(ENDPOINT_FIELDS))
    texts = all(isinstance(body.get(k), str) for k in ENDPOINT_FIELDS if body.get(k) is not None)
    if unknown or not isinstance(body.get("url"), str) or not texts:
        return error_response(400, f"body must be {shape}", "invalid_request")
    try:
        record = await api.add_endpoint(body)
    except CommandError as exc:
        return error_response(exc.status, str(exc), _CODES.get(exc.status, "refused"))
    except AuthError as exc:
        return error_response(403, str(exc), "not_mesh_owner")
    return web.json_response({"endpoint": record}, status=201)


async def remove_endpoint(request: web.Request) -> web.Response:
    """Remove an endpoint (admin), once its requests in flight are done."""
    api = request.app[FLEET_KEY]
    if (refused := admin_refusal(request, api.admin_token, "removing an endpoint")) is not None:
        return refused
    endpoint_id = request.match_info["id"]
    try:
        node_id = await api.remove_endpoint(endpoint_id)
    except CommandError as exc:
        return error_response(exc.status, str(exc), _CODES.get(exc.status, "refused"))
    except AuthError as exc:
        return error_response(403, str(exc), "not_mesh_owner")
    return web.json_response({"removed": endpoint_id, "node_id": node_id})
