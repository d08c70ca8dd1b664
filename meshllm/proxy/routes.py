"""The OpenAI-compatible ``/v1`` routes of the proxy (DESIGN.md §4, §7).

:func:`add_proxy_routes` registers them on the node's aiohttp app; the node
gives them a :class:`ProxyMesh`, the little they need to know of the mesh.
Each inference request is parsed once for its ``model``, planned with
:func:`~meshllm.proxy.routing.plan_route`, and relayed to a local backend or
through a tunnel; a target that fails before the response head is skipped
for the next.  SSE is relayed event by event as it comes.

A remote target whose data path breaks before the head (no stream to it; no
acknowledgement within ``tunnel_ack_timeout``, nor a link when another replica is left
to try; the stream or link gone: :class:`~meshllm.proxy.errors.TunnelBroken`) is
also reported to the mesh with :meth:`ProxyMesh.suspect`, so its suspicion starts at
once rather than at the next probe (DESIGN.md §5).  A clean refusal (an ``error``
frame: not served here, no room for the body, its backend down) proves the node
alive and suspects nothing.

A request for a catalog model that no node serves or is loading is loaded on its
first request (DESIGN.md §6): :meth:`ProxyMesh.load` has the node the placement rule
names load it (a 503 says why when none can), and the request waits for it like one
for a model some node is still starting or fetching, up to ``load_timeout``: a
streaming one answers at once with SSE comment lines (``: loading …``) until the
first real event, so the client sees progress
and its connection stays alive.  A model the mesh does not know gets 404 at
once when nothing else could answer it.

Run the app with ``handler_cancellation=True``: a client that goes away then
cancels its handler, which aborts the upstream request (DESIGN.md §9).

Budgets (:class:`~meshllm.proxy.limits.HttpLimits`): a request body must keep coming
(``body_idle_timeout``, ``body_timeout``: else 408) and fit in the node's bytes of bodies
in flight (:class:`~meshllm.proxy.limits.ByteBudget`, held from its first byte until the
answer's head is in: else 503 with ``Retry-After`` after ``body_budget_wait``); a
non-streamed answer is buffered up to ``max_response_bytes`` (else 502 and the upstream
is closed).  A request's ``keep_alive`` (Ollama's) must be a duration (else 400); it
travels to the serving node in ``x-meshllm-keep-alive`` and sets that model's TTL there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from meshllm.cloud import KINDS
from meshllm.config import default
from meshllm.errors import MeshError, PeerError
from meshllm.proxy.access import caller_of, count_tokens, model_refusal
from meshllm.proxy.errors import (
    BackendUnavailable,
    TunnelBroken,
    error_response,
    sse_error_event,
)
from meshllm.proxy.forward import (
    REQUEST_DROP,
    RESPONSE_DROP,
    RESPONSE_DROP_PREFIXES,
    LocalBackends,
    ProxiedResponse,
    filter_headers,
    is_event_stream,
    is_json,
    split_events,
)
from meshllm.proxy.limits import DEFAULT_LIMITS, BudgetHold, ByteBudget, HttpLimits
from meshllm.proxy.observe import (
    CLIENT_GONE,
    KEY_ID_HEADER,
    REQUEST_ID_HEADER,
    NoLog,
    RequestLog,
    new_request_id,
    prompt_text,
)
from meshllm.proxy.routing import RoutePlan, Target, order_targets, plan_route
from meshllm.proxy.surface import OPENAI, Answer, Surface
from meshllm.proxy.tunnel import open_tunnel_request
from meshllm.records.answer_meter import AnswerMeter
from meshllm.records.record import RecordKind, RequestRecord
from meshllm.serving.durations import duration
from meshllm.wire import FrameStream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # a long chat with images fits; a runaway upload does not
RETRY_AFTER_S = 5  # about the time a starting llama-server needs for a small model
LOAD_TIMEOUT_S: float = default("load_timeout")  # a request waits this long for its model
PROGRESS_INTERVAL_S = 1.0  # between ": loading" comment lines of a waiting stream
MODEL_HEADER = "x-meshllm-model"
NODE_HEADER = "x-meshllm-node"
KEEP_ALIVE_HEADER = "x-meshllm-keep-alive"  # a request's keep_alive, to the serving node
_REQUEST_DROP = REQUEST_DROP | {"content-type", KEEP_ALIVE_HEADER, REQUEST_ID_HEADER, KEY_ID_HEADER}
"""Not taken from a client: set anew, or the mesh's own."""


