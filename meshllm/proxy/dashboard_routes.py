"""The web dashboard's routes (DESIGN.md §7b): the page every node serves at ``/``, from
the files shipped in :mod:`meshllm.dashboard` (``static/``: no CDN, no build step).

:func:`add_dashboard_routes` serves ``GET /`` (the page) and ``GET /ui/{file}`` (its
scripts, styles and icons), each with a Content-Security-Policy that lets the page load
nothing and talk to nothing but this node: no inline script, no other origin, no frames.
The page reads the admin token from its URL's fragment (``/#token=…``, which
``meshllm dashboard`` prints; a fragment never reaches a server or its logs) and sends
it as ``Authorization: Bearer``, like the console.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

from aiohttp import web

from meshllm.proxy.errors import error_response

STATIC_PACKAGE = "meshllm.dashboard"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""The page may load and fetch from this node only; nothing may frame it."""
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}
MAX_NAME_CHARS = 100  # of a static file's path: ours are short


def _static_file(name: str) -> bytes | None:
    """A file of ``static/`` by its relative path; None for anything else (no ``..``,
    no hidden files, only known types)."""
    path = PurePosixPath(name)
    if (
        len(name) > MAX_NAME_CHARS
        or path.is_absolute()
        or any(part.startswith(".") for part in path.parts)
        or path.suffix not in MEDIA_TYPES
    ):
        return None
    node = resources.files(STATIC_PACKAGE).joinpath("static", *path.parts)
    return node.read_bytes() if node.is_file() else None


def _response(body: bytes, suffix: str) -> web.Response:
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cache-Control": "no-cache",  # revalidated: a new version of meshllm shows at once
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Content-Type": MEDIA_TYPES[suffix],
    }
    return web.Response(body=body, headers=headers)


async def page(request: web.Request) -> web.Response:
    """``GET /``: the dashboard."""
    body = _static_file("index.html")
    if body is None:
        return error_response(404, "the dashboard is not installed", "not_found")
    return _response(body, ".html")


async def asset(request: web.Request) -> web.Response:
    """``GET /ui/{name}``: one of the page's files."""
    name = request.match_info["name"]
    body = _static_file(name)
    if body is None:
        return error_response(404, f"no dashboard file {name[:MAX_NAME_CHARS]!r}", "not_found")
    return _response(body, PurePosixPath(name).suffix)


def add_dashboard_routes(app: web.Application) -> None:
    """Serve the dashboard at ``/`` and its files under ``/ui/``."""
    app.router.add_get("/", page)
    app.router.add_get("/ui/{name:.+}", asset)
