"""The API key routes: ``GET /api/keys``, ``POST /api/keys``, ``DELETE /api/keys/{id}``.

All take the admin token from this machine, or an admin key.  A key is created and
revoked mesh-wide by a statement signed with the mesh owner key (which this machine
must hold: else 403); its text is in the creation's answer only, never again.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from meshllm.errors import AuthError, CommandError
from meshllm.proxy.admin import admin_refusal, read_json_object
from meshllm.proxy.errors import error_response


class KeysAPI(Protocol):
    """What the key routes need of the node."""

    admin_token: str

    def listed(self) -> list[dict[str, Any]]:
        """Every key's public record (never its secret or hash)."""
        ...

    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A new key: its public record and ``key``, its text.  Raises CommandError (400)
        or AuthError (no owner key here)."""
        ...

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Revoke a key mesh-wide.  Raises CommandError (404) or AuthError."""
        ...


KEYS_KEY = web.AppKey("keys", KeysAPI)


def add_key_routes(app: web.Application, api: KeysAPI) -> None:
    """Register the key routes on ``app``."""
    app[KEYS_KEY] = api
    app.router.add_get("/api/keys", list_keys)
    app.router.add_post("/api/keys", create_key)
    app.router.add_delete("/api/keys/{id}", revoke_key)


async def list_keys(request: web.Request) -> web.Response:
    api = request.app[KEYS_KEY]
    if (refused := admin_refusal(request, api.admin_token, "listing API keys")) is not None:
        return refused
    return web.json_response({"keys": api.listed()})


async def create_key(request: web.Request) -> web.Response:
    """``POST /api/keys {"scope", "models", "expires", "rpm", "tpm", "name"}``."""
    api = request.app[KEYS_KEY]
    if (refused := admin_refusal(request, api.admin_token, "creating an API key")) is not None:
        return refused
    body = await read_json_object(request, '{"scope": "inference"|"admin", ...}', empty_ok=True)
    if isinstance(body, web.Response):
        return body
    try:
        return web.json_response(api.create(body), status=201)
    except CommandError as exc:
        return error_response(exc.status, str(exc), "invalid_key_request")
    except AuthError as exc:
        return error_response(403, str(exc), "not_mesh_owner")


async def revoke_key(request: web.Request) -> web.Response:
    api = request.app[KEYS_KEY]
    if (refused := admin_refusal(request, api.admin_token, "revoking an API key")) is not None:
        return refused
    try:
        return web.json_response(api.revoke(request.match_info["id"]))
    except CommandError as exc:
        return error_response(exc.status, str(exc), "key_not_found")
    except AuthError as exc:
        return error_response(403, str(exc), "not_mesh_owner")
