"""Run real ``meshllm`` daemons as subprocesses, for tests and benchmarks.

Each node gets its own state dir, OS-picked ports on 127.0.0.1 and short probe
timings; its output goes to ``<state_dir>/node.log``.  Every process started
here is ended by :meth:`NodeProcess.stop` or :class:`Cluster`'s exit, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from meshllm.cloud import KINDS
from meshllm.gossip import Link, QuicTransport
from meshllm.identity import Identity
from meshllm.join_token import JoinToken

READY_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def recording_member_link(
    token: str, identity: Identity | None = None
) -> AsyncIterator[tuple[Link, list[dict[str, Any]]]]:
    """A link to the node that printed ``token``, dialled as a bare mesh member (the
    mesh secret, no owner key), for tests that speak the real protocol as a hostile peer
    would.  Yields the link and the list its control frames are appended to as they
    arrive.  ``identity``: the member's key (default: a fresh ephemeral one), for a test
    that signs announcements as this member."""
    frames: list[dict[str, Any]] = []

    class Recorder:
        def link_up(self, link: Link) -> None: ...
        def link_down(self, link: Link) -> None: ...
        def stream_opened(self, link: Link, stream: Any, head: Any) -> None: ...

        def frame_received(self, link: Link, frame: Any) -> None:
            frames.append(frame)

    join = JoinToken.decode(token)
    transport = QuicTransport(identity or Identity.generate(), join.credentials, Recorder())  # type: ignore[arg-type]
    await transport.start("127.0.0.1", 0)
    try:
        yield await transport.dial(join.addrs[0]), frames
    finally:
        await transport.close()


@contextlib.asynccontextmanager
async def member_link(token: str) -> AsyncIterator[Link]:
    """:func:`recording_member_link` for a test that ignores what the node says."""
    async with recording_member_link(token) as (link, _):
        yield link


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _without_provider_keys(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without cloud providers' keys and URLs: a test node holds only the keys
    its test gives it, never the developer's own."""
    names = {name for kind in KINDS.values() for name in (*kind.key_vars, kind.base_url_var)}
    return {k: v for k, v in env.items() if k not in names}


class NodeProcess:
    """One ``meshllm`` daemon (holding no cloud provider key unless ``env`` gives it)."""

    def __init__(self, state_dir: Path, args: Iterable[str], env: dict[str, str] | None = None):
        self.state_dir = state_dir
        self.args = list(args)
        self.env = {**_without_provider_keys(os.environ), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""
        self.quic_addr = ""
        self.http_port = 0
        self.token = ""
        self._log_start = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir / "node.log"

    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT) -> NodeProcess:
        """Launch the daemon; with ``wait``, return once it printed ``ready``."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env,
            )  # fmt: skip
        if wait:
            self.wait_ready(timeout)
        return self

    def argv(self) -> list[str]:
        """The daemon's command line."""
        return [sys.executable, "-m", "meshllm", "--state-dir", str(self.state_dir), *self.args]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait for the banner, and parse node id, addresses and token from it."""

        def banner() -> dict[str, str] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            lines = self.log()[self._log_start :].splitlines()
            if "ready" not in lines:
                return None
            fields = {}
            for line in lines:
                key, _, value = line.partition(" ")
                fields.setdefault(key, value.strip())
            return fields

        fields = wait_for(banner, timeout, what=f"node in {self.state_dir} to be ready")
        self.node_id = fields["node"].removeprefix("id").strip()
        self.quic_addr = fields["quic"]
        self.http_port = int(fields["http"].rsplit(":", 1)[1])
        self.token = fields["token"]

    def log(self) -> str:
        """Everything the daemon printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET a JSON route of the node's HTTP API."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")

    def wait_serving(self, model: str, timeout: float) -> None:
        """Wait until this node serves ``model``; fail at once, with the node's cause,
        when it gives up on it (or the daemon exits), instead of waiting out ``timeout``."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"node exited while starting {model}:\n{self.log()[-4000:]}")
            status = self.status()
            if (cause := status.get("failures", {}).get(model)) is not None:
                raise RuntimeError(f"node {self.node_id} gave up on {model}: {cause}")
            return status["serving"].get(model) == "ready"

        wait_for(ready, timeout, interval=0.2, what=f"{self.state_dir.name} serving {model}")

    def peer_ids(self) -> set[str]:
        """Node ids this node lists as live peers."""
        return {p["node_id"] for p in self.status()["peers"]}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no leave, no cleanup; the mesh must notice by itself."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM: the node leaves cleanly; returns its exit code."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    stop = terminate


class BackendProcess:
    """A fake backend as a process (``meshllm.testing.fake_backend``, OpenAI-shaped, or
    ``module="meshllm.testing.fake_ollama"``), on a port the OS picks, or ``port``."""

    def __init__(
        self,
        log_path: Path,
        models: Iterable[str],
        args: Iterable[str] = (),
        *,
        module: str = "meshllm.testing.fake_backend",
        port: int = 0,
    ) -> None:
        self.log_path = log_path
        self.models = list(models)
        self.args = list(args)
        self.module = module
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def model(self) -> str:
        return self.models[0]

    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT) -> BackendProcess:
        """Launch it; with ``wait``, return once it listens (``url`` set)."""
        argv = [sys.executable, "-m", self.module, "--port", str(self.port)]
        for model in self.models:
            argv += ["--model", model]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*argv, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own group: a signal to the test spares it
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait for ``ready`` and read the URL it printed."""

        def listening() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake backend exited:\n{self.log_path.read_text()}")
            lines = self.log_path.read_text().splitlines()
            if "ready" not in lines:
                return None
            return next(line.split()[-1] for line in lines if line.startswith("listening "))

        self.url = wait_for(listening, timeout, what=f"fake backend for {self.models}")
        self.port = int(self.url.rsplit(":", 1)[1].rstrip("/"))  # a restart keeps it

    def kill(self) -> None:
        """End it by pid."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)


class Cluster:
    """Several nodes of one mesh; ends them all on exit."""

    def __init__(self, root: Path, base_args: Iterable[str] = ()) -> None:
        self.root = root
        self.base_args = [
            "--bind", "127.0.0.1:0", "--port", "0",
            "--probe-interval", "1", "--probe-timeout", "1", "--gossip-interval", "1",
            "--no-install", "--no-mdns", "--no-auto-endpoints", *base_args,
        ]  # fmt: skip
        self.nodes: list[NodeProcess] = []

    def add(
        self,
        *args: str,
        join: bool = True,
        wait: bool = True,
        name: str = "",
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        """Start a node; it joins the first node's mesh unless ``join`` is false.
        ``env`` adds to its environment (a cloud provider's key, say)."""
        extra = list(args)
        if join and self.nodes and "--join" not in extra:
            extra += ["--join", self.nodes[0].token]
        name = name or f"node{len(self.nodes)}"
        if "--models-dir" not in extra:  # never the user's ~/.models
            extra += ["--models-dir", str(self.root / name / "models")]
        node = NodeProcess(self.root / name, [*self.base_args, *extra], env)
        self.nodes.append(node)
        return node.start(wait=wait)

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive()]

    def converged(self, nodes: list[NodeProcess] | None = None) -> bool:
        """Whether every given node lists exactly the others as peers."""
        nodes = nodes if nodes is not None else self.live()
        ids = {n.node_id for n in nodes}
        return all(n.peer_ids() == ids - {n.node_id} for n in nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.terminate(timeout=10)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
