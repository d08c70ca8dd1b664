"""Added latency and throughput of the meshllm proxy, against a direct backend and LiteLLM.

Paths, all on 127.0.0.1, all to one fast fake backend (``meshllm.testing.fake_backend``):

    direct    load generator -> backend
    local     -> meshllm node fronting the backend (``--endpoint``) -> backend
    keyed     the same, on a node with an API key: each request's key checked and counted
              against its (very high) rate limits
    one hop   -> meshllm ``--client`` node -> QUIC tunnel -> the serving node -> backend
    litellm   -> LiteLLM proxy (``litellm --config``, model ``openai/...`` with ``api_base``)

Each is measured non-streaming (latency of the whole answer) and streaming (time to
the first body byte, and SSE events per second), at concurrency 1 and 100.  Added
latency is the path's latency minus the direct path's at the same concurrency and
percentile; keyed minus local is what key checks and limits add (every node also
records every request in its history and metrics: ``scripts/bench_records.py``'s
in-process figures are printed at the end, with how many rows each node's history
wrote and dropped under this load).  LiteLLM is optional: if it cannot be imported or
started, that is printed and the rest still runs (``pip install 'litellm[proxy]'``, the
``bench`` extra).

    .venv/bin/python scripts/bench_proxy.py [--requests-c1 300] [--requests-c100 2000]
                                            [--no-litellm | --litellm-cmd PATH]

``litellm[proxy]`` pins ``openai<3`` and ``rich==13.9.4``, which clash with the test extra
and with textual: better installed in a virtualenv of its own, passed with ``--litellm-cmd``.

Every process started here is ended by pid on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from meshllm.testing.cluster import BackendProcess, NodeProcess, wait_for

MODEL = "bench-model"
MASTER_KEY = "sk-meshllm-bench"
STREAM_CHUNKS = 16  # SSE content events per streamed answer (plus the finish event and [DONE])
PROMPT = "the quick brown fox jumps over the lazy dog"


# --- processes ---------------------------------------------------------------------------


class Procs:
    """Subprocesses we started; :meth:`stop_all` ends each by pid."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.nodes: list[NodeProcess] = []

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,  # its own group: its workers die with it
            )
        self.popens.append(proc)
        return proc

    def stop_all(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.terminate(timeout=10)
        for proc in self.popens:
            if proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the group we created for it
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_backend(procs: Procs, tmp: Path) -> str:
    backend = BackendProcess(tmp / "backend.log", [MODEL], ["--chunks", str(STREAM_CHUNKS)])
    backend.start(wait=False)
    assert backend.proc is not None
    procs.popens.append(backend.proc)
    backend.wait_ready(30)
    return backend.url


def start_mesh(
    procs: Procs, tmp: Path, backend_url: str
) -> tuple[NodeProcess, NodeProcess, NodeProcess, str]:
    """A node fronting the backend, a ``--client`` node joined to it, and a node of a mesh
    of its own with an API key (and that key)."""
    empty = tmp / "no-models"
    empty.mkdir()
    common = ["--bind", "127.0.0.1:0", "--port", "0", "--no-install", "--models-dir", str(empty),
              "--no-mdns", "--no-auto-endpoints"]  # fmt: skip
    server = NodeProcess(tmp / "server", [*common, "--endpoint", backend_url])
    procs.nodes.append(server)
    server.start()
    client = NodeProcess(tmp / "client", [*common, "--client", "--join", server.token])
    procs.nodes.append(client)
    client.start()
    keyed = NodeProcess(tmp / "keyed", [*common, "--endpoint", backend_url])
    procs.nodes.append(keyed)
    keyed.start()
    made = subprocess.run(
        [sys.executable, "-m", "meshllm", "keys", "create", "--rpm", "1000000000", "--tpm",
         "1000000000", "--port", str(keyed.http_port), "--state-dir", str(keyed.state_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    def warm(node: NodeProcess) -> bool:
        return any(
            m["id"] == MODEL and m["meshllm"]["warm"] for m in node.get("/v1/models")["data"]
        )

    wait_for(lambda: warm(server) and warm(client) and warm(keyed), 60, what="the model to be warm")
    return server, client, keyed, made.stdout.strip()


def start_litellm(
    procs: Procs, tmp: Path, backend_url: str, exe: str | None = None
) -> tuple[str, int]:
    """LiteLLM's proxy in front of the backend: its base URL and pid.  Raises RuntimeError.

    ``exe``: the ``litellm`` command; default: beside this Python, else on ``PATH``.
    """
    exe = exe or shutil.which("litellm", path=str(Path(sys.executable).parent))
    exe = exe or shutil.which("litellm")
    if exe is None:
        raise RuntimeError("the `litellm` command is not installed (pip install 'litellm[proxy]')")
    config = tmp / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {backend_url}/v1
      api_key: unused
general_settings:
  master_key: {MASTER_KEY}
"""
    )
    port = free_port()
    log = tmp / "litellm.log"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": MASTER_KEY}
    argv = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    proc = procs.spawn(argv, log, env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"litellm exited with {proc.returncode}:\n{tail}")
        with urllib.request.urlopen(url + "/health/liveliness", timeout=2) as resp:
            return resp.status == 200

    wait_for(up, 120, interval=0.5, what="litellm to answer")
    return url, proc.pid


# --- load -------------------------------------------------------------------------------------


@dataclass
class Cell:
    """The measurements of one (path, mode, concurrency)."""

    latencies: list[float] = field(default_factory=list)  # whole answer, seconds
    ttfb: list[float] = field(default_factory=list)  # first body byte, seconds (streaming)
    events: int = 0  # SSE data events received (streaming)
    cpu: float = 0.0  # CPU seconds the proxy processes of the path spent on the measured run
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    @property
    def cpu_per_request_us(self) -> float:
        return self.cpu / len(self.latencies) * 1e6 if self.latencies else float("nan")

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall if self.wall else 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of these processes and their children (LiteLLM's workers)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, in milliseconds; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def one_request(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], stream: bool, cell: Cell
) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    t0 = time.perf_counter()
    first = 0.0
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            if stream:
                data = b""
                async for chunk in resp.content.iter_any():
                    if not first:
                        first = time.perf_counter()
                    data += chunk
            else:
                data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        if stream:
            n = data.count(b"data: ")
            if not data.rstrip().endswith(b"data: [DONE]") or n < 3:
                raise RuntimeError(f"bad stream: {data[-200:]!r}")
            cell.events += n
        else:
            content = json.loads(data)["choices"][0]["message"]["content"]
            if PROMPT not in content:
                raise RuntimeError(f"bad answer: {content!r}")
    except Exception as exc:
        cell.errors += 1
        cell.first_error = cell.first_error or f"{type(exc).__name__}: {exc}"[:300]
        return
    t1 = time.perf_counter()
    cell.latencies.append(t1 - t0)
    if stream:
        cell.ttfb.append(first - t0)


async def run_load(
    session: aiohttp.ClientSession,
    base_url: str,
    headers: dict[str, str],
    *,
    stream: bool,
    concurrency: int,
    requests: int,
    pids: list[int],
) -> Cell:
    url = base_url + "/v1/chat/completions"
    warm = Cell()
    await _drive(session, url, headers, stream, concurrency, max(2 * concurrency, 50), warm)
    cell = Cell()
    cpu0 = cpu_seconds(pids)
    t0 = time.perf_counter()
    await _drive(session, url, headers, stream, concurrency, requests, cell)
    cell.wall = time.perf_counter() - t0
    cell.cpu = cpu_seconds(pids) - cpu0
    return cell


async def _drive(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    stream: bool,
    concurrency: int,
    requests: int,
    cell: Cell,
) -> None:
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one_request(session, url, headers, stream, cell)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- report -----------------------------------------------------------------------------------


def fmt(value: float, width: int = 8, digits: int = 2) -> str:
    if value != value:  # nan
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def print_tables(results: dict[tuple[str, bool, int], Cell], paths: list[str]) -> None:
    print(
        "\nLatencies in ms.  +p50/+p99: added over direct at the same concurrency and percentile"
        " (streaming: of the time to first byte).\ncpu/req: CPU µs per request in the path's"
        " proxy processes (the meshllm node(s), or LiteLLM and its workers); the backend and"
        " the load generator are not counted."
    )
    for stream in (False, True):
        for conc in sorted({c for (_, _, c) in results}):
            direct = results.get(("direct", stream, conc))
            if stream:
                title = f"streaming ({STREAM_CHUNKS} content events), concurrency {conc}"
                head = (
                    f"{'path':<9}{'ttfb p50':>10}{'ttfb p99':>10}{'+p50':>9}{'+p99':>9}"
                    f"{'total p50':>11}{'req/s':>9}{'events/s':>10}{'cpu/req':>9}{'errors':>8}"
                )
            else:
                title = f"non-streaming, concurrency {conc}"
                head = (
                    f"{'path':<9}{'p50':>10}{'p99':>10}{'+p50':>9}{'+p99':>9}"
                    f"{'req/s':>9}{'cpu/req':>9}{'errors':>8}"
                )
            print(f"\n{title}")
            print(head)
            for path in paths:
                cell = results.get((path, stream, conc))
                if cell is None:
                    continue
                series = cell.ttfb if stream else cell.latencies
                base = (direct.ttfb if stream else direct.latencies) if direct else []
                p50, p99 = pct(series, 0.5), pct(series, 0.99)
                add50 = p50 - pct(base, 0.5) if path != "direct" else float("nan")
                add99 = p99 - pct(base, 0.99) if path != "direct" else float("nan")
                line = f"{path:<9}{fmt(p50, 10)}{fmt(p99, 10)}{fmt(add50, 9)}{fmt(add99, 9)}"
                if stream:
                    line += f"{fmt(pct(cell.latencies, 0.5), 11)}{fmt(cell.rps, 9, 0)}"
                    line += f"{fmt(cell.events_per_s, 10, 0)}"
                else:
                    line += f"{fmt(cell.rps, 9, 0)}"
                cpu = cell.cpu_per_request_us if path != "direct" else float("nan")
                line += f"{fmt(cpu, 9, 0)}{cell.errors:>8}"
                print(line)
                if cell.first_error:
                    print(f"{'':<9}first error: {cell.first_error}")


def _series(cell: Cell, stream: bool) -> list[float]:
    """What added latency is taken of: time to first byte when streaming, else the whole."""
    return cell.ttfb if stream else cell.latencies


def added(cells: dict[str, Cell], path: str, stream: bool, q: float) -> float:
    """``path``'s latency over direct's at quantile ``q``, in ms."""
    return pct(_series(cells[path], stream), q) - pct(_series(cells["direct"], stream), q)


def print_ratios(results: dict[tuple[str, bool, int], Cell]) -> None:
    if not any(path == "litellm" for (path, _, _) in results):
        return
    print(
        "\nLiteLLM overhead / meshllm overhead (added latency, and proxy CPU per request;"
        " higher favours meshllm)"
    )
    print(
        f"{'mode':<22}{'vs local p50':>13}{'vs local p99':>13}{'vs hop p50':>12}"
        f"{'vs hop p99':>12}{'cpu vs local':>13}{'cpu vs hop':>12}"
    )
    for stream in (False, True):
        for conc in sorted({c for (_, _, c) in results}):
            found = {
                p: results.get((p, stream, conc)) for p in ("direct", "local", "hop", "litellm")
            }
            cells = {p: c for p, c in found.items() if c is not None}
            if len(cells) < len(found):
                continue
            line = f"{('stream ttfb' if stream else 'non-stream') + f', c={conc}':<22}"
            for path, q, width in (("local", 0.5, 13), ("local", 0.99, 13), ("hop", 0.5, 12),
                                   ("hop", 0.99, 12)):  # fmt: skip
                mine, theirs = added(cells, path, stream, q), added(cells, "litellm", stream, q)
                if mine <= 0.005:  # within the noise: say so rather than divide by about 0
                    line += "(mesh~0)".rjust(width)
                else:
                    line += f"{theirs / mine:.1f}x".rjust(width)
            for path, width in (("local", 13), ("hop", 12)):
                mine, theirs = cells[path].cpu, cells["litellm"].cpu
                line += (f"{theirs / mine:.1f}x" if mine > 0 else "-").rjust(width)
            print(line)


async def key_ab(url: str, key: str, admin_token: str, rounds: int, per_round: int):
    """Median latency (ms) of requests one at a time with the API key, and with the admin
    token (which skips the key check and limits), interleaved round by round on one node so
    that the machine's drift falls on both alike."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    medians: dict[str, list[float]] = {"key": [], "admin token": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for name, token in (("key", key), ("admin token", admin_token)):
                times = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    async with session.post(
                        url + "/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp:  # fmt: skip
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"{name}: HTTP {resp.status}")
                    times.append(time.perf_counter() - t0)
                medians[name].append(pct(times, 0.5))
    return {name: statistics.median(values) for name, values in medians.items()}


def print_records(nodes: dict[str, NodeProcess], key: str, run: Any) -> None:
    """What keys and records cost: key against admin token on one node, each node's
    history under the load above, and the in-process figures of scripts/bench_records.py."""
    keyed = nodes["keyed"]
    admin_token = (keyed.state_dir / "admin_token").read_text().strip()
    ab = run(key_ab(keyed.url, key, admin_token, rounds=10, per_round=200))
    print(
        "\nkeys and limits, end to end (non-streaming, one at a time, median of 10 interleaved"
        f" rounds of 200): with the key {ab['key']:.3f} ms, with the admin token (no key"
        f" check) {ab['admin token']:.3f} ms: {(ab['key'] - ab['admin token']) * 1000:+.0f} µs"
    )
    print("history under the load above (every request recorded; rows written, dropped):")
    for name, node in nodes.items():
        text = urllib.request.urlopen(node.url + "/metrics", timeout=10).read().decode()
        figures = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("meshllm_history_rows_") and " " in line
        }
        written = figures.get("meshllm_history_rows_written_total", 0)
        dropped = figures.get("meshllm_history_rows_dropped_total", 0)
        queued = figures.get("meshllm_history_rows_queued", 0)
        print(f"  {name:<6} written {written:,.0f}  dropped {dropped:.0f}  queued {queued:.0f}")
    import bench_records

    bench_records.print_figures(bench_records.measure(20000))


# --- main -------------------------------------------------------------------------------------


async def bench(
    urls: dict[str, str],
    keys: dict[str, str],
    pids: dict[str, list[int]],
    concurrencies: list[int],
    requests: dict[int, int],
) -> dict[tuple[str, bool, int], Cell]:
    results: dict[tuple[str, bool, int], Cell] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for conc in concurrencies:
            for stream in (False, True):
                for path, base in urls.items():
                    key = keys.get(path)
                    headers = {"Authorization": f"Bearer {key}"} if key else {}
                    cell = await run_load(
                        session, base, headers,
                        stream=stream, concurrency=conc, requests=requests[conc],
                        pids=pids.get(path, []),
                    )  # fmt: skip
                    results[(path, stream, conc)] = cell
                    kind = "stream" if stream else "json"
                    print(
                        f"  {path:<8} {kind:<6} c={conc:<4} {len(cell.latencies)} ok, "
                        f"{cell.errors} errors, {cell.wall:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-c1", type=int, default=300, help="requests per cell at c=1")
    parser.add_argument("--requests-c100", type=int, default=2000, help="per cell at c=100")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    parser.add_argument(
        "--litellm-cmd", help="the `litellm` executable (e.g. from its own virtualenv)"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="asyncio loop for the generator")
    args = parser.parse_args()

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    try:
        backend = start_backend(procs, tmp)
        server, client, keyed, key = start_mesh(procs, tmp, backend)
        urls = {"direct": backend, "local": server.url, "keyed": keyed.url, "hop": client.url}
        keys = {"keyed": key, "litellm": MASTER_KEY}
        pids = {"local": [server.pid], "keyed": [keyed.pid], "hop": [server.pid, client.pid]}
        if args.no_litellm:
            print("litellm: skipped (--no-litellm)")
        else:
            try:
                urls["litellm"], litellm_pid = start_litellm(procs, tmp, backend, args.litellm_cmd)
                pids["litellm"] = [litellm_pid]
            except (RuntimeError, TimeoutError, OSError) as exc:
                print(f"litellm: not measured: {exc}")
        print(
            f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
            f"python {sys.version.split()[0]}; requests per cell: "
            f"{args.requests_c1} at c=1, {args.requests_c100} at c=100 (after a warm-up)"
        )
        run: Any = asyncio.run
        if not args.no_uvloop:
            with contextlib.suppress(ImportError):
                import uvloop

                run = uvloop.run
        requests = {1: args.requests_c1, 100: args.requests_c100}
        results = run(bench(urls, keys, pids, [1, 100], requests))
        print_tables(results, list(urls))
        print_ratios(results)
        print_records({"local": server, "keyed": keyed, "hop": client}, key, run)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
