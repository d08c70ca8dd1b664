#!/usr/bin/env python3
"""Model pool benchmark: the real llama-server and the default model, over a real 2-node mesh
on 127.0.0.1.

A model other than the default one is the default model's GGUF hard-linked under another name
(as tests/test_e2e_pool.py does); every run takes names of its own (``cold-1``, ``pin-1``,
...), so a cold model is one no llama-server has loaded yet.  Prints, per run and as median,
min and max in seconds:

- cold start to first token: a streamed chat, sent to B, for a model on A's disk that is
  loaded nowhere: from sending to the first ``data:`` event with content; of that, how long
  the request was held (its first byte to that event: the ``: loading`` comments' time), and
  how many ``: loading`` comments came;
- warm time to first token: the same request again, the model hot;
- kill -9 to hot elsewhere: A pins a model both disks hold, B serves another; from SIGKILL of
  A until B's ``/api/status`` shows the pinned model ``ready``, split into detection (until A
  is gone from B's peers) and load (the rest).

The daemons run with ``--bind 127.0.0.1:0 --port 0 --probe-interval 0.5 --probe-timeout 0.5
--no-install --llama-server BIN``.  B's status is read every ``--poll`` seconds.

    python scripts/bench_pool.py                # 3 runs
    python scripts/bench_pool.py --runs 5 --keep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshllm.serving import find_llama_server
from meshllm.serving.install import DEFAULT_MODEL, install_default_model
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for
from meshllm.testing.pool import (
    chat_stream_request,
    linked_models_dir,
    llama_servers_under,
    pool_state,
)
from meshllm.testing.provenance import commit_label

SLOW = 300.0  # a load takes seconds; a slow, shared machine may take much longer
FAST_MESH = ["--probe-interval", "0.5", "--probe-timeout", "0.5"]
HOME_MODEL = Path.home() / ".models" / f"{DEFAULT_MODEL}.gguf"


def out(label: str, value: str) -> None:
    print(f"{label:<30}{value}", flush=True)


# ---------------------------------------------------------------------------- set-up


def default_model(root: Path) -> Path:
    """The default GGUF: ~/.models' copy (as tests/conftest.py), else installed into ``root``."""
    if HOME_MODEL.is_file():
        return HOME_MODEL
    return install_default_model(root / "source")


def end_strays(root: Path) -> int:
    """Kill, by pid, llama-servers of this bench's nodes that outlived them; how many."""
    strays = llama_servers_under(root)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(strays, timeout=10)
    return len(strays)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Stream:
    """One streamed chat, in seconds from sending it."""

    first_byte: float  # the first line of the body (a ": loading" comment, or data)
    first_token: float  # the first data event with content
    loading: int  # ": loading" comments

    @property
    def held(self) -> float:
        return self.first_token - self.first_byte


def timed_stream(node: NodeProcess, model: str, max_tokens: int = 8) -> Stream:
    """A streamed chat read line by line, raw SSE (comments included), read to its end."""
    req = chat_stream_request(node, model, max_tokens)
    first_byte = first_token = first_data = None
    loading = 0
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=SLOW) as resp:
        for raw in resp:
            now = time.perf_counter() - t0
            line = raw.decode(errors="replace").rstrip("\r\n")
            if not line:
                continue
            if first_byte is None:
                first_byte = now
            if line.startswith(": loading"):
                loading += 1
            elif line.startswith("data: {") and first_token is None:
                first_data = first_data if first_data is not None else now
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"{model}: error event {event['error']}")
                choices = event.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first_token = now
    if first_byte is None or first_data is None:
        raise RuntimeError(f"{model}: the stream had no data event")
    # A reply of no text at all (never seen with this prompt): its first event stands in.
    return Stream(first_byte, first_token if first_token is not None else first_data, loading)


@dataclass
class Failover:
    """From SIGKILL of the host of a pinned model until another node serves it, seconds."""

    detected: float  # the host gone from the other node's peers
    ready: float  # the model "ready" in the other node's serving

    @property
    def load(self) -> float:
        return self.ready - self.detected


