"""Supervise one ``llama-server`` serving one model (DESIGN.md §6, solo mode).

Launch on 127.0.0.1 at a port the OS picks, wait for ``GET /health`` to answer
200 (it answers 503 while the model loads), watch it, restart it with
exponential back-off when it dies or stops answering, stop it with SIGTERM and
then SIGKILL.  A server that never gets ready ``max_start_failures`` times in
a row is given up on: state ``failed``, with its cause (exit code or signal,
last log lines) in :attr:`LlamaServer.failure`.  One that dies of SIGILL or
SIGBUS while loading is first retried with ``--no-repack`` (DESIGN.md §9).

It is never orphaned: the child asks the kernel for SIGKILL when
its parent dies (``PR_SET_PDEATHSIG``), so a node killed with -9 takes its
llama-server along; it also runs in its own process group, so a Ctrl-C meant
for the node does not reach it before the node has said goodbye.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import aiohttp

from meshllm.errors import ServingError
from meshllm.gossip import ModelState
from meshllm.serving.launch import (
    HOST,
    LlamaOptions,
    die_with_parent,
    fallback_chat_template,
    free_port,
    llama_argv,
    tail,
)
from meshllm.serving.model_file import ModelFile
from meshllm.serving.proof import CRASH_SIGNALS, NO_REPACK, describe_exit

log = logging.getLogger(__name__)

LOG_ROTATE_BYTES = 20 << 20  # keep one previous log (.1) once a log passes 20 MiB
FAILURE_MAX_CHARS = 1500  # a cause is gossiped: keep it small


class Backoff:
    """Restart delays: ``initial``, doubled after each failure up to ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the coming restart."""
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """After a stable run: the next failure waits ``initial`` again."""
        self._next = self.initial


_live: weakref.WeakSet[LlamaServer] = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    # A normal interpreter exit that skipped stop(): no llama-server outlives us.
    for server in list(_live):
        server.kill()


class LlamaServer:
    """One supervised llama-server process for one model."""

    def __init__(
        self,
        model: ModelFile,
        binary: Path,
        *,
        log_dir: Path,
        options: LlamaOptions | None = None,
        on_state: Callable[[str, ModelState], None] | None = None,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> None:
        self.model = model
        self.binary = Path(binary)
        self.options = options or LlamaOptions()
        self.log_path = Path(log_dir) / f"llama-{model.name}.log"
        self.state: ModelState | None = None  # None before start and after stop
        self.restarts = 0  # launches after the first one
        self.port: int | None = None
        self._on_state = on_state
        self._on_progress = on_progress  # (model, seconds since launch) while loading
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._given_up = asyncio.Event()
        self.failure: str | None = None  # why it was given up on (signal or exit, log lines)
        self._launch_error = ""
        self._extra_args = self.options.extra_args
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<LlamaServer {self.model.name} {self.state} pid={self.pid} port={self.port}>"

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def base_url(self) -> str:
        """Where /v1/... requests go: ``base_url + "/v1/chat/completions"``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running llama-server's pid, None between runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Launch llama-server and supervise it in the background; returns once the
        process runs (not yet ready: see ``wait_ready``).  Raises ServingError
        when it cannot be launched at all."""
        if self._task:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if template := fallback_chat_template(self.model):
            log.warning(
                "%s has no chat template; using llama.cpp's built-in %r (architecture %s)",
                self.name,
                template,
                self.model.architecture,
            )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        _live.add(self)
        try:
            proc = await self._spawn()
        except ServingError:
            await self._close_session()
            raise
        self._task = asyncio.create_task(self._supervise(proc), name=f"llama {self.name}")
        self._task.add_done_callback(self._supervisor_done)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers.  ServingError after ``timeout`` seconds, or at
        once, with the cause, when the server is given up on."""
        ready = asyncio.ensure_future(self._ready.wait())
        given_up = asyncio.ensure_future(self._given_up.wait())
        try:
            await asyncio.wait({ready, given_up}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            ready.cancel()
            given_up.cancel()
        if self._ready.is_set():
            return
        if self.failure is not None:
            raise ServingError(f"llama-server for {self.name} failed: {self.failure}")
        raise ServingError(
            f"llama-server for {self.name} not ready after {timeout:.0f} s "
            f"(state {self.state}; log {self.log_path})"
        )

    async def stop(self) -> None:
        """Stop supervising and terminate llama-server: SIGTERM, SIGKILL after the grace."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._terminate()
        await self._close_session()
        self._ready.clear()
        self.state = None
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the process group now, synchronously (for atexit and emergencies)."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    # -- supervision -------------------------------------------------------

    async def _supervise(self, proc: asyncio.subprocess.Process | None) -> None:
        opts = self.options
        backoff = Backoff(opts.backoff_initial, opts.backoff_max)
        start_failures = 0
        while True:
            if proc is None:
                ready_for, cause = None, self._launch_error
            else:
                ready_for, cause = await self._run(proc)
            if ready_for is None:
                start_failures += 1
                self._maybe_disable_repack(proc)
                if start_failures >= opts.max_start_failures:
                    self._give_up(cause, start_failures)
                    return
            else:
                start_failures = 0
                if ready_for >= opts.stable_after:
                    backoff.reset()
            delay = backoff.next()
            self._set_state(ModelState.STARTING)  # restarting: not ready, not given up
            log.warning(
                "llama-server for %s %s (%s); restarting in %.1f s; last log lines:\n%s",
                self.name,
                "died" if ready_for is not None else "failed to start",
                cause,
                delay,
                tail(self.log_path),
            )
            await asyncio.sleep(delay)
            self.restarts += 1
            try:
                proc = await self._spawn()
            except ServingError as exc:  # e.g. the binary vanished: counts as a failed start
                log.warning("%s", exc)
                self._launch_error = str(exc)
                proc = None

    async def _run(self, proc: asyncio.subprocess.Process) -> tuple[float | None, str]:
        """One run: seconds it was ready before it ended (None if it never was), and why
        it ended."""
        if not await self._wait_healthy(proc):
            exited = proc.returncode is not None
            cause = (
                f"{describe_exit(proc.returncode)} while loading"  # type: ignore[arg-type]
                if exited
                else f"not healthy after {self.options.startup_timeout:.0f} s"
            )
            await self._terminate()
            return None, cause
        ready_at = time.monotonic()
        self._set_state(ModelState.READY)
        await self._watch(proc)
        exited = proc.returncode is not None
        cause = describe_exit(proc.returncode) if exited else "stopped answering /health"  # type: ignore[arg-type]
        self._set_state(ModelState.STARTING)  # before the (maybe slow) SIGTERM grace
        await self._terminate()  # reaps it; kills it if it is stuck
        return time.monotonic() - ready_at, cause

    def _maybe_disable_repack(self, proc: asyncio.subprocess.Process | None) -> None:
        """A crash by SIGILL/SIGBUS while loading: next time without ggml's repacked
        (and AMX) kernels, which some machines report but cannot run (DESIGN.md §9)."""
        code = proc.returncode if proc is not None else None
        crashed = code is not None and code < 0 and -code in CRASH_SIGNALS
        if crashed and NO_REPACK not in self._extra_args:
            log.warning(
                "llama-server for %s died of %s while loading; retrying with %s",
                self.name,
                describe_exit(code),  # type: ignore[arg-type]
                NO_REPACK,
            )
            self._extra_args = (*self._extra_args, NO_REPACK)

    def _give_up(self, cause: str, starts: int) -> None:
        lines = tail(self.log_path)
        failure = f"{cause}, {starts} starts in a row"
        self.failure = (f"{failure}; last log lines:\n{lines}" if lines else failure)[
            :FAILURE_MAX_CHARS
        ]
        log.error("llama-server for %s given up: %s", self.name, self.failure)
        self._given_up.set()
        self._set_state(ModelState.FAILED)

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.port = free_port(self.port, self.options.port_range)
        options = dataclasses.replace(self.options, extra_args=self._extra_args)
        argv = llama_argv(self.binary, self.model, self.port, options)
        self._rotate_log()
        with self.log_path.open("ab") as logf:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logf.write(f"\n=== meshllm {stamp}: {' '.join(argv)}\n".encode())
            logf.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own group; uvloop lacks process_group
                    preexec_fn=functools.partial(die_with_parent, os.getpid()),
                )
            except OSError as exc:
                raise ServingError(f"cannot run llama-server {self.binary}: {exc}") from None
        self._proc = proc
        log.info("llama-server for %s: pid %d, port %d", self.name, proc.pid, self.port)
        self._set_state(ModelState.STARTING)
        return proc

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> bool:
        """Poll /health until 200 (True); False when the process exits first or
        the startup timeout passes."""
        started = time.monotonic()
        next_report = started + 1.0
        while proc.returncode is None:
            if await self._health() == 200:
                log.info(
                    "llama-server for %s ready in %.1f s", self.name, time.monotonic() - started
                )
                return True
            now = time.monotonic()
            if now - started > self.options.startup_timeout:
                log.warning("llama-server for %s unhealthy after %.0f s", self.name, now - started)
                return False
            if now >= next_report:
                next_report = now + 1.0
                self._progress(now - started)
            await asyncio.sleep(0.2)
        return False

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """While ready: return when the process exits or stops answering /health."""
        exited = asyncio.ensure_future(proc.wait())
        failures = 0
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=self.options.health_interval)
                if done:
                    return
                if await self._health() == 200:
                    failures = 0
                    continue
                failures += 1
                if failures >= self.options.health_failures:
                    log.warning("llama-server for %s stopped answering /health", self.name)
                    return
        finally:
            exited.cancel()

    async def _health(self) -> int | None:
        assert self._session is not None
        try:
            async with self._session.get(f"{self.base_url}/health") as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.options.stop_grace)
            except TimeoutError:
                log.warning("llama-server for %s ignored SIGTERM; killing it", self.name)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self._proc = None

    # -- helpers -------------------------------------------------------------

    def _set_state(self, state: ModelState) -> None:
        if state == ModelState.READY:
            self._ready.set()
        else:
            self._ready.clear()
        if state == self.state:
            return
        self.state = state
        if self._on_state:
            try:
                self._on_state(self.name, state)
            except Exception:
                log.exception("on_state callback failed")

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()):
            log.error("llama-server supervisor for %s crashed", self.name, exc_info=exc)
            self._set_state(ModelState.FAILED)
            self.kill()

    def _progress(self, elapsed: float) -> None:
        log.log(
            logging.INFO if int(elapsed) % 10 == 0 else logging.DEBUG,
            "llama-server for %s loading (%.0f s)",
            self.name,
            elapsed,
        )
        if self._on_progress:
            try:
                self._on_progress(self.name, elapsed)
            except Exception:
                log.exception("on_progress callback failed")

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))

    async def _close_session(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None
