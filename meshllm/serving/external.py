"""An existing model server (``--endpoint URL``) served to the mesh as if it were local.

Two kinds are understood: any OpenAI-compatible server (models from
``GET /v1/models``) and Ollama (models and their details from ``GET /api/tags``,
what is loaded from ``GET /api/ps``).  Both take requests at ``{base_url}/v1/...``.

The list endpoint is polled every ``interval`` seconds and each outcome fed to an
:class:`~meshllm.serving.endpoint_health.EndpointHealth` (up, probation, down);
per-model details (Ollama: loaded or not) are refreshed every ``discovery_interval``
seconds and on :meth:`ExternalEndpoint.refresh`.  ``on_change`` is called whenever
``healthy``, ``models`` or ``details()`` change.

The server is not trusted: an answer is read up to ``max_response_bytes``, within
``timeout``, without redirects or compression; at most ``MAX_MODELS`` models are
taken and only names that pass :func:`meshllm.gossip.is_model_name`.  The API key
goes in the ``Authorization`` header and nowhere else: not in logs, ``repr`` or
``status()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from meshllm.gossip import is_model_name
from meshllm.gossip.announcement import MAX_MODELS  # not in meshllm.gossip's __all__ yet
from meshllm.serving.endpoint_health import (
    DISCOVERY_INTERVAL_S,
    DOWN,
    DOWN_AFTER,
    POLL_INTERVAL_S,
    POLL_TIMEOUT_S,
    UP_AFTER,
    EndpointHealth,
)

log = logging.getLogger(__name__)

OPENAI = "openai"
OLLAMA = "ollama"
AUTO = "auto"
KINDS = (AUTO, OPENAI, OLLAMA)
MAX_RESPONSE_BYTES = 1 << 20
"""A poll answer bigger than this is a failed poll."""
MAX_API_KEY_CHARS = 4096
_DETAIL = re.compile(r"[A-Za-z0-9_.:+ -]{1,64}")  # family, quantization, parameter size
_MAX_SIZE = 1 << 62


def normalize_url(url: str) -> str:
    """The server root: no trailing slash, no trailing /v1; http:// when no scheme."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/v1").rstrip("/")


def public_url(url: str) -> str:
    """``url`` without any ``user:password@`` in it, for logs and status."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<bad url>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def check_api_key(api_key: str) -> str:
    """``api_key`` if it can go in an HTTP header; ValueError otherwise (never quoting it)."""
    if not isinstance(api_key, str) or not api_key:
        raise ValueError("api_key must be a non-empty string")
    if len(api_key) > MAX_API_KEY_CHARS:
        raise ValueError(f"api_key is longer than {MAX_API_KEY_CHARS} characters")
    if not (api_key.isascii() and api_key.isprintable()) or api_key != api_key.strip():
        raise ValueError("api_key must be printable ASCII without newlines or surrounding spaces")
    return api_key


# --- parsing the answers (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelDetails:
    """What a server says about one of its models; ``None``: not said, or not believable."""

    size: int | None = None
    family: str | None = None
    quant: str | None = None
    params: str | None = None


@dataclass(slots=True)
class ModelList:
    """The models of one list answer, bounded and checked."""

    models: list[str] = field(default_factory=list)
    details: dict[str, ModelDetails] = field(default_factory=dict)
    dropped: int = 0
    """Entries left out: bad names, duplicates, past ``MAX_MODELS``."""

    def add(self, name: Any, details: ModelDetails) -> None:
        if len(self.models) >= MAX_MODELS or not is_model_name(name) or name in self.details:
            self.dropped += 1
            return
        self.models.append(name)
        self.details[name] = details


def _size(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE
    return value if ok else None


def _detail(value: Any) -> str | None:
    return value if isinstance(value, str) and _DETAIL.fullmatch(value) else None


def parse_openai_models(body: Any) -> ModelList | None:
    """``GET /v1/models``: ``{"data": [{"id": ...}]}`` (llama-server adds ``meta.size``)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return None
    found = ModelList()
    for entry in body["data"]:
        if not isinstance(entry, dict):
            found.dropped += 1
            continue
        meta = entry.get("meta")
        size = _size(meta.get("size")) if isinstance(meta, dict) else None
        found.add(entry.get("id"), ModelDetails(size=size))
    return found