def watch_failover(b: NodeProcess, a_id: str, model: str, t0: float, poll: float) -> Failover:
    """Read B's status every ``poll`` s until it serves ``model``; seconds from ``t0``.  Each
    moment is the arrival of the first answer that showed it (an upper bound, late by at
    most a poll and a round trip)."""
    detected = ready = None
    deadline = t0 + SLOW
    while ready is None or detected is None:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"B did not serve {model} within {SLOW:.0f} s of the kill")
        if not b.alive():
            raise RuntimeError(f"B exited:\n{b.log()[-4000:]}")
        try:
            status = b.status()
        except OSError:
            time.sleep(poll)
            continue
        now = time.perf_counter() - t0
        if detected is None and all(p["node_id"] != a_id for p in status["peers"]):
            detected = now
        if ready is None and status["serving"].get(model) == "ready":
            ready = now
        if (cause := status.get("failures", {}).get(model)) is not None:
            raise RuntimeError(f"B gave up on {model}: {cause}")
        time.sleep(poll)
    assert detected is not None and ready is not None
    return Failover(detected, ready)


# ---------------------------------------------------------------------------- the runs


def cold_and_warm(
    root: Path, base: Sequence[str], source: Path, runs: int
) -> list[tuple[Stream, Stream]]:
    """One mesh: A has the default model and ``cold-1`` .. ``cold-N``; B only the default
    model.  Run i asks B for ``cold-i`` twice: cold, then warm."""
    names = [f"cold-{i}" for i in range(1, runs + 1)]
    results = []
    with Cluster(root, base) as mesh:
        a_dir = linked_models_dir(root / "a-models", source, DEFAULT_MODEL, *names)
        b_dir = linked_models_dir(root / "b-models", source, DEFAULT_MODEL)
        a = mesh.add("--model", DEFAULT_MODEL, "--models-dir", str(a_dir), name="a")
        b = mesh.add("--model", DEFAULT_MODEL, "--models-dir", str(b_dir), name="b")
        a.wait_serving(DEFAULT_MODEL, SLOW)
        b.wait_serving(DEFAULT_MODEL, SLOW)
        for name in names:
            wait_for(
                lambda n=name: pool_state(b, a, n) == "cold", 60, what=f"B to see A's {name} cold"
            )
        for name in names:
            cold = timed_stream(b, name)
            warm = timed_stream(b, name)
            results.append((cold, warm))
            print(
                f"  {name}: cold first token {cold.first_token:.2f} s (held {cold.held:.2f} s, "
                f"{cold.loading} ': loading'), warm {warm.first_token:.3f} s",
                flush=True,
            )
    return results


def kill_to_hot(
    root: Path, base: Sequence[str], source: Path, run: int, poll: float
) -> tuple[Failover, int]:
    """A fresh mesh: A pins ``pin-<run>``; B, with it on disk too, serves the default model.
    Kill -9 A and time B taking the pinned model over.  Also: A's llama-servers that
    outlived it (ended here)."""
    name = f"pin-{run}"
    with Cluster(root, base) as mesh:
        a_dir = linked_models_dir(root / "a-models", source, name)
        b_dir = linked_models_dir(root / "b-models", source, DEFAULT_MODEL, name)
        a = mesh.add("--pin", name, "--models-dir", str(a_dir), name="a")
        a.wait_serving(name, SLOW)
        b = mesh.add("--model", DEFAULT_MODEL, "--models-dir", str(b_dir), name="b")
        b.wait_serving(DEFAULT_MODEL, SLOW)
        wait_for(lambda: pool_state(b, a, name) == "hot", 60, what=f"B to see A's {name} hot")
        time.sleep(1.0)  # let the probes settle into their rhythm
        t0 = time.perf_counter()
        a.kill()  # SIGKILL, and reaps it
        failover = watch_failover(b, a.node_id, name, t0, poll)
        # A's llama-server (its --model is under a-models) should follow its node.
        time.sleep(0.5)
        orphans = len(llama_servers_under(a_dir))
    strays = end_strays(root)
    print(
        f"  {name}: detected {failover.detected:.2f} s, ready {failover.ready:.2f} s "
        f"after the kill",
        flush=True,
    )
    return failover, max(orphans, strays)


