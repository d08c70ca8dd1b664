"""An existing model server (``--endpoint URL``) served to the mesh as if it were local.

Two kinds are understood: any OpenAI-compatible server (models from
``GET /v1/models``) and Ollama (models from ``GET /api/tags``).  Both take
requests at ``{base_url}/v1/...``.  The endpoint is polled every ``interval``
seconds; ``on_change`` is called whenever its health or model list changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

OPENAI = "openai"
OLLAMA = "ollama"


def normalize_url(url: str) -> str:
    """The server root: no trailing slash, no trailing /v1; http:// when no scheme."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/v1").rstrip("/")


def _openai_models(body: Any) -> list[str] | None:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return None
    return [m["id"] for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _ollama_models(body: Any) -> list[str] | None:
    # llama-server also answers /api/tags, with "data" beside "models": that is
    # an OpenAI server, so only a body without "data" counts as Ollama.
    if not isinstance(body, dict) or "data" in body or not isinstance(body.get("models"), list):
        return None
    names = (m.get("name") or m.get("model") for m in body["models"] if isinstance(m, dict))
    return [n for n in names if isinstance(n, str)]


class ExternalEndpoint:
    """A health-polled OpenAI-compatible or Ollama server."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[ExternalEndpoint], None] | None = None,
        *,
        interval: float = 5.0,
        timeout: float = 5.0,
        api_key: str | None = None,
    ) -> None:
        self.url = url
        self.base_url = normalize_url(url)
        """Where /v1/... requests go: ``base_url + "/v1/chat/completions"``."""
        self.kind: str | None = None  # OPENAI or OLLAMA once detected
        self.models: list[str] = []
        self.healthy = False
        self.interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_change = on_change
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "down"
        return f"<ExternalEndpoint {self.base_url} {self.kind or '?'} {state} {self.models}>"

    async def start(self) -> None:
        """Probe once, then keep polling in the background.  A server that is
        down now is not an error: it is reported unhealthy until it answers."""
        if self._task:
            return
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self.headers)
        await self.poll()
        self._task = asyncio.create_task(self._run(), name=f"endpoint {self.base_url}")

    async def stop(self) -> None:
        """Stop polling and close the HTTP session."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll()

    async def poll(self) -> None:
        """Check the server now and update ``healthy``, ``kind`` and ``models``."""
        kind, models = await self._probe()
        healthy = models is not None
        if healthy:
            self.kind = kind
        changed = healthy != self.healthy or (healthy and models != self.models)
        self.healthy, self.models = healthy, models if models is not None else self.models
        if changed:
            log.info("endpoint %s: %s", self.base_url, "up " + str(models) if healthy else "down")
            if self._on_change:
                try:
                    self._on_change(self)
                except Exception:
                    log.exception("endpoint on_change callback failed")

    async def _probe(self) -> tuple[str | None, list[str] | None]:
        # Ask the kind seen last time first; a new or restarted server is detected again.
        order = [OLLAMA, OPENAI] if self.kind != OPENAI else [OPENAI, OLLAMA]
        for kind in order:
            if kind == OLLAMA:
                models = _ollama_models(await self._get_json("/api/tags"))
            else:
                models = _openai_models(await self._get_json("/v1/models"))
            if models is not None:
                return kind, models
        return None, None

    async def _get_json(self, path: str) -> Any:
        assert self._session is not None, "start() first"
        try:
            async with self._session.get(self.base_url + path) as resp:
                if resp.status != 200:
                    return None
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("endpoint %s%s: %s", self.base_url, path, exc)
            return None