class ProxyMesh(Protocol):
    """What the proxy routes need from the node (``node.py`` implements it)."""

    backends: LocalBackends
    """This node's own backends: its llama-servers, endpoints and cloud providers."""

    def catalog(self) -> list[dict[str, Any]]:
        """The mesh catalog: ``[{"model": str, "warm": bool, "nodes": [node_id, ...]}]``."""
        ...

    def targets(self) -> Mapping[str, Sequence[Target]]:
        """Ready replicas per model, this node's own included (``local=True``).

        Each ``Target.load`` is our requests in flight to it (counted through
        :meth:`request_started`/:meth:`request_finished`) plus its announced load.
        """
        ...

    def provider_targets(self, model: str) -> Sequence[Target] | None:
        """The nodes holding a key for ``model``'s cloud provider (``openai:gpt-4o``),
        this one included; None when ``model`` names no provider."""
        ...

    def provider_refusals(self, provider: str) -> Mapping[str, str]:
        """``node_id -> state`` of the nodes whose key ``provider`` refused."""
        ...

    async def open_stream(self, node_id: str) -> FrameStream:
        """A new stream to ``node_id`` for one tunnelled request; raises ``PeerError``."""
        ...

    def request_started(self, target: Target, keep_alive: str | None = None) -> None:
        """A request goes to ``target`` (load accounting; ``keep_alive`` for the pool of
        a local target)."""
        ...

    def request_finished(self, target: Target) -> None:
        """A request to ``target`` is over: answered, failed or cancelled."""
        ...

    def warming(self, model: str | None) -> Mapping[str, str]:
        """``node_id -> state`` ("starting", "fetching") of the nodes getting ``model``
        ready (``None``: any model), so a request can wait for it."""
        ...

    def failures(self, model: str) -> Mapping[str, str]:
        """``node_id -> cause`` of the nodes that gave up serving ``model``."""
        ...

    async def wait_changed(self, timeout: float) -> None:
        """Return when what is served in the mesh may have changed, or after ``timeout``."""
        ...

    def suspect(self, node_id: str, reason: str) -> None:
        """The data path to ``node_id`` broke: start a suspicion at once (DESIGN.md §5)."""
        ...

    async def load(self, model: str) -> str | None:
        """Have ``model``, a catalog model hot and loading nowhere, loaded where the mesh
        places it; None once under way, else why no node can (for a 503)."""
        ...

    def routed(self, model: str) -> None:
        """A request for ``model`` is being routed (its demand)."""
        ...

    def speaks(self, target: Target, path: str) -> bool:
        """Whether ``target``'s backend answers ``path`` of another API itself
        (``/v1/messages``: its own llama-server, a model on Anthropic's cloud)."""
        ...


def add_proxy_routes(
    app: web.Application,
    mesh: ProxyMesh,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    retry_after_s: int = RETRY_AFTER_S,
    load_timeout: float = LOAD_TIMEOUT_S,
    limits: HttpLimits = DEFAULT_LIMITS,
    budget: ByteBudget | None = None,
    log: RequestLog | None = None,
    node_id: str = "",
    surfaces: Mapping[str, Surface] | None = None,
) -> None:
    """Register ``GET /v1/models`` and the ``POST /v1/...`` inference routes on ``app``,
    and ``surfaces``' (path -> the API it speaks: Ollama's ``/api/chat``, say).

    ``budget`` counts the bytes of request bodies in flight; share one with
    :func:`~meshllm.proxy.tunnel.serve_tunnel` (default: one of
    ``limits.max_body_bytes_in_flight`` for these routes alone).  Every request is
    recorded in ``log`` (as entered at ``node_id``).
    """
    if budget is None:
        budget = ByteBudget(limits.max_body_bytes_in_flight)
    proxy = _Proxy(mesh, max_body_bytes, retry_after_s, load_timeout, limits, budget)
    proxy.log = log if log is not None else NoLog()
    proxy.node_id = node_id
    app.router.add_get("/v1/models", proxy.models)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"):
        app.router.add_post(path, proxy.relay)
    for path, surface in (surfaces or {}).items():
        app.router.add_post(path, functools.partial(proxy.relay, surface=surface))


