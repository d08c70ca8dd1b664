"""Who may call the node's HTTP API: API keys, their scopes, models and rate limits.

A key comes as ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (Anthropic's
header).  The routes fall in four classes:

* ``/health``: anyone.
* the read-only pages (``GET`` of ``/api/status``, ``/api/models``, ``/api/fleet``,
  ``/api/events``, ``/api/endpoints``, ``/v1/models``, ``/openapi.json``, ``/metrics``,
  and Ollama's listings ``/api/tags``, ``/api/ps``, ``/api/version``, ``POST /api/show``):
  a caller on this machine, or one with any valid key.
* inference (``POST /v1/…``, and Ollama's ``/api/chat``, ``/api/generate``,
  ``/api/embed``, ``/api/embeddings``): anyone while the node has no key and listens on
  loopback only (DESIGN.md §7b: a node on 127.0.0.1 stays open to local clients); otherwise a
  valid key, which must be within its rate limits (429 with ``Retry-After``) and, once
  the body is read, allow the model (:func:`model_refusal`: 403).  This node's admin
  token, from this machine, counts as an admin key.
* the admin routes: the admin token from this machine (:func:`~meshllm.proxy.admin.admin_refusal`),
  or a key of scope ``admin`` from anywhere.

Refusals come in the shape of the route's API (OpenAI's, Ollama's or Anthropic's): 401
without a valid key, 403 for the wrong scope or model, 429 over a limit.  The key's
secret is never logged or echoed; the caller is kept on the request (:func:`caller_of`)
for the records (its key id) and the admin check.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import hdrs, web

from meshllm.access.keys import ApiKey, KeyRefused
from meshllm.proxy.surface import OPENAI, Surface

if TYPE_CHECKING:
    from meshllm.access.limits import Refusal

ADMIN_SCOPE = "admin"
INFERENCE_SCOPE = "inference"
ADMIN_TOKEN_ID = "admin-token"  # the key id recorded for a request made with the admin token
READ_ONLY_PATHS = frozenset(
    {
        "/api/status",
        "/api/models",
        "/api/fleet",
        "/api/events",
        "/api/endpoints",
        "/v1/models",
        "/openapi.json",
        "/metrics",
        "/api/tags",  # Ollama's listings
        "/api/ps",
        "/api/version",
    }
)
READ_ONLY_POSTS = frozenset({"/api/show"})  # Ollama asks for a model's card with a POST
INFERENCE_PATHS = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
"""Inference outside ``/v1/``: Ollama's."""
OPEN_PATHS = frozenset({"/health", "/"})  # "/": the dashboard's page (no data in it)
OPEN_PREFIXES = ("/ui/",)  # the dashboard's files

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Middleware = Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]


