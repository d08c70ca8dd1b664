#!/usr/bin/env python3
"""Gossip benchmark: N members on 127.0.0.1 as real processes: ``meshllm`` daemons, or with
``--serf`` HashiCorp Serf agents (for comparison, at the same probe timings).

The members start one after another; each joins the first and is ready before the next
starts.  Then it prints:

- convergence: from the moment the last member is ready until every member lists every other;
- kill -9: from SIGKILL of one member until every survivor dropped it;
- leave: from SIGTERM of another (a graceful leave) until every other member dropped it;
- memory per member: RSS median and max, USS and PSS, anonymous vs file-backed pages, and
  the members' CPU while idle after convergence (probes and gossip, nobody polling);
- the timings used, and the targets (meshllm).

How it measures: it asks each member for its own view, over one open connection per member
(meshllm: ``GET /api/status`` over keep-alive HTTP; Serf: the agent's RPC ``members`` command,
what ``serf members`` sends, so no coalescing of events is in the way), and asks only the
members that have not seen the change yet, one round every ``--poll`` seconds.  A member saw
the change between its last answer without it and its first answer with it; the figure
printed is the latest of those first answers (an upper bound) and the line shows the bracket
the true moment lies in.  While no member has seen a kill or a leave yet, it asks one member
at a time, in turn, every ``--scout`` seconds, not all: an ``/api/status`` costs a 20-node
daemon milliseconds of CPU, and 20 daemons on 2 cores are slowed by a poller that is too
eager.  The poller's answers and CPU, and the members' CPU meanwhile, are printed with the
figures.  With ``--logs`` (meshllm) the daemons run with ``-v`` and kill and leave are also
timed by their own millisecond-stamped "peer <id> dead|left" log lines, which costs them
nothing.

To bench a commit rather than the working tree (say, while others edit it), export it and
run from there: ``git archive HEAD meshllm | tar -x -C /tmp/head && cd /tmp/head &&
PYTHONPATH=/tmp/head python /path/to/scripts/bench_gossip.py`` (a file COMMIT there, holding
the hash, is printed as the commit).

    python scripts/bench_gossip.py                   # 20 meshllm daemons, memberlist LAN timings
    python scripts/bench_gossip.py --serf            # 20 Serf agents, -profile=lan
    python scripts/bench_gossip.py --nodes 10 --probe-interval 15 --probe-timeout 5 \\
        --gossip-interval 5 --reconnect-interval 2   # unknown flags go to every daemon
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import psutil

# HashiCorp memberlist's timing profiles (config.go, DefaultLANConfig / DefaultLocalConfig /
# DefaultWANConfig; the same in memberlist 0.2.2, which Debian's serf 0.9.4 is built with).
# Serf's agent takes only ``-profile``: no probe setting of its own in this version.
PROFILES: dict[str, dict[str, float]] = {
    #        probe interval, probe timeout, gossip interval (s); suspicion multiplier
    "lan": dict(probe_interval=1.0, probe_timeout=0.5, gossip_interval=0.2, suspicion_mult=4),
    "local": dict(probe_interval=1.0, probe_timeout=0.2, gossip_interval=0.1, suspicion_mult=3),
    "wan": dict(probe_interval=5.0, probe_timeout=3.0, gossip_interval=0.5, suspicion_mult=6),
}
SUSPICION_MAX_MULT = 6  # memberlist SuspicionMaxTimeoutMult, every profile

TARGET_CONVERGE_S = 1.0  # the targets for meshllm
TARGET_LEAVE_S = 0.5
TARGET_RSS_MIB = 61.0

GONE = {"dead", "left", "failed"}  # a listed member in one of these states counts as dropped


def out(label: str, value: str) -> None:
    print(f"{label:<30}{value}", flush=True)


# ---------------------------------------------------------------------------- members


class Member:
    """One member process, and a cheap way to ask it whom it lists."""

    name = ""  # how the other members list it
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float) -> float:
        """Block until the member is ready; the ``perf_counter()`` when that was seen."""
        raise NotImplementedError

    def view(self) -> dict[str, str]:
        """Name -> state of every member it lists, itself left out."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection :meth:`view` uses."""

    def wait_line(self, needle: bytes, timeout: float) -> float:
        """Read the member's log every 5 ms until ``needle`` is in it (cheap: no request)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            data = self.log_path.read_bytes() if self.log_path.exists() else b""
            if needle in data:
                return time.perf_counter()
            if self.proc.poll() is not None:
                tail = data[-3000:].decode(errors="replace")
                raise RuntimeError(
                    f"{self.log_path.parent.name} exited ({self.proc.returncode}):\n{tail}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.log_path} has no {needle!r} after {timeout:.0f} s")
            time.sleep(0.005)


class HttpJson:
    """GET JSON over one keep-alive connection (reconnects once when it was closed)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> Any:
        for attempt in range(2):
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise OSError(f"GET {path}: HTTP {resp.status}")
                return json.loads(body)
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


