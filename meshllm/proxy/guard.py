"""Rules of the node's local HTTP API against the one attacker it always has: a web page.

Any page the user opens in a browser on this machine can send "simple" cross-origin
requests to ``127.0.0.1:PORT`` without a preflight: a ``GET``, or a ``POST`` whose body
is ``text/plain``, a form or multipart.  It cannot read the answers, unless it uses DNS
rebinding: its own name (``evil.example``) made to resolve to 127.0.0.1, so that the
browser takes the node for the page's own origin, and every request carries
``Host: evil.example``.  The guard refuses what only such a page would send:

* **Host** must name this node: ``localhost``, a loopback address (``127.0.0.1``,
  ``[::1]``), with any port, or a name given with ``--allowed-host``.  With
  ``--listen-all`` the addresses of the machine's own interfaces are accepted too
  (read with ``psutil.net_if_addrs`` at start, and again, at most every
  :data:`INTERFACE_REFRESH_S`, when an address literal does not match).  Anything else
  is 421 Misdirected Request: a rebinding attacker always sends its own name.
* **Origin**, which browsers add to cross-origin requests and to every ``POST``, must be
  the node's own (``http://`` and the Host it checked: the dashboard it serves at
  ``/``) or one of ``--cors-origin`` (none by default), else 403.  The SDKs, curl and
  the console send none.
* A **POST** body must be ``Content-Type: application/json`` (parameters such as
  ``charset`` allowed), else 415: the simple content types are the cross-site request
  forgery vector, and JSON needs a preflight, which an unlisted origin never passes.

Every error is an OpenAI-shaped JSON body (:func:`~meshllm.proxy.errors.error_response`),
answered before any handler runs, so no backend or peer is touched.

On every response, whoever made it (route, backend, peer, aiohttp itself), the
``on_response_prepare`` hook removes ``Set-Cookie``, ``Set-Cookie2`` and every
``Access-Control-*`` header, sets ``X-Content-Type-Options: nosniff``, and, for a
request from a configured origin, adds ``Access-Control-Allow-Origin: <that origin>``
(never ``*``) and ``Vary: Origin``.  With no ``--cors-origin`` no CORS header is ever
sent, and a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is refused
like any request from its origin.

Use::

    app = web.Application(middlewares=[openai_error_middleware])
    install_guard(app, GuardSettings.from_config(config))
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psutil
from aiohttp import hdrs, web

from meshllm.errors import ConfigError
from meshllm.proxy.errors import error_response
from meshllm.proxy.routes import MODEL_HEADER, NODE_HEADER

if TYPE_CHECKING:
    from meshllm.config import Config

LOCAL_NAMES = frozenset({"localhost"})
"""Host names that always name this node (loopback addresses are accepted as well)."""
JSON_MEDIA_TYPE = "application/json"
DROPPED_RESPONSE_HEADERS = frozenset({"set-cookie", "set-cookie2"})
"""Never sent to a client, nor any header starting with ``Access-Control-`` but the guard's."""
INTERFACE_REFRESH_S = 10.0
"""At most this often, an unknown address literal makes ``--listen-all`` re-read the interfaces."""
PREFLIGHT_MAX_AGE_S = 600
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "authorization, content-type"
EXPOSED_HEADERS = f"{MODEL_HEADER}, {NODE_HEADER}, retry-after"
_TOKEN_LIST = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Middleware = Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]
_PrepareHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


# --- pure helpers ------------------------------------------------------------------------------


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header, lower-cased, without port, brackets or a final dot.

    ``None`` when it is not ``name[:port]``, ``ipv4[:port]`` or ``[ipv6][:port]``.
    """
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[1:end], value[end + 1 :]
        if end < 0 or not name or (rest and not _is_port_suffix(rest)):
            return None
        return name.lower()
    name, colon, port = value.partition(":")
    if not name or ":" in port or (colon and not _is_port_suffix(colon + port)):
        return None
    return name.lower().rstrip(".") or None


def _is_port_suffix(text: str) -> bool:
    return text.startswith(":") and (text[1:] == "" or text[1:].isdigit())


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``name`` as an address (an IPv6 zone, ``%eth0``, left out), or ``None``."""
    try:
        return ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None