class AccessPolicy(Protocol):
    """The node's keys and limits, as the HTTP API needs them."""

    admin_token: str

    def keys_required(self) -> bool:
        """Whether inference needs a key: the node has keys, or listens beyond loopback."""
        ...

    def authenticate(self, presented: str | None) -> ApiKey:
        """The key ``presented`` is; raises :class:`~meshllm.access.keys.KeyRefused`."""
        ...

    def refusal(self, key: ApiKey, scope: str, model: str | None) -> KeyRefused | None:
        """Why ``key`` may not use ``scope`` (and ``model``), or None."""
        ...

    def admit(self, key: ApiKey) -> Refusal | None:
        """Count one request of ``key``, or say why its limits refuse it (429)."""
        ...

    def tokens_used(self, key_id: str, tokens: int) -> None:
        """``key_id``'s request took ``tokens`` (in and out): its tokens per minute."""
        ...

    def refused(self, status: int, reason: str, path: str, key_id: str) -> None:
        """A request for ``path`` was refused (for the records): ``reason`` is the error's
        code, or ``rate_requests`` / ``rate_tokens``; ``key_id`` "" when it had none."""
        ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: the key it came with (None: none, or not checked)."""

    key: ApiKey | None = None
    admin_token: bool = False

    @property
    def key_id(self) -> str:
        if self.admin_token:
            return ADMIN_TOKEN_ID
        return self.key.id if self.key is not None else ""

    @property
    def is_admin(self) -> bool:
        return self.admin_token or (self.key is not None and self.key.scope == ADMIN_SCOPE)


ANONYMOUS = Caller()
POLICY_KEY = web.AppKey("access_policy", AccessPolicy)
_CALLER = web.RequestKey("caller", Caller)


def caller_of(request: web.Request) -> Caller:
    """Who made ``request`` (ANONYMOUS where nothing was checked)."""
    return request.get(_CALLER, ANONYMOUS)


def presented_key(request: web.Request) -> str | None:
    """The key a request carries, from ``Authorization: Bearer`` or ``x-api-key``."""
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key", "").strip() or None


def is_local_caller(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def install_access(
    app: web.Application, policy: AccessPolicy, shapes: Mapping[str, Surface] | None = None
) -> None:
    """Check keys on every request of ``app`` (after the guard's rules); a refusal is
    shaped as the API of its path speaks (``shapes``: path -> surface; else OpenAI's)."""
    app[POLICY_KEY] = policy
    app.middlewares.append(access_middleware(policy, shapes or {}))


def access_middleware(policy: AccessPolicy, shapes: Mapping[str, Surface]) -> _Middleware:
    """The middleware that applies the route classes above."""

    @web.middleware
    async def access(request: web.Request, handler: _Handler) -> web.StreamResponse:
        path = request.path
        if (
            path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or request.match_info.http_exception is not None
        ):
            return await handler(request)  # /health, the dashboard, 404/405 of the router
        presented = presented_key(request)
        local = is_local_caller(request)
        if local and presented and _is_admin_token(presented, policy.admin_token):
            request[_CALLER] = Caller(admin_token=True)
            return await handler(request)
        post = request.method == hdrs.METH_POST
        inference = post and (path.startswith("/v1/") or path in INFERENCE_PATHS)
        if (request.method == hdrs.METH_GET and path in READ_ONLY_PATHS) or (
            post and path in READ_ONLY_POSTS
        ):
            needs_key, scope = not local, None
        elif inference:
            needs_key, scope = policy.keys_required(), INFERENCE_SCOPE
        else:  # an admin route: it checks the admin token or an admin key itself
            needs_key, scope = False, ADMIN_SCOPE
        if presented is None and not needs_key:
            return await handler(request)
        try:
            key = policy.authenticate(presented)
        except KeyRefused as exc:  # no key, or a malformed, unknown, revoked or expired one
            if not needs_key:  # an open route ignores a client's dummy key; an admin
                return await handler(request)  # route checks its admin token itself
            return _refused(exc, policy, request, shape=shapes.get(path, OPENAI))
        if scope == INFERENCE_SCOPE:
            if (refused := policy.refusal(key, scope, None)) is not None:
                return _refused(refused, policy, request, key.id, shapes.get(path, OPENAI))
            if (limited := policy.admit(key)) is not None:
                policy.refused(429, f"rate_{limited.limit}", path, key.id)
                return shapes.get(path, OPENAI).error(
                    429,
                    limited.message,
                    "rate_limit_exceeded",
                    headers={"Retry-After": str(limited.retry_after_s)},
                )
        request[_CALLER] = Caller(key=key)
        return await handler(request)

    return access


def model_refusal(request: web.Request, model: str | None) -> web.Response | None:
    """The 403 for a key whose allow-list lacks ``model`` (the body's), or None."""
    caller = caller_of(request)
    policy = request.app.get(POLICY_KEY)
    if caller.key is None or policy is None or model is None:
        return None
    refused = policy.refusal(caller.key, INFERENCE_SCOPE, model)
    return _refused(refused, policy, request, caller.key.id) if refused is not None else None


def count_tokens(request: web.Request, tokens: int) -> None:
    """The answer to ``request`` took ``tokens``: its key's tokens per minute."""
    caller = caller_of(request)
    policy = request.app.get(POLICY_KEY)
    if caller.key is not None and policy is not None and tokens > 0:
        policy.tokens_used(caller.key.id, tokens)


def _is_admin_token(presented: str, admin_token: str) -> bool:
    return bool(admin_token) and hmac.compare_digest(presented, admin_token)


def _refused(
    exc: KeyRefused,
    policy: AccessPolicy,
    request: web.Request,
    key_id: str = "",
    shape: Surface = OPENAI,
) -> web.Response:
    policy.refused(exc.status, exc.code, request.path, key_id)
    headers = {"WWW-Authenticate": 'Bearer realm="meshllm"'} if exc.status == 401 else None
    return shape.error(exc.status, str(exc), exc.code, headers=headers)