# ---------------------------------------------------------------------------- printing


def summary(values: Sequence[float]) -> str:
    return (
        f"median {statistics.median(values):.3f} s, min {min(values):.3f} s, "
        f"max {max(values):.3f} s  (n={len(values)})"
    )


def table(cw: list[tuple[Stream, Stream]], kills: list[Failover]) -> None:
    head = (
        f"{'run':>4}{'cold TTFT':>11}{'held':>8}{'loading':>9}{'warm TTFT':>11}"
        f"{'kill->hot':>11}{'detect':>9}{'load':>8}"
    )
    print(head)
    print("-" * len(head))
    for i, ((cold, warm), kill) in enumerate(zip(cw, kills, strict=True), 1):
        print(
            f"{i:>4}{cold.first_token:>11.3f}{cold.held:>8.3f}{cold.loading:>9}"
            f"{warm.first_token:>11.3f}{kill.ready:>11.3f}{kill.detected:>9.3f}{kill.load:>8.3f}"
        )
    print("(seconds; loading: ': loading' comments the cold stream got)")


def run(args: argparse.Namespace, root: Path) -> None:
    binary = Path(args.llama_server) if args.llama_server else find_llama_server(None)
    source = default_model(root)
    base = [*FAST_MESH, "--llama-server", str(binary)]
    out("meshllm", f"commit {commit_label()}")
    out("llama-server", str(binary))
    out("model", f"{source} ({source.stat().st_size / 1e6:.0f} MB), hard-linked per name")
    out("mesh", "2 nodes on 127.0.0.1, probe interval 0.5 s, timeout 0.5 s")
    out("load before start", f"{_load()} ({os.cpu_count()} cores)")

    print("\ncold and warm (one mesh; A has cold-i on disk, B is asked):", flush=True)
    cw = cold_and_warm(root / "cold", base, source, args.runs)
    print("\nkill -9 to hot elsewhere (a fresh mesh per run):", flush=True)
    kills, orphans = [], 0
    for i in range(1, args.runs + 1):
        kill, stray = kill_to_hot(root / f"kill-{i}", base, source, i, args.poll)
        kills.append(kill)
        orphans += stray
    print()
    table(cw, kills)
    print()
    out("cold start to first token", summary([c.first_token for c, _ in cw]))
    out("  held (': loading' sent)", summary([c.held for c, _ in cw]))
    loading = [c.loading for c, _ in cw]
    out(
        "  ': loading' comments",
        f"median {statistics.median(loading):g}, min {min(loading)}, max {max(loading)}",
    )
    out("warm time to first token", summary([w.first_token for _, w in cw]))
    out("kill -9 to hot elsewhere", summary([k.ready for k in kills]))
    out("  detection", summary([k.detected for k in kills]))
    out("  load", summary([k.load for k in kills]))
    if orphans:
        out("stray llama-servers", f"{orphans} outlived their node (ended by pid)")
    out("load after", _load())


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs of each figure (default 3)")
    p.add_argument(
        "--poll", type=float, default=0.02, help="seconds between B's status reads (0.02)"
    )
    p.add_argument("--llama-server", help="the binary (default: as meshllm finds it)")
    p.add_argument("--keep", action="store_true", help="keep the nodes' state dirs and logs")
    args = p.parse_args()
    if args.runs < 1:
        p.error("--runs: at least 1")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    root = Path(tempfile.mkdtemp(prefix="bench_pool-"))
    try:
        run(args, root)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        # Cluster's exit ended the nodes; a llama-server that outlived its node goes too.
        end_strays(root)
        if args.keep:
            print(f"logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