class MeshllmMember(Member):
    """A ``meshllm`` daemon (meshllm.testing.cluster's NodeProcess)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.proc = node.proc
        self.log_path = node.log_path
        self.http: HttpJson | None = None

    def wait_ready(self, timeout: float) -> float:
        seen = self.wait_line(b"\nready\n", timeout)
        self.node.wait_ready(timeout)  # parses the banner: node id, ports, token
        self.name = self.node.node_id
        self.http = HttpJson(self.node.http_port)
        return seen

    def view(self) -> dict[str, str]:
        assert self.http is not None
        peers = self.http.get("/api/status")["peers"]
        return {p["node_id"]: p.get("state") or p.get("status") or "alive" for p in peers}

    def close(self) -> None:
        if self.http is not None:
            self.http.close()


class SerfRPC:
    """The agent's RPC protocol (msgpack over TCP), as ``serf members -rpc-addr`` speaks it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # Member.Addr is an IP as raw bytes: never let it fail the decoding.
        self.unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        self.seq = 0
        self.call("handshake", {"Version": 1})

    def _read(self) -> Any:
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("serf RPC connection closed")
            self.unpacker.feed(data)

    def call(self, command: str, body: Any = None, reply: bool = False) -> Any:
        self.seq += 1
        message = msgpack.packb({"Command": command, "Seq": self.seq})
        if body is not None:
            message += msgpack.packb(body)
        self.sock.sendall(message)
        header = self._read()
        if header.get("Error"):
            raise OSError(f"serf RPC {command}: {header['Error']}")
        return self._read() if reply else None

    def members(self) -> list[dict[str, Any]]:
        return self.call("members", reply=True)["Members"]

    def close(self) -> None:
        self.sock.close()