class _Proxy:
    def __init__(
        self,
        mesh: ProxyMesh,
        max_body: int,
        retry_after_s: int,
        load_timeout: float,
        limits: HttpLimits,
        budget: ByteBudget,
    ) -> None:
        self._mesh = mesh
        self._limits = limits
        self._budget = budget
        self._max_body = max_body
        self._retry_after = str(retry_after_s)
        self._load_timeout = load_timeout
        self._created = int(time.time())
        self.log: RequestLog = NoLog()
        self.node_id = ""

    async def models(self, request: web.Request) -> web.Response:
        """OpenAI's model list, one entry per catalog model, with ``meshllm: {warm, nodes,
        state, pool}``: the nodes serving it, its mesh-wide pool state and its state on
        every node that has it.  A cloud model (state ``cloud``) is owned by its provider
        and served by the nodes holding its key."""
        data = [
            {
                "id": entry["model"],
                "object": "model",
                "created": int(entry.get("created", self._created)),
                "owned_by": entry["model"].partition(":")[0]
                if entry.get("state") == "cloud"
                else "meshllm",
                "meshllm": {
                    "warm": bool(entry.get("warm")),
                    "nodes": list(entry.get("nodes", ())),
                    "state": entry.get("state", "hot" if entry.get("warm") else "cold"),
                    "pool": list(entry.get("pool", ())),
                },
            }
            for entry in self._mesh.catalog()
        ]
        return web.json_response({"object": "list", "data": data})

    async def relay(self, request: web.Request, surface: Surface = OPENAI) -> web.StreamResponse:
        """Route one inference request (in ``surface``'s API), relay its answer, and
        record it."""
        ex = _Exchange(time.time(), asyncio.get_running_loop().time(), request.path, surface)
        response: web.StreamResponse | None = None
        try:
            with self._budget.hold() as hold:
                read = await self._read_body(request, hold)
                if isinstance(read, web.StreamResponse):
                    response = read
                    return read
                box = _Body(read, hold)
                if self.log.log_prompts:
                    ex.prompt = prompt_text(read)
                del read  # from here on only the box holds the body, so it can let it go
                response = await self._route(request, box, ex)
                return response
        finally:
            self._record(request, ex, response)

    def _record(
        self, request: web.Request, ex: _Exchange, response: web.StreamResponse | None
    ) -> None:
        """Hand the request's record to the log; the client went away if no response."""
        now = asyncio.get_running_loop().time()
        meter, target = ex.meter, ex.target
        if meter is not None:
            meter.finish()
        status = response.status if response is not None else CLIENT_GONE
        error = ex.error
        if not error and status >= 400 and isinstance(response, web.Response):
            error = _error_message(response.body)
        if target is None:
            kind, serving = RecordKind.ROUTED, ""
        else:
            kind = RecordKind.LOCAL if target.local else RecordKind.ROUTED
            serving = target.node_id
        record = RequestRecord(
            request_id=ex.request_id,
            time=ex.wall,
            kind=kind,
            entry_node=self.node_id,
            serving_node=serving,
            model=ex.model,
            path=ex.path,
            status=status,
            latency_ms=(now - ex.started) * 1000,
            ttft_ms=None,
            key_id=caller_of(request).key_id,
            stream=ex.stream,
            error=error[:500],
            prompt=ex.prompt,
        )
        if meter is not None:
            record.tokens_in, record.tokens_out = meter.tokens_in, meter.tokens_out
            if meter.first_token_at is not None:
                record.ttft_ms = (meter.first_token_at - ex.started) * 1000
            record.answer = meter.text
            count_tokens(request, meter.tokens_in + meter.tokens_out)
        if ex.energy_mark is not None:
            record.energy_j = self.log.energy_of(ex.energy_mark)
        try:
            self.log.request_finished(record, ex.started_model)
        except Exception:  # the records must never cost a request its answer
            log.exception("recording request %s", ex.request_id)

    async def _route(self, request: web.Request, box: _Body, ex: _Exchange) -> web.StreamResponse:
        surface = ex.surface
        try:
            payload = json.loads(box.data)
        except RecursionError:
            return surface.error(400, "request body is nested too deeply", "invalid_json")
        except ValueError:
            return surface.error(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(payload, dict):
            return surface.error(400, "request body is not a JSON object", "invalid_json")
        native: dict[str, Any] | None = None
        if surface is not OPENAI:
            names = self._catalog_names()  # a generator: the catalog read only if asked
            native = payload if surface.native else None  # the client's own, for a
            try:  # backend that speaks its API
                ex.upstream_path, payload = surface.translate(request.path, payload, names)
            except ValueError as exc:
                return surface.error(400, str(exc), "invalid_request")
            box.data = b""  # the client's body is not what goes on: rewritten below
            if not ex.upstream_path:  # load only (Ollama's empty prompt): one token, so the
                ex.load_only = True  # request reaches the serving node with its keep_alive
                ex.upstream_path = "/v1/completions"
                payload = {**payload, "prompt": "", "max_tokens": 1, "stream": False}
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            return surface.error(400, "'model' must be a string", "invalid_model")
        ex.model = model or ""
        ex.stream = payload.get("stream") is True
        ex.answer = surface.answer(ex.model, ex.stream)
        if (refused := model_refusal(request, model)) is not None:
            if surface is OPENAI:
                return refused
            return surface.error(refused.status, _error_message(refused.body), "forbidden")

        keep_alive = payload.get("keep_alive")
        if keep_alive is not None:
            try:
                duration(keep_alive, "keep_alive")
            except ValueError as exc:
                return surface.error(400, str(exc), "invalid_keep_alive")
            keep_alive = str(keep_alive).strip()  # it travels in a header
        ex.keep_alive = keep_alive

        try:
            held = self._mesh.provider_targets(model) if model is not None else None
        except ValueError as exc:
            return surface.error(400, str(exc), "invalid_model")
        stream: web.StreamResponse | None = None  # prepared while waiting for a model
        if held is not None:  # a cloud model: the nodes holding its provider's key
            assert model is not None
            if not held:
                status, message = self._no_provider(model)
                return surface.error(status, message, "model_not_found")
            plan, known = RoutePlan(model, order_targets(held)), False
        else:
            targets = self._mesh.targets()
            # A catalog model that is cold gets loaded, never another: its name was meant.
            known = model is not None and model not in targets and self._in_catalog(model)
            plan = plan_route(model, targets, fallback=surface.fallback and not known)
        if not plan.attempts:
            if model is not None and not known:
                return surface.error(
                    404, f"model {model!r} is not in the mesh catalog", "model_not_found"
                )
            if model is not None and not self._mesh.warming(model):
                refused_load = await self._mesh.load(model)  # load on first request (§6)
                if refused_load is not None:
                    retry = {"Retry-After": self._retry_after}
                    message = self._unloadable(model, refused_load)
                    return surface.error(503, message, "no_target", headers=retry)
            waited = await self._wait_for_model(request, model, ex)
            if not isinstance(waited, _Waiting):
                return waited
            plan, stream = waited.plan, waited.stream
        ex.model = plan.model_used
        if model is None and (refused := model_refusal(request, plan.model_used)) is not None:
            return await _refuse(ex, stream, 403, _error_message(refused.body), "model_not_allowed")
        if plan.model_used != model or not box.data:
            payload["model"] = plan.model_used
            encoded = _encoded(payload)
            if encoded is None:  # parsed at the edge of the limit, one level short now
                return await _refuse(
                    ex, stream, 400, "request body is nested too deeply", "invalid_json"
                )
            box.data = encoded
        ex.native_payload = native  # encoded only for a target that speaks its API
        del payload, native  # parsed copies of the body: not needed any more
        headers = filter_headers(request.headers.items(), _REQUEST_DROP)
        headers["Content-Type"] = "application/json"  # the body is JSON: we parsed it
        if keep_alive is not None:
            headers[KEEP_ALIVE_HEADER] = keep_alive
        headers[REQUEST_ID_HEADER] = ex.request_id
        if key_id := caller_of(request).key_id:
            headers[KEY_ID_HEADER] = key_id
        self._mesh.routed(plan.model_used)
        self.log.request_started(plan.model_used)
        ex.started_model = plan.model_used
        failures: list[str] = []
        for i, target in enumerate(plan.attempts):
            hurry = i + 1 < len(plan.attempts)  # another replica is left to try
            self._mesh.request_started(target, keep_alive)
            try:
                upstream = await self._open_speaking(target, headers, box, ex, hurry, stream)
            except (PeerError, BackendUnavailable) as exc:
                self._mesh.request_finished(target)
                failures.append(f"{target.node_id}: {exc}")
                if isinstance(exc, TunnelBroken):
                    self._suspect(target.node_id, str(exc))
                continue
            except BaseException:
                self._mesh.request_finished(target)
                raise
            box.drop()  # the head is in: no retry needs the body now
            ex.native_payload = None
            ex.target = target
            ex.meter = AnswerMeter(ex.stream, keep_text=self.log.log_prompts)
            if target.local and held is None:  # a cloud model costs its price, not energy
                ex.energy_mark = self.log.serving_started()
            try:
                return await self._respond(request, upstream, target, ex, stream)
            finally:
                upstream.close()
                self._mesh.request_finished(target)
        message = f"no replica of {plan.model_used!r} could be reached: " + "; ".join(failures)
        return await _refuse(ex, stream, 502, message, "no_reachable_target")

    async def _wait_for_model(
        self, request: web.Request, model: str | None, ex: _Exchange
    ) -> _Waiting | web.StreamResponse:
        """Hold a request while its model starts or is fetched somewhere, up to the load
        timeout.  Returns the plan once a replica is ready, or the error to answer with.
        A streaming request gets its SSE response at once, with ``: loading`` comments."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self._wait(request, model, ex, started)
        finally:
            self.log.load_waited(model or "", loop.time() - started)

    async def _wait(
        self, request: web.Request, model: str | None, ex: _Exchange, started: float
    ) -> _Waiting | web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = started + self._load_timeout
        stream: web.StreamResponse | None = None
        while True:
            warming = self._mesh.warming(model)
            now = loop.time()
            if not warming or now >= deadline:
                message = self._unavailable(model, warming, now - started)
                retry = {"Retry-After": self._retry_after}
                return await _refuse(ex, stream, 503, message, "no_target", retry)
            if ex.stream:
                assert ex.answer is not None
                if stream is None:
                    stream = web.StreamResponse(headers=ex.answer.stream_headers)
                    await stream.prepare(request)
                what = ", ".join(f"{state} on {node}" for node, state in sorted(warming.items()))
                line = f"loading {model or 'a model'}: {what} ({now - started:.0f} s)"
                if progress := ex.answer.progress(line):
                    await stream.write(progress)
            await self._mesh.wait_changed(min(PROGRESS_INTERVAL_S, deadline - now))
            # A named model must be that model; a request naming none takes any.
            plan = plan_route(model, self._mesh.targets(), fallback=model is None)
            if plan.attempts:
                return _Waiting(plan, stream)

    def _unavailable(self, model: str | None, warming: Mapping[str, str], waited: float) -> str:
        if warming:
            return (
                f"model {model or 'a model'!r} is still loading after {waited:.0f} s "
                "(--load-timeout); try again shortly"
            )
        what = f"model {model!r} is not served by any node" if model else "no model is served"
        causes = self._mesh.failures(model) if model else {}
        if causes:
            first = next(iter(sorted(causes.items())))
            what += f"; it failed on {first[0]}: {first[1].splitlines()[0]}"
        return f"{what} right now; try again shortly"

    def _unloadable(self, model: str, refused: str) -> str:
        message = f"model {model!r} is loaded nowhere and no node can load it: {refused}"
        causes = self._mesh.failures(model)
        if causes and "failed" not in refused:
            node, cause = next(iter(sorted(causes.items())))
            message += f"; it failed on {node}: {cause.splitlines()[0]}"
        return message

    def _no_provider(self, model: str) -> tuple[int, str]:
        """Status and message for a cloud model no node can take: 502 when the provider
        refused every key the mesh holds, else 404 (no node holds one)."""
        provider = model.partition(":")[0]
        refused = self._mesh.provider_refusals(provider)
        if refused:
            nodes = ", ".join(sorted(refused))
            return 502, f"{provider} refused the API key of every node that holds one ({nodes})"
        variable = KINDS[provider].key_vars[0]
        return 404, (
            f"model {model!r}: no node in the mesh holds a key for {provider!r} "
            f"(start one with {variable} in its environment)"
        )

    def _catalog_names(self) -> Iterator[str]:
        for entry in self._mesh.catalog():
            yield entry["model"]

    def _in_catalog(self, model: str) -> bool:
        return any(entry.get("model") == model for entry in self._mesh.catalog())

    async def _read_body(self, request: web.Request, hold: BudgetHold) -> bytes | web.Response:
        """The request body, counted in ``hold``; or the error to answer: 413 over the cap,
        503 when the bodies in flight leave no room, 408 when it does not come in time."""
        limits = self._limits
        length = request.content_length
        if length is not None and length > self._max_body:
            return self._too_large()
        if length is not None and not await hold.grow_to(length, limits.body_budget_wait):
            return self._busy()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                idle_deadline = loop.time() + limits.body_idle_timeout
                async with asyncio.timeout_at(min(deadline, idle_deadline)):
                    data = await request.content.readany()
                if not data:
                    break
                size += len(data)
                if size > self._max_body:
                    return self._too_large()
                if not await hold.grow_to(size, limits.body_budget_wait):
                    return self._busy()
                parts.append(data)
        except TimeoutError:
            late = error_response(408, "request body not received in time", "request_timeout")
            return await _answer_and_close(request, late)
        body = b"".join(parts)
        parts.clear()
        return body

    def _too_large(self) -> web.Response:
        return error_response(413, f"request body over {self._max_body} bytes", "request_too_large")

    def _busy(self) -> web.Response:
        return error_response(
            503,
            "this node holds too many request bodies right now; try again shortly",
            "server_busy",
            headers={"Retry-After": self._retry_after},
        )

    async def _open(
        self, target: Target, path: str, headers: dict[str, str], body: bytes, hurry: bool
    ) -> ProxiedResponse:
        """The response head from ``target``; raises ``PeerError``/``BackendUnavailable``
        (``hurry``: see :meth:`_stream_to`)."""
        if target.local:
            return await self._mesh.backends.forward(
                "POST", path, headers, body, model=target.model
            )
        stream = await self._stream_to(target.node_id, hurry)
        return await open_tunnel_request(
            stream, "POST", path, headers, body, model=target.model, limits=self._limits
        )

    async def _open_speaking(
        self,
        target: Target,
        headers: dict[str, str],
        box: _Body,
        ex: _Exchange,
        hurry: bool,
        stream: web.StreamResponse | None,
    ) -> ProxiedResponse:
        """:meth:`_open`, in the client's own API when ``target`` speaks it (and no
        translated byte is out yet): llama-server's own ``/v1/messages``, say.  A 404
        there (a build without the route) is asked again, translated."""
        native = ex.surface.native
        ex.native = False
        if (
            native is not None
            and ex.native_payload is not None
            and stream is None
            and self._mesh.speaks(target, native.path)
            and (body := _encoded({**ex.native_payload, "model": target.model})) is not None
        ):
            upstream = await self._open(target, native.path, headers, body, hurry)
            if upstream.status != 404:
                ex.native = True
                ex.answer = native.answer()
                return upstream
            upstream.close()
        return await self._open(target, ex.upstream_path, headers, box.data, hurry)

    async def _stream_to(self, node_id: str, hurry: bool) -> FrameStream:
        """A new stream to ``node_id``, or :class:`TunnelBroken`: no link and none dialled,
        or, with another replica to try (``hurry``), none within ``tunnel_ack_timeout``.
        A dial to a dead node waits out the transport's hello timeout (5 s) otherwise; the
        dial goes on without us, so a live but slow one is there for the next request.
        The last replica gets the whole dial: giving up early would gain nothing."""
        wait = self._limits.tunnel_ack_timeout if hurry else None
        try:
            async with asyncio.timeout(wait):
                return await self._mesh.open_stream(node_id)
        except TimeoutError:
            limit = self._limits.tunnel_ack_timeout
            raise TunnelBroken(f"no link to {node_id} within {limit:g} s") from None
        except PeerError as exc:  # no link, and none could be dialled
            raise TunnelBroken(f"no stream to {node_id}: {exc}") from exc

    def _suspect(self, node_id: str, reason: str) -> None:
        """Tell the mesh; its trouble must not cost the request its next attempt."""
        try:
            self._mesh.suspect(node_id, reason)
        except Exception:
            log.exception("could not report %s as suspect", node_id)

    async def _respond(
        self,
        request: web.Request,
        upstream: ProxiedResponse,
        target: Target,
        ex: _Exchange,
        stream: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        headers = CIMultiDict(
            filter_headers(upstream.headers.items(), RESPONSE_DROP, RESPONSE_DROP_PREFIXES)
        )
        headers[MODEL_HEADER] = target.model
        headers[NODE_HEADER] = target.node_id
        answer = ex.answer
        assert answer is not None
        if not is_event_stream(upstream.headers):
            # A JSON answer is complete before it is useful: take it whole, so a
            # break-off can still become a clean 502 instead of a truncated body.
            head_at = asyncio.get_running_loop().time()
            try:
                data = await self._buffer(upstream)
            except MeshError as exc:
                return await _refuse(
                    ex, stream, 502, f"upstream broke off: {exc}", "upstream_error"
                )
            if data is None:  # the caller closes the upstream: its rest is never read
                cap = self._limits.max_response_bytes
                message = f"upstream answer too large (over {cap} bytes)"
                return await _refuse(ex, stream, 502, message, "upstream_too_large")
            assert ex.meter is not None
            ex.meter.feed(data, head_at)
            if stream is not None:  # the SSE head is out: say it as an error event
                text = data[:1000].decode(errors="replace")
                ex.error = f"upstream answered {upstream.status}"
                return await _end_stream(ex, stream, f"upstream answered {upstream.status}: {text}")
            loaded = getattr(ex.surface, "loaded", None)
            if ex.load_only and upstream.status < 300 and loaded is not None:
                return loaded(target.model, ex.keep_alive)  # loaded, its TTL set there
            if ex.surface is not OPENAI and not ex.native:
                return self._translated(upstream.status, data, ex, headers)
            if not is_json(upstream.headers):
                # An API answer is JSON; anything else (a backend's text/html page) is
                # handed on as plain text, never as something a browser would render.
                headers["Content-Type"] = "text/plain; charset=utf-8"
            return web.Response(status=upstream.status, body=data, headers=headers)

        if stream is None:
            headers.update(answer.stream_headers)
            stream = web.StreamResponse(status=upstream.status, headers=headers)
            await stream.prepare(request)
        pending = b""
        meter = ex.meter
        assert meter is not None
        loop = asyncio.get_running_loop()
        try:
            try:
                async with aclosing(upstream.iter_chunks()) as chunks:
                    async for chunk in chunks:
                        events, pending = split_events(pending, chunk)
                        if events:
                            now = loop.time()
                            meter.feed(events, now)
                            if out := answer.events(events, now):
                                await stream.write(out)
                if pending:
                    now = loop.time()
                    meter.feed(pending, now)
                    if out := answer.events(pending, now):
                        await stream.write(out)
                if tail := answer.end(loop.time()):
                    await stream.write(tail)
            except MeshError as exc:
                # Drop the partial event; end with an error the client raises, never a hang.
                ex.error = f"upstream broke off: {exc}"
                await stream.write(answer.error_event(ex.error, "upstream_error"))
            await stream.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the caller closes the upstream
        return stream

    def _translated(
        self, status: int, data: bytes, ex: _Exchange, headers: CIMultiDict[str]
    ) -> web.Response:
        """A whole OpenAI answer in the client's API: its errors in the surface's shape."""
        assert ex.answer is not None
        if status >= 300:
            message = _error_message(data) or data[:1000].decode(errors="replace")
            return ex.surface.error(status, message or f"upstream answered {status}")
        try:
            body = ex.answer.body(data, asyncio.get_running_loop().time())
        except ValueError as exc:
            return ex.surface.error(502, f"upstream answer not understood: {exc}")
        headers["Content-Type"] = "application/json"
        return web.Response(status=status, body=body, headers=headers)

    async def _buffer(self, upstream: ProxiedResponse) -> bytes | None:
        """A non-streamed answer whole, or ``None`` once it is over ``max_response_bytes``."""
        cap = self._limits.max_response_bytes
        parts: list[bytes] = []
        size = 0
        async with aclosing(upstream.iter_chunks()) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    return None
                parts.append(chunk)
        return b"".join(parts)


class _Exchange:
    """What a request's record is made of, gathered as it goes."""

    __slots__ = (
        "answer",
        "energy_mark",
        "error",
        "keep_alive",
        "load_only",
        "meter",
        "model",
        "native",
        "native_payload",
        "path",
        "prompt",
        "request_id",
        "started",
        "started_model",
        "stream",
        "surface",
        "target",
        "upstream_path",
        "wall",
    )

    def __init__(self, wall: float, started: float, path: str, surface: Surface) -> None:
        self.request_id = new_request_id()
        self.wall, self.started, self.path = wall, started, path
        self.surface = surface
        self.upstream_path = path  # the OpenAI route it goes to
        self.answer: Answer | None = None  # made once the model and stream flag are known
        self.keep_alive: str | None = None
        self.load_only = False  # a request only to load its model (Ollama's empty prompt)
        self.model = ""
        self.stream = False
        self.target: Target | None = None  # the replica whose answer the client got
        self.meter: AnswerMeter | None = None
        self.started_model: str | None = None  # told to the log as in flight
        self.error = ""
        self.prompt: str | None = None
        self.energy_mark: float | None = None  # this node's backend served it from then
        self.native_payload: dict[str, Any] | None = None  # the client's, for a backend in
        # its API
        self.native = False  # the answer comes in the client's API: passed on as it is


