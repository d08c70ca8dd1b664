"""llama-server: finding it, supervising it, never orphaning it.

The supervisor is first tested against a fake llama-server (a small Python
HTTP server, fast and always available), then end to end against the real
llama-server on the default model (skipped when llama-server is not built).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from meshllm.errors import ServingError
from meshllm.gossip.announcement import ModelState
from meshllm.serving import LlamaOptions, LlamaServer, ModelFile, find_llama_server, llama_argv
from meshllm.serving import install as install_module
from meshllm.serving.launch import default_threads
from meshllm.serving.llama import Backoff
from meshllm.serving.locate import ENV_VAR, INSTALL_HINT
from tests.serving.fake_llama import until

REPO = Path(__file__).resolve().parents[2]
FAST = LlamaOptions(
    backoff_initial=0.05,
    backoff_max=0.2,
    health_interval=0.1,
    health_failures=2,
    stop_grace=5.0,
    startup_timeout=60.0,
)


DAEMON = """\
import asyncio, json, sys
from pathlib import Path
from meshllm.serving import LlamaServer, ModelFile

async def main():
    path, binary, log_dir = map(Path, sys.argv[1:4])
    model = ModelFile(name=sys.argv[4], path=path, size_bytes=0, architecture="?")
    server = LlamaServer(model, binary, log_dir=log_dir)
    await server.start()
    await server.wait_ready(600)
    print(json.dumps({"pid": server.pid}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


# -- helpers -------------------------------------------------------------------


class Procs:
    """Processes a test started (by pid); whatever is still alive is killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []

    def track(self, pid: int | None) -> psutil.Process:
        assert pid is not None
        proc = psutil.Process(pid)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if alive(proc):
                proc.kill()


def alive(proc: psutil.Process) -> bool:
    """Running, and the same process (not a reused pid), and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def procs() -> Iterator[Procs]:
    tracked = Procs()
    yield tracked
    tracked.cleanup()


@pytest.fixture
def fake_model(tmp_path: Path) -> ModelFile:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")
    return ModelFile(name="fake", path=path, size_bytes=4, architecture="llama")


def recorder() -> tuple[list[ModelState], Callable[[str, ModelState], None]]:
    states: list[ModelState] = []
    return states, lambda _model, state: states.append(state)


def launch_lines(server: LlamaServer) -> list[str]:
    """The command line of each launch, as the supervisor logged it."""
    return [line for line in server.log_path.read_text().splitlines() if "=== meshllm" in line]


async def health(server: LlamaServer) -> int:
    async with aiohttp.ClientSession() as session, session.get(server.base_url + "/health") as r:
        return r.status


# -- pure parts ------------------------------------------------------------------


def test_backoff_doubles_to_max_and_resets() -> None:
    backoff = Backoff(1.0, 30.0)

    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next() == 1


def test_llama_argv() -> None:
    model = ModelFile("m", Path("/models/m.gguf"), 1, "llama", context_length=32768)
    opts = LlamaOptions(ctx_size=8192, parallel=2, threads=3, extra_args=("-ngl", "99"))

    argv = llama_argv(Path("/bin/llama-server"), model, 8081, opts)

    assert argv[:9] == [
        "/bin/llama-server",
        *("-m", "/models/m.gguf"),
        *("--host", "127.0.0.1"),
        *("--port", "8081"),
        *("--alias", "m"),
    ]
    flags = " ".join(argv)
    assert "--ctx-size 8192 --parallel 2" in flags and "--threads 3" in flags
    assert "--metrics" in argv and argv[-2:] == ["-ngl", "99"]


def test_llama_argv_caps_generation_by_default() -> None:
    model = ModelFile("m", Path("/m.gguf"), 1, "llama")

    capped = llama_argv(Path("llama-server"), model, 1, LlamaOptions())
    uncapped = llama_argv(Path("llama-server"), model, 1, LlamaOptions(max_tokens=None))

    assert capped[capped.index("-n") + 1] == "1024"
    assert "-n" not in uncapped


def test_llama_argv_gives_a_template_to_a_model_without_one() -> None:
    base = ModelFile("gemma-3-270m", Path("/g.gguf"), 1, "gemma3", has_chat_template=False)
    tuned = ModelFile("gemma-3-270m-it", Path("/g.gguf"), 1, "gemma3", has_chat_template=True)
    unknown = ModelFile("x", Path("/x.gguf"), 1, "llama", has_chat_template=False)

    assert " --no-jinja --chat-template gemma" in " ".join(
        llama_argv(Path("llama-server"), base, 1, LlamaOptions())
    )
    for model in (tuned, unknown):  # its own template; no architecture to go by
        assert "--chat-template" not in llama_argv(Path("llama-server"), model, 1, LlamaOptions())


def test_llama_argv_caps_context_and_defaults_threads() -> None:
    model = ModelFile("m", Path("/m.gguf"), 1, "llama", context_length=2048)

    argv = llama_argv(Path("llama-server"), model, 1, LlamaOptions(ctx_size=8192))

    assert argv[argv.index("--ctx-size") + 1] == "2048"
    threads = int(argv[argv.index("--threads") + 1])
    assert threads == default_threads() and 1 <= threads <= len(os.sched_getaffinity(0))


# -- locate ----------------------------------------------------------------------


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No env var, no cached build, nothing on PATH."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(install_module, "cached_llama_server", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_find_llama_server_order(
    nowhere: None, fake_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other" / "llama-server"
    other.parent.mkdir()
    other.write_bytes(fake_binary.read_bytes())
    other.chmod(0o755)

    monkeypatch.setenv("PATH", str(fake_binary.parent))
    assert find_llama_server(None) == fake_binary
    monkeypatch.setattr(install_module, "cached_llama_server", lambda: other)
    assert find_llama_server(None) == other
    monkeypatch.setenv(ENV_VAR, str(fake_binary))
    assert find_llama_server(None) == fake_binary
    assert find_llama_server(str(other)) == other
    assert find_llama_server("llama-server") == fake_binary  # a bare name: PATH


def test_find_llama_server_none(nowhere: None) -> None:
    with pytest.raises(ServingError, match="llama-server not found") as info:
        find_llama_server(None)
    assert INSTALL_HINT in str(info.value)
    assert "\n" not in str(info.value)


def test_find_llama_server_bad_explicit(
    nowhere: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_exec = tmp_path / "llama-server"
    not_exec.write_text("")
    with pytest.raises(ServingError, match="--llama-server"):
        find_llama_server(str(tmp_path / "missing"))
    with pytest.raises(ServingError, match="not an executable"):
        find_llama_server(str(not_exec))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(ServingError, match=ENV_VAR):
        find_llama_server(None)


# -- supervisor, fake llama-server ------------------------------------------------


async def test_supervisor_ready_then_stop(
    fake_binary: Path, fake_model: ModelFile, tmp_path: Path, procs: Procs
) -> None:
    states, on_state = recorder()
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path / "logs", on_state=on_state)
    try:
        await server.start()
        child = procs.track(server.pid)
        await server.wait_ready(60)
        assert server.state == ModelState.READY
        assert await health(server) == 200
        assert os.getpgid(child.pid) == child.pid  # its own process group
    finally:
        await server.stop()
    assert not alive(child)
    assert server.pid is None and server.state is None
    assert states == [ModelState.STARTING, ModelState.READY]
    log_text = server.log_path.read_text()
    assert "=== meshllm" in log_text and "fake llama-server -m" in log_text
    assert server.log_path == tmp_path / "logs" / "llama-fake.log"


async def test_supervisor_restarts_after_kill9(
    fake_binary: Path, fake_model: ModelFile, tmp_path: Path, procs: Procs
) -> None:
    states, on_state = recorder()
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=FAST, on_state=on_state)
    try:
        await server.start()
        await server.wait_ready(60)
        first, port = procs.track(server.pid), server.port
        os.kill(first.pid, signal.SIGKILL)
        await until(lambda: server.state != ModelState.READY)
        await server.wait_ready(60)
        second = procs.track(server.pid)
        assert second.pid != first.pid and not alive(first)
        assert server.restarts == 1
        assert server.port == port  # the same port again while it is free
        assert await health(server) == 200
    finally:
        await server.stop()
    # Restarting is "starting" again: "failed" is kept for a server given up on.
    assert states == [
        ModelState.STARTING,
        ModelState.READY,
        ModelState.STARTING,
        ModelState.READY,
    ]
    assert server.failure is None


async def test_supervisor_backs_off_when_start_fails(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    procs: Procs,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_COUNTER", str(tmp_path / "launches"))
    monkeypatch.setenv("FAKE_LLAMA_CRASHES", "2")  # one fewer than max_start_failures
    states, on_state = recorder()
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=FAST, on_state=on_state)
    try:
        await server.start()
        await server.wait_ready(60)
        procs.track(server.pid)
    finally:
        await server.stop()
    assert server.restarts == 2
    assert ModelState.FAILED not in states and states[-1] == ModelState.READY
    assert server.log_path.read_text().count("fake: crashing on start") == 2


async def test_supervisor_gives_up_after_repeated_start_failures(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_COUNTER", str(tmp_path / "launches"))
    monkeypatch.setenv("FAKE_LLAMA_CRASHES", "1000")
    states, on_state = recorder()
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=FAST, on_state=on_state)
    try:
        await server.start()
        with pytest.raises(ServingError, match="exit code 3 while loading, 3 starts in a row"):
            await server.wait_ready(60)  # fails at once with the cause, not after 60 s
        assert server.state == ModelState.FAILED and states[-1] == ModelState.FAILED
        assert server.failure is not None and "fake: crashing on start" in server.failure
        assert server.pid is None
        await asyncio.sleep(0.5)  # given up: no further launch
        assert (tmp_path / "launches").read_text() == "3"
    finally:
        await server.stop()


async def test_supervisor_retries_a_sigill_without_repack(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    procs: Procs,
) -> None:
    # ggml's AMX kernels die of SIGILL on some machines that report AMX (DESIGN.md §9).
    monkeypatch.setenv("FAKE_LLAMA_SIGNAL", "SIGILL")
    monkeypatch.setenv("FAKE_LLAMA_SPARED_BY", "--no-repack")
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=FAST)
    try:
        await server.start()
        await server.wait_ready(60)
        procs.track(server.pid)
        assert server.restarts == 1
        launches = launch_lines(server)
        assert "--no-repack" not in launches[0] and launches[1].endswith("--no-repack")
    finally:
        await server.stop()