def parse_ollama_models(body: Any, *, strict: bool = True) -> ModelList | None:
    """``GET /api/tags``: ``{"models": [{"name", "size", "details": {...}}]}``.

    llama-server answers ``/api/tags`` too, with ``"data"`` beside ``"models"``: that
    is an OpenAI server, so with ``strict`` only a body without ``"data"`` counts."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None
    if strict and "data" in body:
        return None
    found = ModelList()
    for entry in body["models"]:
        if not isinstance(entry, dict):
            found.dropped += 1
            continue
        info = entry.get("details")
        info = info if isinstance(info, dict) else {}
        details = ModelDetails(
            size=_size(entry.get("size")),
            family=_detail(info.get("family")),
            quant=_detail(info.get("quantization_level")),
            params=_detail(info.get("parameter_size")),
        )
        found.add(entry.get("name") or entry.get("model"), details)
    return found


def parse_ollama_loaded(body: Any) -> set[str] | None:
    """``GET /api/ps``: the names of the models loaded now."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None
    loaded: set[str] = set()
    for entry in body["models"][: MAX_MODELS * 2]:
        if isinstance(entry, dict):
            loaded.update(n for n in (entry.get("name"), entry.get("model")) if is_model_name(n))
    return loaded


class _Failed(Exception):
    """A poll that failed; the message is ours, never the server's text."""


# --- the endpoint --------------------------------------------------------------------------