def _encoded(payload: dict[str, Any]) -> bytes | None:
    """``payload`` as compact JSON; None when it cannot be (nested past the limit)."""
    try:
        return json.dumps(payload, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):
        return None


def _error_message(body: object) -> str:
    """The message of an OpenAI-shaped error body (ours), or ""."""
    if not isinstance(body, bytes):
        return ""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return message if isinstance(message, str) else ""


class _Body:
    """A request's body and its share of the bodies-in-flight budget, until dropped."""

    __slots__ = ("data", "hold")

    def __init__(self, data: bytes, hold: BudgetHold) -> None:
        self.data, self.hold = data, hold

    def drop(self) -> None:
        self.data = b""
        self.hold.release()


class _Waiting:
    """A request that waited for its model: the plan, and its SSE response if prepared."""

    __slots__ = ("plan", "stream")

    def __init__(self, plan: RoutePlan, stream: web.StreamResponse | None) -> None:
        self.plan, self.stream = plan, stream


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` and close the connection at once: aiohttp would otherwise linger
    reading (and dropping) the rest of the body for its ``lingering_time``, which a
    client that stopped sending would hold the connection with."""
    response.force_close()
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()
    return response


async def _refuse(
    ex: _Exchange,
    stream: web.StreamResponse | None,
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """An error in the request's API: a response with ``status``, or, once a waiting
    stream's head is out, an error event that ends it."""
    if stream is not None:
        return await _end_stream(ex, stream, message, code)
    return ex.surface.error(status, message, code, headers=headers)


async def _end_stream(
    ex: _Exchange, stream: web.StreamResponse, message: str, code: str = "upstream_error"
) -> web.StreamResponse:
    """End a stream whose head is already sent with an error event of its API."""
    ex.error = ex.error or message
    event = ex.answer.error_event(message, code) if ex.answer else sse_error_event(message, code)
    try:
        await stream.write(event)
        await stream.write_eof()
    except ConnectionResetError:
        pass
    return stream