async def test_supervisor_reports_sigill_when_nothing_helps(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SIGNAL", "SIGILL")
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=FAST)
    try:
        await server.start()
        with pytest.raises(ServingError, match="SIGILL while loading"):
            await server.wait_ready(60)
        assert server.failure is not None and "fake: dying of SIGILL" in server.failure
        launches = launch_lines(server)
        assert len(launches) == 3 and [line.count("--no-repack") for line in launches] == [0, 1, 1]
    finally:
        await server.stop()


async def test_supervisor_kills_server_that_stops_answering(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    procs: Procs,
) -> None:
    sick = tmp_path / "sick"
    monkeypatch.setenv("FAKE_LLAMA_SICK", str(sick))
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=FAST)
    try:
        await server.start()
        await server.wait_ready(60)
        first = procs.track(server.pid)
        sick.touch()
        await until(lambda: server.state != ModelState.READY)
        await until(lambda: not alive(first))
        sick.unlink()
        await server.wait_ready(60)
        procs.track(server.pid)
        assert server.restarts == 1
    finally:
        await server.stop()


async def test_supervisor_startup_timeout(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    procs: Procs,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_LOAD", "100000")  # loads forever
    progress: list[float] = []
    options = LlamaOptions(startup_timeout=1.5, backoff_initial=0.05)
    server = LlamaServer(
        fake_model,
        fake_binary,
        log_dir=tmp_path,
        options=options,
        on_progress=lambda _m, elapsed: progress.append(elapsed),
    )
    try:
        await server.start()
        first = procs.track(server.pid)
        await until(lambda: server.restarts >= 1)
        procs.track(server.pid)
        assert not alive(first)
        assert progress  # reported while loading
        with pytest.raises(ServingError, match="not ready"):
            await server.wait_ready(0.1)
    finally:
        await server.stop()


async def test_stop_escalates_to_sigkill(
    fake_binary: Path,
    fake_model: ModelFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    procs: Procs,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_IGNORE_TERM", "1")
    options = LlamaOptions(stop_grace=0.5)
    server = LlamaServer(fake_model, fake_binary, log_dir=tmp_path, options=options)
    await server.start()
    child = procs.track(server.pid)
    await server.wait_ready(60)
    await server.stop()
    assert not alive(child)


async def test_start_fails_without_binary(fake_model: ModelFile, tmp_path: Path) -> None:
    server = LlamaServer(fake_model, tmp_path / "no-such-llama-server", log_dir=tmp_path)
    with pytest.raises(ServingError, match="cannot run llama-server"):
        await server.start()
    await server.stop()


class Daemons:
    """Node-like Python processes that supervise llama-server, as a node does.

    The test process becomes a child subreaper (prctl(2)) while they run, so the
    llama-server orphaned by a killed daemon is reparented here and reaped, not
    left a zombie under a PID 1 that may never reap it.
    """

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.orphans: list[psutil.Process] = []
        _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def start(self, binary: Path, model: ModelFile, log_dir: Path) -> tuple[int, int]:
        """Start one; returns (daemon pid, llama-server pid) once it is ready."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-c", DAEMON, str(model.path), str(binary), str(log_dir)]
        daemon = subprocess.Popen([*argv, model.name], stdout=subprocess.PIPE, env=env, text=True)
        self.started.append(daemon)
        with daemon.stdout:
            line = daemon.stdout.readline()  # once ready (the daemon's own limit: 600 s)
        child = json.loads(line)["pid"]
        self.orphans.append(psutil.Process(child))
        return daemon.pid, child

    async def kill9(self, daemon_pid: int) -> None:
        """kill -9 a daemon and reap it."""
        (daemon,) = [d for d in self.started if d.pid == daemon_pid]
        daemon.send_signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.wait)

    def cleanup(self) -> None:
        for daemon in self.started:
            if daemon.poll() is None:
                daemon.kill()
            daemon.wait()
        for orphan in self.orphans:
            if alive(orphan):  # same process (psutil checks the start time), still running
                orphan.kill()
            with contextlib.suppress(ChildProcessError):  # reparented here: reap it
                os.waitpid(orphan.pid, 0)
        _prctl(PR_SET_CHILD_SUBREAPER, 0)


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    started = Daemons()
    yield started
    started.cleanup()


async def test_killed_daemon_takes_fake_server_along(
    fake_binary: Path, fake_model: ModelFile, tmp_path: Path, procs: Procs, daemons: Daemons
) -> None:
    daemon, pid = await asyncio.to_thread(daemons.start, fake_binary, fake_model, tmp_path)
    child = procs.track(pid)
    assert alive(child)

    await daemons.kill9(daemon)

    await until(lambda: not alive(child))


# -- end to end: the real llama-server on the default model -------------------------


@pytest.mark.e2e
async def test_real_llama_server_serves_chat(
    llama_server_bin: Path,
    llama_options: LlamaOptions,
    default_model: ModelFile,
    tmp_path: Path,
    procs: Procs,
) -> None:
    server = LlamaServer(default_model, llama_server_bin, log_dir=tmp_path, options=llama_options)
    try:
        started = time.monotonic()
        await server.start()
        procs.track(server.pid)
        await server.wait_ready(600)
        print(f"\ncold start to /health 200: {time.monotonic() - started:.2f} s")
        assert await health(server) == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(server.base_url + "/v1/models") as resp:
                models = await resp.json()
            assert [m["id"] for m in models["data"]] == [default_model.name]
            body = {
                "model": default_model.name,
                "messages": [{"role": "user", "content": "Say hello in one word."}],
                "max_tokens": 8,
            }
            async with session.post(server.base_url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                answer = await resp.json()
        assert answer["choices"][0]["message"]["content"].strip()
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        await server.stop()


@pytest.mark.e2e
async def test_real_llama_server_restarts_after_kill9(
    llama_server_bin: Path,
    llama_options: LlamaOptions,
    default_model: ModelFile,
    tmp_path: Path,
    procs: Procs,
) -> None:
    states, on_state = recorder()
    server = LlamaServer(
        default_model,
        llama_server_bin,
        log_dir=tmp_path,
        options=dataclasses.replace(FAST, extra_args=llama_options.extra_args),
        on_state=on_state,
    )
    try:
        await server.start()
        await server.wait_ready(600)
        first = procs.track(server.pid)
        os.kill(first.pid, signal.SIGKILL)
        await until(lambda: server.state != ModelState.READY)
        await server.wait_ready(600)
        second = procs.track(server.pid)
        assert second.pid != first.pid and not alive(first)
        assert await health(server) == 200
    finally:
        await server.stop()
    assert states[-3:] == [ModelState.READY, ModelState.STARTING, ModelState.READY]


@pytest.mark.e2e
async def test_real_llama_server_stop_leaves_no_process(
    llama_server_bin: Path,
    llama_options: LlamaOptions,
    default_model: ModelFile,
    tmp_path: Path,
    procs: Procs,
) -> None:
    server = LlamaServer(default_model, llama_server_bin, log_dir=tmp_path, options=llama_options)
    await server.start()
    child = procs.track(server.pid)
    await server.wait_ready(600)
    await server.stop()
    assert not alive(child)
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid == child.pid]


@pytest.mark.e2e
async def test_real_llama_server_dies_with_killed_daemon(
    llama_server_bin: Path,
    default_model: ModelFile,
    tmp_path: Path,
    procs: Procs,
    daemons: Daemons,
) -> None:
    daemon, pid = await asyncio.to_thread(daemons.start, llama_server_bin, default_model, tmp_path)
    child = procs.track(pid)
    assert alive(child) and child.name().startswith("llama-server")

    await daemons.kill9(daemon)

    await until(lambda: not alive(child))