class SerfMember(Member):
    """A ``serf agent`` on 127.0.0.1 with its own ports; SIGTERM makes it leave gracefully."""

    def __init__(self, binary: str, workdir: Path, name: str, ports: tuple[int, int]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.name = name
        self.bind_port, self.rpc_port = ports
        self.log_path = workdir / "agent.log"
        self.rpc: SerfRPC | None = None

    def start(self, profile: str, join: SerfMember | None, extra: Sequence[str]) -> None:
        self.workdir.mkdir(parents=True)
        config = self.workdir / "agent.json"
        # Without this, SIGTERM ends the agent without a leave (SIGINT would leave).
        config.write_text(json.dumps({"leave_on_terminate": True}))
        argv = [
            self.binary, "agent", f"-node={self.name}", f"-bind=127.0.0.1:{self.bind_port}",
            f"-rpc-addr=127.0.0.1:{self.rpc_port}", f"-profile={profile}", "-log-level=warn",
            f"-config-file={config}", *extra,
        ]  # fmt: skip
        if join is not None:
            argv.append(f"-join=127.0.0.1:{join.bind_port}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self, timeout: float) -> float:
        # Printed after the start-up join completed (and by the first agent after its start).
        seen = self.wait_line(b"Log data will now stream in", timeout)
        self.rpc = SerfRPC(self.rpc_port)
        return seen

    def view(self) -> dict[str, str]:
        assert self.rpc is not None
        return {m["Name"]: m["Status"] for m in self.rpc.members() if m["Name"] != self.name}

    def close(self) -> None:
        if self.rpc is not None:
            self.rpc.close()


def free_ports(count: int) -> list[int]:
    """Ports free for TCP and UDP on 127.0.0.1, below the ephemeral range (DESIGN.md §9:
    a client connection can hold an ephemeral port in TIME-WAIT)."""
    ports: list[int] = []
    port = random.randrange(20000, 30000)
    while len(ports) < count:
        port += 1
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(port)
    return ports


def end_all(members: Sequence[Member]) -> None:
    """SIGTERM every process still running, by pid, all at once; SIGKILL what is left
    after 10 s.  Ctrl-C and SIGTERM are ignored meanwhile, so no process is left behind."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    for m in members:
        m.close()
    running = [m.proc for m in members if m.proc is not None and m.proc.poll() is None]
    for proc in running:
        proc.terminate()
    # A child started a moment before an interrupt may not be a member yet: end this
    # process's own children too (by pid; only what this bench started).
    known = {proc.pid for proc in running}
    strays = [c for c in psutil.Process().children() if c.pid not in known and c.is_running()]
    for child in strays:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    deadline = time.monotonic() + 10
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _, alive = psutil.wait_procs(strays, timeout=max(0.1, deadline - time.monotonic()))
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


# ---------------------------------------------------------------------------- measuring


@dataclass
class Seen:
    """When one member saw one change: after ``without`` (the send time of its last answer
    without it), no later than ``first`` (the arrival of its first answer with it)."""

    without: float
    first: float | None = None


@dataclass
class Poller:
    interval: float  # between rounds of all pending members
    scout_interval: float  # between single asks, while nobody has seen the change
    answers: int = 0
    errors: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    their_cpu_s: float = 0.0  # the members' CPU meanwhile (answering, and their own work)
    answer_s: float = 0.0  # the sum of the answers' round trips
    bad: list[str] = field(default_factory=list)

    def watch(
        self,
        members: Sequence[Member],
        stages: Sequence[Callable[[Member, dict[str, str]], bool]],
        t0: float,
        timeout: float,
        scout: bool = False,
        confirm: bool = False,
    ) -> list[dict[Member, Seen]]:
        """Ask the members that have not passed every stage yet, a round every ``interval``,
        until all have.  ``scout``: while none has seen anything yet, ask one member at a
        time (in turn, every ``scout_interval``) instead of all, which spares the daemons
        while nothing happens.  ``confirm``: at the end, one more round of all of them must
        still agree."""
        seen = [{m: Seen(without=t0) for m in members} for _ in stages]
        cpu0, wall0, theirs0 = _cpu(), time.perf_counter(), _their_cpu(members)
        deadline = t0 + timeout
        pending = list(members)
        while pending and time.perf_counter() < deadline:
            was_scouting = scout
            batch = pending[:1] if scout else list(pending)
            for m in batch:
                view = self._ask(m)
                got = time.perf_counter()
                for stage, s in zip(stages, seen, strict=True):
                    if s[m].first is None:
                        if view is not None and stage(m, view):
                            s[m].first = got
                        else:
                            s[m].without = self._sent
                pending.remove(m)
                if any(s[m].first is None for s in seen):
                    pending.append(m)  # at the back: in turn, while scouting
                if any(s[m].first is not None for s in seen):
                    scout = False
            if not pending and confirm:
                for m in members:  # nobody went back on it
                    view = self._ask(m)
                    if view is None or not all(stage(m, view) for stage in stages):
                        for s in seen:
                            s[m] = Seen(without=self._sent)
                        pending.append(m)
            if pending and not (was_scouting and not scout):  # a first sighting: all at once
                time.sleep(self.scout_interval if scout else self.interval)
        self.cpu_s += _cpu() - cpu0
        self.wall_s += time.perf_counter() - wall0
        self.their_cpu_s += _their_cpu(members) - theirs0
        return seen

    _sent = 0.0

    def _ask(self, m: Member) -> dict[str, str] | None:
        """One member's view (None when it did not answer); ``_sent`` is when it was asked."""
        self._sent = sent = time.perf_counter()
        try:
            view: dict[str, str] | None = m.view()
        except OSError as exc:
            self.errors += 1
            self.bad.append(f"{m.name[:12]}: {exc}")
            view = None
        self.answers += 1
        self.answer_s += time.perf_counter() - sent
        return view


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _their_cpu(members: Sequence[Member]) -> float:
    total = 0.0
    for m in members:
        try:
            times = psutil.Process(m.pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def report(label: str, seen: dict[Member, Seen], t0: float) -> float | None:
    """Print one figure: the latest first answer, its bracket, first and median member."""
    firsts = [s.first - t0 for s in seen.values() if s.first is not None]
    if len(firsts) < len(seen):
        out(label, f"not seen by {len(seen) - len(firsts)} of {len(seen)} members in time")
        return None
    upper = max(firsts)
    lower = max(0.0, max(s.without - t0 for s in seen.values()))
    out(
        label,
        f"{upper * 1000:.0f} ms  (in {lower * 1000:.0f}-{upper * 1000:.0f}; first member "
        f"{min(firsts) * 1000:.0f}, median {statistics.median(firsts) * 1000:.0f})",
    )
    return upper


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: peer (\w+) (.*)$")
REMOVED_WORDS = ("dead", "left", "removed", "gone", "failed")


def report_logs(label: str, members: Sequence[Member], victim: Member, t0_wall: float) -> None:
    """The same figure from the daemons' own log lines (``-v``: "peer <id> dead|left"),
    timestamped to the millisecond by each daemon: no polling in it at all."""
    delays = []
    for m in members:
        for line in m.log_path.read_text(errors="replace").splitlines():
            got = LOG_LINE.match(line)
            if not got or got.group(2) != victim.name:
                continue
            if not any(word in got.group(3) for word in REMOVED_WORDS):
                continue
            stamp = datetime.strptime(got.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= t0_wall - 0.002:  # the stamp is cut to the millisecond
                delays.append(max(0.0, stamp - t0_wall))
                break
    if not delays:
        out(label, "no such line in the logs (did this version log it at -v?)")
        return
    missing = (
        f"; {len(members) - len(delays)} of {len(members)} did not log it"
        if len(delays) < len(members)
        else ""
    )
    out(
        label,
        f"{max(delays) * 1000:.0f} ms  (first member {min(delays) * 1000:.0f}, "
        f"median {statistics.median(delays) * 1000:.0f}){missing}",
    )


def present(view: dict[str, str], name: str) -> bool:
    return name in view and view[name] not in GONE


def dropped(victim: Member) -> Callable[[Member, dict[str, str]], bool]:
    return lambda _m, view: not present(view, victim.name)


def check(value: float | None, limit: float, what: str) -> None:
    """Print the target under a figure: ``what`` is the limit in words."""
    if value is not None:
        print(f"{'':<30}[target: {what}: {'ok' if value <= limit else 'OVER'}]")


def memory(members: Sequence[Member]) -> dict[str, list[float]]:
    """MiB per member: RSS, USS (pages only it maps), PSS, anonymous and file-backed RSS."""
    figures: dict[str, list[float]] = {k: [] for k in ("rss", "uss", "pss", "anon", "file")}
    for m in members:
        info = psutil.Process(m.pid).memory_full_info()
        figures["rss"].append(info.rss / 2**20)
        figures["uss"].append(info.uss / 2**20)
        figures["pss"].append(info.pss / 2**20)
        status = Path(f"/proc/{m.pid}/status").read_text().splitlines()
        kib = {
            k: int(v.split()[0])
            for k, _, v in (line.partition(":") for line in status)
            if k.startswith("Rss")
        }
        figures["anon"].append(kib.get("RssAnon", 0) / 1024)
        figures["file"].append(kib.get("RssFile", 0) / 1024)
    return figures


# ---------------------------------------------------------------------------- the run


def start_members(
    args: argparse.Namespace, extra: list[str], root: Path, members: list[Member]
) -> float:
    """Start ``args.nodes`` members one after another (appended to ``members`` as soon as
    each process exists); the ``perf_counter()`` when the last one was ready."""
    ready = 0.0
    if args.serf:
        ports = free_ports(2 * args.nodes)
        for i in range(args.nodes):
            agent = SerfMember(
                args.serf_bin, root / f"agent{i}", f"agent{i}", (ports[2 * i], ports[2 * i + 1])
            )
            members.append(agent)
            agent.start(args.profile, members[0] if i else None, extra)  # type: ignore[arg-type]
            ready = agent.wait_ready(60)
        return ready
    from meshllm.testing.cluster import Cluster  # only for meshllm: --serf works without it

    timings = [
        "--probe-interval", f"{args.probe_interval:g}",
        "--probe-timeout", f"{args.probe_timeout:g}",
        "--gossip-interval", f"{args.gossip_interval:g}",
        *extra,
    ]  # fmt: skip
    cluster = Cluster(root, timings)
    for _ in range(args.nodes):
        node = cluster.add(wait=False)  # joins the first node's mesh
        member = MeshllmMember(node)
        members.append(member)
        ready = member.wait_ready(60)
    return ready


def meshllm_kill_bound(interval: float, timeout: float, n: int) -> tuple[float, str]:
    """How long a kill -9 may take to be seen, in seconds, and that sum in words: the next
    probe (up to an interval), its timeout, then, where the daemon has suspicion (Lifeguard,
    meshllm.gossip.health), the longest suspicion: its timeout x log10(N) x the max multiple.
    A daemon without it (before the membership rewrite) declares death at the timeout."""
    try:
        from meshllm.gossip.health import HealthSettings
    except ImportError:
        bound = interval + timeout
        return bound, f"<= probe interval + timeout = {bound * 1000:.0f} ms"
    mult = HealthSettings().suspicion_max_mult
    shortest = timeout * max(1.0, math.log10(n))  # log10 of (the peers tracked + 1)
    bound = interval + timeout + mult * shortest
    return bound, (
        f"<= probe interval + timeout + longest suspicion ({mult:g} x {shortest:.2f} s) "
        f"= {bound * 1000:.0f} ms; with the shortest: {(interval + timeout + shortest) * 1000:.0f}"
    )


def run(args: argparse.Namespace, extra: list[str], root: Path, members: list[Member]) -> None:
    n, poller = args.nodes, Poller(args.poll, args.scout)
    if args.serf:
        p = PROFILES[args.profile]
        version = subprocess.run(
            [args.serf_bin, "version"], capture_output=True, text=True
        ).stdout.split("\n")[0]
        out("members", f"{n} serf agents ({version}, Debian package {_deb_version('serf')})")
        suspicion = p["suspicion_mult"] * max(1.0, math.log10(n)) * p["probe_interval"]
        out(
            "timings",
            f"-profile={args.profile}: probe interval {p['probe_interval']:g} s, timeout "
            f"{p['probe_timeout']:g} s, gossip {p['gossip_interval']:g} s, suspicion "
            f"{suspicion:.1f}-{suspicion * SUSPICION_MAX_MULT:.0f} s (Lifeguard)",
        )
    else:
        from meshllm.testing.provenance import commit_label

        out("members", f"{n} meshllm daemons (commit {commit_label()})")
        out(
            "timings",
            f"probe interval {args.probe_interval:g} s, timeout {args.probe_timeout:g} s, "
            f"gossip {args.gossip_interval:g} s"
            + (f"; daemon flags {' '.join(extra)}" if extra else ""),
        )
    out("load before start", f"{_load()} ({os.cpu_count()} cores)")

    t_start = time.perf_counter()
    t_ready = start_members(args, extra, root, members)
    out("all started", f"{time.perf_counter() - t_start:.1f} s, one after another")

    names = {m.name for m in members}

    def converged(m: Member, view: dict[str, str]) -> bool:
        return {k for k in view if present(view, k)} == names - {m.name}

    seen = poller.watch(members, [converged], t_ready, 120, confirm=True)
    converge = report("converged after last join", seen[0], t_ready)
    if not args.serf:
        check(converge, TARGET_CONVERGE_S, f"<= {TARGET_CONVERGE_S * 1000:.0f} ms")
    if converge is None:
        views = [
            len([k for k, v in (poller._ask(m) or {}).items() if v not in GONE]) for m in members
        ]
        print(
            f"{'':<30}(peers listed now: {sorted(views)}; what follows is measured on a mesh "
            "that did not converge, and means little)"
        )

    idle0, t_idle = _their_cpu(members), time.perf_counter()
    time.sleep(args.settle)
    idle = (_their_cpu(members) - idle0) / (time.perf_counter() - t_idle)
    out("members' CPU, idle", f"{idle * 100:.0f} % of a core for all {n} (nobody polling)")
    mem = memory(members)
    rss = mem["rss"]
    out("RSS per member", f"median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB")
    out(
        "  of which",
        f"anonymous {statistics.median(mem['anon']):.1f}, "
        f"file-backed {statistics.median(mem['file']):.1f} MiB (median)",
    )
    out(
        "USS / PSS per member",
        f"{statistics.median(mem['uss']):.1f} / {statistics.median(mem['pss']):.1f} MiB "
        f"(median; all {n}: PSS {sum(mem['pss']):.0f} MiB)",
    )
    if not args.serf:
        check(statistics.median(rss), TARGET_RSS_MIB, f"median RSS <= {TARGET_RSS_MIB:g} MiB")

    victim = members[n // 2]
    survivors = [m for m in members if m is not victim]
    if args.serf:
        p = PROFILES[args.profile]
        shortest = p["suspicion_mult"] * max(1.0, math.log10(n - 1)) * p["probe_interval"]
        limit = 60 + SUSPICION_MAX_MULT * shortest
    else:
        bound, bound_text = meshllm_kill_bound(args.probe_interval, args.probe_timeout, n)
        limit = 3 * bound + 30
    t0, t0_wall = time.perf_counter(), time.time()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.proc is not None
    victim.proc.wait(10)
    seen = poller.watch(survivors, [dropped(victim)], t0, limit, scout=True)
    detect = report("kill -9 seen by all", seen[0], t0)
    if args.logs:
        report_logs("  by their logs", survivors, victim, t0_wall)
    if not args.serf:
        check(detect, bound, bound_text)

    leaver = members[-1]
    others = [m for m in survivors if m is not leaver]
    stages = [dropped(leaver)]
    if args.serf:  # "leaving" (the intent arrived), then "left" (memberlist's leave arrived)
        stages.insert(0, lambda _m, view: view.get(leaver.name, "left") != "alive")
    t0, t0_wall = time.perf_counter(), time.time()
    assert leaver.proc is not None
    leaver.proc.terminate()
    seen = poller.watch(others, stages, t0, 60, scout=True)
    if args.serf:
        report("leave intent seen (leaving)", seen[0], t0)
    leave = report("SIGTERM leave seen by all", seen[-1], t0)
    if args.logs:
        report_logs("  by their logs", others, leaver, t0_wall)
    if not args.serf:
        check(leave, TARGET_LEAVE_S, f"<= {TARGET_LEAVE_S * 1000:.0f} ms")
    try:
        rc = leaver.proc.wait(30)
        out("leaver exited", f"after {(time.perf_counter() - t0) * 1000:.0f} ms, status {rc}")
    except subprocess.TimeoutExpired:
        out("leaver exited", "not within 30 s")

    wall = poller.wall_s or 1.0
    out(
        "poller",
        f"{poller.answers} answers in {poller.wall_s:.1f} s, a round every "
        f"{args.poll * 1000:.0f} ms (pending members only; while none has seen a kill or "
        f"leave, one every {args.scout * 1000:.0f} ms); answers took "
        f"{poller.answer_s / max(1, poller.answers) * 1000:.1f} ms on average; "
        f"{poller.errors} errors",
    )
    out(
        "  CPU meanwhile",
        f"poller {poller.cpu_s:.2f} s ({poller.cpu_s / wall * 100:.0f} % of a core), members "
        f"{poller.their_cpu_s:.2f} s ({poller.their_cpu_s / wall * 100:.0f} %)",
    )
    for line in poller.bad[:5]:
        print(f"{'':<30}{line}")
    out("load after", _load())


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _deb_version(package: str) -> str:
    got = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return got.stdout.strip() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Flags it does not know are passed to every daemon.",
    )
    p.add_argument("--nodes", type=int, default=20)
    lan = PROFILES["lan"]
    p.add_argument(
        "--probe-interval",
        type=float,
        help=f"seconds (default {lan['probe_interval']:g}, as memberlist's LAN profile)",
    )
    p.add_argument(
        "--probe-timeout", type=float, help=f"seconds (default {lan['probe_timeout']:g})"
    )
    p.add_argument(
        "--gossip-interval", type=float, help=f"seconds (default {lan['gossip_interval']:g})"
    )
    p.add_argument(
        "--poll", type=float, default=0.05, help="seconds between polling rounds (default 0.05)"
    )
    p.add_argument(
        "--scout", type=float, default=0.02, help="seconds between single asks while scouting"
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds after convergence before memory is read"
    )
    p.add_argument("--serf", action="store_true", help="run HashiCorp Serf agents instead")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="lan",
        help="Serf's timing profile (default lan)",
    )
    p.add_argument("--serf-bin", default="serf", help="the serf binary (default: serf on PATH)")
    p.add_argument("--keep", action="store_true", help="keep the members' state dirs and logs")
    p.add_argument(
        "--logs",
        action="store_true",
        help="meshllm: run the daemons with -v and also time kill and leave by their log lines",
    )
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.nodes < 3:
        p.error("--nodes: at least 3 (one is killed, one leaves)")
    timings = (args.probe_interval, args.probe_timeout, args.gossip_interval)
    if args.serf:
        if any(t is not None for t in timings):
            p.error("--serf: Serf's agent takes only a profile (--profile), no probe timings")
        if args.logs:
            p.error("--logs: meshllm only")
        if shutil.which(args.serf_bin) is None:
            p.error(f"no {args.serf_bin} on PATH (Debian: apt-get install serf)")
    else:
        if args.logs:
            extra.append("-v")
        for name in ("probe_interval", "probe_timeout", "gossip_interval"):
            if getattr(args, name) is None:
                setattr(args, name, PROFILES[args.profile][name])

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    root = Path(tempfile.mkdtemp(prefix="bench_gossip-"))
    members: list[Member] = []
    try:
        run(args, extra, root, members)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        end_all(members)
        if args.keep:
            print(f"logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
