"""What the node's admin routes share: who may call them, and reading their JSON body.

An admin route answers a caller on this machine that presents the admin token
(``Authorization: Bearer <state-dir>/admin_token``), or a caller anywhere with an API
key of scope ``admin`` (:mod:`meshllm.proxy.access`); its body, when it has one, is a
JSON object.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from meshllm.proxy.access import caller_of, is_local_caller
from meshllm.proxy.errors import error_response


def admin_refusal(request: web.Request, admin_token: str, what: str) -> web.Response | None:
    """The error for a caller without an admin key that is not on this machine or lacks
    the admin token (``""`` refuses everyone); ``None`` when it may go on."""
    caller = caller_of(request)
    if caller.is_admin:
        return None
    if caller.key is not None:
        return error_response(403, f"{what} needs a key of scope admin", "insufficient_scope")
    if not is_local_caller(request):
        return error_response(
            403, f"{what} is only allowed from this machine or with an admin key", "forbidden"
        )
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not admin_token or not hmac.compare_digest(given, admin_token):
        return error_response(401, f"{what} needs this node's admin token", "unauthorized")
    return None


async def read_json_object(
    request: web.Request, shape: str, *, empty_ok: bool = False
) -> dict[str, Any] | web.Response:
    """The request's body as a JSON object, or the 400 to answer (``shape`` tells the
    caller what was expected); an empty body is ``{}`` when ``empty_ok``."""
    raw = await request.read()
    if empty_ok and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return error_response(400, "body is not JSON", "invalid_json")
    if not isinstance(body, dict):
        return error_response(400, f"body must be {shape}", "invalid_request")
    return body