def host_allowed(
    name: str,
    allowed_names: Iterable[str] = (),
    allowed_addresses: Iterable[str] = (),
) -> bool:
    """Whether the host ``name`` (from :func:`host_name`) names this node: ``localhost``,
    a loopback address, one of ``allowed_names``, or one of ``allowed_addresses``."""
    if name in LOCAL_NAMES or name in allowed_names:
        return True
    ip = _ip(name)
    if ip is None:
        return False
    return ip.is_loopback or any(ip == _ip(a) for a in allowed_addresses)


def interface_addresses() -> frozenset[str]:
    """The IPv4 and IPv6 addresses of this machine's interfaces."""
    return frozenset(
        a.address.split("%", 1)[0]
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6)
    )


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]``, lower-cased, without a default port or a final ``/``, as
    browsers send ``Origin``.  Raises :class:`ConfigError` for ``*``, ``null`` and
    anything that is not an origin (a path, a query, no host)."""
    text = origin.strip().lower().rstrip("/")
    if text in ("*", "null"):
        raise ConfigError(f"--cors-origin {origin!r}: name an origin, e.g. http://localhost:3000")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.scheme or not parts.hostname or parts.path or parts.query:
        raise ConfigError(
            f"--cors-origin {origin!r} is not an origin (scheme://host[:port], no path)"
        )
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _request_origin(value: str) -> str:
    """A request's ``Origin`` for comparison: normalized when it parses, else as sent."""
    try:
        return normalize_origin(value)
    except ConfigError:
        return value.strip().lower()


def is_json_media_type(content_type: str) -> bool:
    """Whether a ``Content-Type`` value is ``application/json`` (parameters allowed)."""
    return content_type.split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


# --- settings, middleware, response hook ------------------------------------------------------


@dataclass(frozen=True)
class GuardSettings:
    """What the guard accepts beyond its fixed rules."""

    allowed_hosts: frozenset[str] = frozenset()
    """Extra ``Host`` names (lower-cased, port ignored) that name this node."""
    cors_origins: frozenset[str] = frozenset()
    """Origins (normalized, :func:`normalize_origin`) allowed to call the API from a page."""
    listen_all: bool = False
    """The node listens on every interface: accept their addresses as ``Host`` too."""
    interfaces: Callable[[], frozenset[str]] = field(default=interface_addresses, compare=False)
    """Reads the interface addresses (a parameter for tests)."""

    @classmethod
    def create(
        cls,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        *,
        listen_all: bool = False,
        interfaces: Callable[[], frozenset[str]] = interface_addresses,
    ) -> GuardSettings:
        """Settings from flag values; raises :class:`ConfigError` for a bad one."""
        names = set()
        for raw in allowed_hosts:
            name = host_name(raw)
            if name is None:
                raise ConfigError(f"--allowed-host {raw!r} is not a host name")
            names.add(name)
        return cls(
            allowed_hosts=frozenset(names),
            cors_origins=frozenset(normalize_origin(o) for o in cors_origins),
            listen_all=listen_all,
            interfaces=interfaces,
        )

    @classmethod
    def from_config(cls, config: Config) -> GuardSettings:
        """The settings of a node's :class:`~meshllm.config.Config`."""
        return cls.create(config.allowed_hosts, config.cors_origins, listen_all=config.listen_all)


class _Addresses:
    """The interface addresses, re-read on a miss at most every ``INTERFACE_REFRESH_S``."""

    def __init__(self, read: Callable[[], frozenset[str]]) -> None:
        self._read = read
        self._addresses = read()
        self._read_at = time.monotonic()

    def allowed(self, name: str) -> bool:
        if host_allowed(name, (), self._addresses):
            return True
        if _ip(name) is None or time.monotonic() - self._read_at < INTERFACE_REFRESH_S:
            return False
        self._addresses, self._read_at = self._read(), time.monotonic()
        return host_allowed(name, (), self._addresses)