class ExternalEndpoint:
    """A health-polled OpenAI-compatible or Ollama server."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[ExternalEndpoint], None] | None = None,
        *,
        kind: str = AUTO,
        name: str | None = None,
        api_key: str | None = None,
        interval: float = POLL_INTERVAL_S,
        timeout: float = POLL_TIMEOUT_S,
        discovery_interval: float = DISCOVERY_INTERVAL_S,
        down_after: int = DOWN_AFTER,
        up_after: int = UP_AFTER,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"endpoint kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.url = url
        self.base_url = normalize_url(url)
        """Where /v1/... requests go: ``base_url + "/v1/chat/completions"``."""
        self.public_url = public_url(self.base_url)
        """``base_url`` without credentials: for logs and status."""
        self.name = name
        self.configured_kind = kind
        self.kind: str | None = None if kind == AUTO else kind
        """OPENAI or OLLAMA: as configured, or once detected."""
        self.models: list[str] = []
        """The last model list seen (kept while the endpoint is down)."""
        self.health = EndpointHealth(down_after=down_after, up_after=up_after)
        self.interval = interval
        self.timeout = timeout
        self.discovery_interval = discovery_interval
        self.max_response_bytes = max_response_bytes
        self._api_key = check_api_key(api_key) if api_key else None
        self._on_change = on_change
        self._details: dict[str, ModelDetails] = {}
        self._dropped = 0
        self._loaded: set[str] | None = None  # Ollama /api/ps; None: not known
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """Whether requests may be routed here (health state ``up``)."""
        return self.health.routable

    def __repr__(self) -> str:
        label = f"{self.name} " if self.name else ""
        return (
            f"<ExternalEndpoint {label}{self.public_url} {self.kind or '?'} "
            f"{self.health.state} {self.models}>"
        )

    def auth_headers(self) -> dict[str, str]:
        """Headers to add to every request forwarded here (the API key), or none."""
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def details(self) -> dict[str, dict[str, Any]]:
        """``model -> {"warm", "size", "family", "quant", "params"}`` for each of ``models``.

        ``warm``: loaded now (Ollama ``/api/ps``); True where the server cannot say."""
        out: dict[str, dict[str, Any]] = {}
        for model in self.models:
            info = self._details.get(model, ModelDetails())
            out[model] = {
                "warm": self._warm(model),
                "size": info.size,
                "family": info.family,
                "quant": info.quant,
                "params": info.params,
            }
        return out

    def status(self) -> dict[str, Any]:
        """Health and identity for a status API (no credentials)."""
        return {
            "name": self.name,
            "url": self.public_url,
            "kind": self.kind,
            "configured_kind": self.configured_kind,
            **self.health.snapshot(),
            "models": list(self.models),
            "models_dropped": self._dropped,
            "has_api_key": self._api_key is not None,
        }

    # lifecycle

    async def start(self) -> None:
        """Probe once, then keep polling in the background.  A server that is
        down now is not an error: it is reported unhealthy until it answers."""
        if self._task:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=f"endpoint {self.public_url}")

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

    async def refresh(self) -> None:
        """Poll now, then refresh the per-model details; ``on_change`` once at most."""
        async with self._lock:
            before = self._view()
            await self._poll()
            await self._discover()
            self._notify_if_changed(before)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_discovery = loop.time() + self.discovery_interval
        while True:
            await asyncio.sleep(self.interval)
            if loop.time() >= next_discovery:
                next_discovery = loop.time() + self.discovery_interval
                await self.refresh()
            else:
                await self.poll()

    # polling

    async def poll(self) -> None:
        """Check the server now: feed the health and update ``kind`` and ``models``."""
        async with self._lock:
            before = self._view()
            await self._poll()
            self._notify_if_changed(before)

    async def discover(self) -> None:
        """Refresh what the model list does not say: for Ollama, which models are loaded."""
        async with self._lock:
            before = self._view()
            await self._discover()
            self._notify_if_changed(before)

    async def _poll(self) -> None:
        started = time.monotonic()
        try:
            kind, found = await self._probe()
        except _Failed as exc:
            event = self.health.failed(time.time(), str(exc), _ms_since(started))
        else:
            if found.dropped and found.dropped != self._dropped:
                log.warning(
                    "endpoint %s: %d models left out (bad names or over %d)",
                    self.public_url,
                    found.dropped,
                    MAX_MODELS,
                )
            self.kind, self.models, self._details = kind, found.models, found.details
            self._dropped = found.dropped
            event = self.health.ok(time.time(), _ms_since(started))
        if event is not None:
            why = f" ({self.health.last_error})" if event.new == DOWN else ""
            log.info("endpoint %s: %s%s %s", self.public_url, event.new, why, self.models)

    async def _discover(self) -> None:
        # A failure here keeps what was known and does not count against health.
        if self.kind != OLLAMA or self.health.state == DOWN:
            return
        try:
            loaded = parse_ollama_loaded(await self._get_json("/api/ps"))
        except _Failed as exc:
            log.debug("endpoint %s: %s", self.public_url, exc)
            return
        if loaded is not None:
            self._loaded = loaded

    async def _probe(self) -> tuple[str, ModelList]:
        if self.configured_kind != AUTO:
            order = [self.configured_kind]
        else:  # the kind seen last first; a new or restarted server is detected again
            order = [OLLAMA, OPENAI] if self.kind != OPENAI else [OPENAI, OLLAMA]
        errors = []
        for kind in order:
            try:
                if kind == OLLAMA:
                    path, strict = "/api/tags", self.configured_kind == AUTO
                    found = parse_ollama_models(await self._get_json(path), strict=strict)
                else:
                    path = "/v1/models"
                    found = parse_openai_models(await self._get_json(path))
            except _Failed as exc:
                errors.append(str(exc))
                continue
            if found is not None:
                return kind, found
            errors.append(f"{path}: not {'an Ollama' if kind == OLLAMA else 'an OpenAI'} answer")
        raise _Failed("; ".join(errors))

    async def _get_json(self, path: str) -> Any:
        """The JSON answer to ``GET base_url + path``, read within the bounds; raises _Failed."""
        cap = self.max_response_bytes
        try:
            async with asyncio.timeout(self.timeout):
                async with self._get_session().get(
                    self.base_url + path, allow_redirects=False
                ) as resp:
                    if resp.status != 200:
                        raise _Failed(f"{path}: HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > cap:
                        raise _Failed(f"{path}: answer over {cap} bytes")
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        data += chunk
                        if len(data) > cap:
                            raise _Failed(f"{path}: answer over {cap} bytes")
        except TimeoutError:
            raise _Failed(f"{path}: no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _Failed(self._scrub(f"{path}: {type(exc).__name__}: {exc}")) from None
        try:
            return json.loads(bytes(data))
        except (ValueError, RecursionError):
            raise _Failed(f"{path}: not JSON") from None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept-Encoding": "identity", **self.auth_headers()}
            # No decompression: a small compressed body must not become a huge one.
            self._session = aiohttp.ClientSession(headers=headers, auto_decompress=False)
        return self._session

    def _scrub(self, text: str) -> str:
        """``text`` without the credentials of the URL or the API key."""
        text = text.replace(self.base_url, self.public_url)
        return text.replace(self._api_key, "***") if self._api_key else text

    # change reporting

    def _warm(self, model: str) -> bool:
        if self.kind != OLLAMA or self._loaded is None:
            return True
        return model in self._loaded

    def _view(self) -> tuple[bool, list[str], dict[str, dict[str, Any]]]:
        return self.healthy, list(self.models), self.details()

    def _notify_if_changed(self, before: tuple[Any, ...]) -> None:
        if self._on_change is None or self._view() == before:
            return
        try:
            self._on_change(self)
        except Exception:
            log.exception("endpoint on_change callback failed")


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