def guard_middleware(settings: GuardSettings) -> _Middleware:
    """The aiohttp middleware enforcing the Host, Origin and POST body rules, and
    answering CORS preflights from ``settings.cors_origins`` (204)."""
    addresses = _Addresses(settings.interfaces) if settings.listen_all else None

    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        hosts = request.headers.getall(hdrs.HOST, [])
        name = host_name(hosts[0]) if len(hosts) == 1 else None
        if name is None or not (
            host_allowed(name, settings.allowed_hosts)
            or (addresses is not None and addresses.allowed(name))
        ):
            shown = ", ".join(hosts) or "none"
            return error_response(
                421,
                f"Host {shown!r} does not name this node: use 127.0.0.1 or localhost, "
                "or allow the name with --allowed-host",
                "misdirected_request",
            )
        origins = request.headers.getall(hdrs.ORIGIN, [])
        own = _request_origin(f"http://{hosts[0].strip()}")  # the node's own page's
        for origin in origins:
            sent = _request_origin(origin)
            if sent != own and sent not in settings.cors_origins:
                return error_response(
                    403,
                    f"requests from the web origin {origin!r} are not allowed; "
                    "allow an origin with --cors-origin",
                    "origin_not_allowed",
                )
        if origins and _is_preflight(request):
            return web.Response(status=204)  # the hook adds the grant
        routed = request.match_info.http_exception is None  # else the router answers 404/405
        if (
            routed
            and request.method == hdrs.METH_POST
            and not is_json_media_type(request.headers.get(hdrs.CONTENT_TYPE, ""))
        ):
            return error_response(
                415, "a POST body must be Content-Type: application/json", "unsupported_media_type"
            )
        return await handler(request)

    return guard


def guard_response_headers(settings: GuardSettings) -> _PrepareHook:
    """The ``on_response_prepare`` hook: no cookie, no foreign CORS header, ``nosniff``, and
    the guard's own CORS headers for a request from an allowed origin."""

    async def secure(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        for key in {k for k in headers if _dropped(k)}:
            del headers[key]
        headers["X-Content-Type-Options"] = "nosniff"
        if not settings.cors_origins:
            return
        _add_vary(response, "Origin")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or _request_origin(origin) not in settings.cors_origins:
            return
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        if _is_preflight(request):
            asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").strip()
            allowed = asked if _TOKEN_LIST.match(asked) else DEFAULT_ALLOWED_HEADERS
            headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ALLOWED_METHODS
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = allowed
            headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(PREFLIGHT_MAX_AGE_S)
            _add_vary(response, "Access-Control-Request-Method", "Access-Control-Request-Headers")
        else:
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS

    return secure


def _is_preflight(request: web.Request) -> bool:
    """A CORS preflight: ``OPTIONS`` asking ``Access-Control-Request-Method`` (with an
    ``Origin``, which the middleware checked)."""
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def _dropped(name: str) -> bool:
    lower = name.lower()
    return lower in DROPPED_RESPONSE_HEADERS or lower.startswith("access-control-")


def _add_vary(response: web.StreamResponse, *names: str) -> None:
    present = [v.strip() for v in response.headers.get(hdrs.VARY, "").split(",") if v.strip()]
    lower = {v.lower() for v in present}
    present += [n for n in names if n.lower() not in lower]
    response.headers[hdrs.VARY] = ", ".join(present)


def install_guard(app: web.Application, settings: GuardSettings) -> None:
    """Put the guard in front of ``app``'s middlewares and its hook on every response."""
    app.middlewares.insert(0, guard_middleware(settings))
    app.on_response_prepare.append(guard_response_headers(settings))
