#!/usr/bin/env python3
"""Where a ``meshllm`` daemon's resident memory goes, measured from outside the daemon.

1. Imports: a fresh interpreter imports the daemon's dependencies one after another and
   reads its VmRSS (``/proc/self/status``) after each; then each heavy package alone in a
   fresh interpreter (what leaving it out would save, at most), the slowest imports of
   ``python -X importtime``, and the VmRSS after the daemon's imports under a few ideas
   (stubbed modules, .pyc files, -OO), each in a fresh interpreter.
2. Running daemons (a seed and nodes that joined it, idle; two of them with
   MALLOC_ARENA_MAX=2 and PYTHONMALLOC=malloc): their ``/proc/<pid>/smaps`` summed by
   mapping (anonymous memory, each package's shared objects, libpython, system libraries),
   so the anonymous and the file-backed parts show separately.
3. One more daemon started under a wrapper that turns on ``tracemalloc`` before anything is
   imported, snapshots once the daemon's modules are imported and, on SIGUSR1, writes what
   running added since, summed by package, and the packages in ``sys.modules`` (no change to
   meshllm; tracemalloc's own bookkeeping is not counted, but it makes that process bigger,
   so its RSS is not the figure to quote).

    python scripts/memory_breakdown.py            # all three
    python scripts/memory_breakdown.py --imports  # only the first (no daemon started)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# (label, code) in the order a daemon meets them; each step's figure includes whatever it
# pulls in that no earlier step did.
STEPS: list[tuple[str, str]] = [
    ("python, site (bare interpreter)", ""),
    ("stdlib: ssl (+ libssl, libcrypto)", "import ssl"),
    ("stdlib: asyncio", "import asyncio"),
    ("stdlib: json logging argparse socket", "import json, logging, argparse, socket"),
    ("stdlib: http.client urllib.request (+ email)", "import http.client, urllib.request"),
    ("msgpack", "import msgpack"),
    ("psutil", "import psutil"),
    ("cryptography (ed25519, x509)", "from cryptography import x509\n"
     "from cryptography.hazmat.primitives.asymmetric import ed25519"),
    ("aioquic's OpenSSL (pyOpenSSL) + service_identity", "import OpenSSL.crypto, service_identity"),
    ("aioquic", "import aioquic.quic.connection, aioquic.quic.configuration"),
    ("multidict yarl propcache frozenlist (aiohttp's)", "import multidict, yarl, propcache, "
     "frozenlist"),
    ("aiohttp client (+ a CA store of its own)", "import aiohttp"),
    ("aiohttp.web (server)", "from aiohttp import web"),
    ("uvloop", "import uvloop"),
    ("pynvml (nvidia-ml-py; meshllm.resources)", "import pynvml"),
    ("meshllm.cli", "import meshllm.cli"),
    ("meshllm.node (the rest of meshllm)", "import meshllm.node"),
]  # fmt: skip
NOT_AT_START: list[tuple[str, str]] = [
    ("  not at start: gguf (+ numpy, yaml)", "import gguf"),
    ("  not at start: textual (the console)", "import textual.app, textual.widgets"),
]
ALONE: list[tuple[str, str]] = [
    ("aiohttp + aiohttp.web", "import aiohttp\nfrom aiohttp import web"),
    ("aioquic", "import aioquic.quic.connection, aioquic.quic.configuration"),
    ("cryptography x509 + ed25519", "from cryptography import x509\n"
     "from cryptography.hazmat.primitives.asymmetric import ed25519"),
    ("pyOpenSSL (OpenSSL.crypto)", "import OpenSSL.crypto"),
    ("service_identity", "import service_identity"),
    ("uvloop", "import uvloop"),
    ("pynvml", "import pynvml"),
    ("psutil", "import psutil"),
    ("msgpack", "import msgpack"),
    ("gguf (+ numpy)", "import gguf"),
]  # fmt: skip

# The daemon's imports (what ``meshllm`` loads before it serves), under each idea; the
# figure is the VmRSS after them, to compare with the first row.
DAEMON_IMPORTS = "import meshllm.cli, meshllm.node, uvloop"
STUB_PYNVML = """
import sys, types
m = types.ModuleType("pynvml")
m.NVMLError = type("NVMLError", (Exception,), {})
sys.modules["pynvml"] = m
"""
STUB_AIOQUIC_VERIFY = """
import sys, types
ssl_stub = types.ModuleType("OpenSSL")
ssl_stub.crypto = types.ModuleType("OpenSSL.crypto")
sys.modules.update({"OpenSSL": ssl_stub, "OpenSSL.crypto": ssl_stub.crypto,
                    "service_identity": types.ModuleType("service_identity")})
"""
# (label, interpreter flags, code run first, with .pyc files): the "as the tests run it" rows
# compile meshllm from source, as a daemon does under PYTHONDONTWRITEBYTECODE=1 (this
# environment sets it and meshllm is an editable install, so it has no .pyc files).
IDEAS: list[tuple[str, list[str], str, bool]] = [
    ("as today, meshllm compiled at start (no .pyc)", [], "", False),
    ("as today, with .pyc files (an installed wheel)", [], "", True),
    ("no pynvml unless an NVIDIA driver is there", [], STUB_PYNVML, False),
    ("stub aioquic's unused OpenSSL + service_identity", [], STUB_AIOQUIC_VERIFY, False),
    ("both stubs", [], STUB_PYNVML + STUB_AIOQUIC_VERIFY, False),
    ("python -OO (no docstrings, no asserts), .pyc files", ["-OO"], "", True),
]

CHILD = r"""
import json, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
rows = []
for label, code in json.loads(sys.argv[1]):
    before = set(sys.modules)
    try:
        exec(code, {})
        error = ""
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    new = {m.split(".")[0] for m in sys.modules if m not in before}
    rows.append([label, rss(), len(set(sys.modules) - before), sorted(new), error])
print(json.dumps(rows))
"""

# Runs the daemon in this interpreter with tracemalloc on from the start.  It snapshots the
# allocations once the daemon's modules are imported; SIGUSR1 writes to $MEMORY_REPORT the
# allocations then, what the running daemon added since (by package of the allocating
# line) and the packages in sys.modules.
WRAPPER = r"""
import os, sys, tracemalloc
tracemalloc.start(1)
import json, signal
from collections import Counter
def where(filename):
    f = filename.replace(os.sep, "/")
    if "/site-packages/" in f:
        return f.split("/site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    if "/meshllm/" in f:
        rest = f.rsplit("/meshllm/", 1)[1].split("/")
        return "meshllm." + (rest[0] if len(rest) > 1 else rest[0][:-3])
    if f.startswith("<"):
        return f
    parts = f.split("/python3.")[-1].split("/")
    return "stdlib:" + (parts[1].removesuffix(".py") if len(parts) > 1 else f)
def by_package(stats):
    sizes = Counter()
    for stat in stats:
        sizes[where(stat.traceback[0].filename)] += getattr(stat, "size_diff", stat.size)
    return sizes
import meshllm.cli, meshllm.node, uvloop
imported = tracemalloc.take_snapshot()
def report(*_):
    running = tracemalloc.take_snapshot()
    grown = by_package(running.compare_to(imported, "filename"))
    modules = Counter(m.split(".")[0] for m in sys.modules)
    with open(os.environ["MEMORY_REPORT"], "w") as out:
        json.dump({"imported": sum(by_package(imported.statistics("filename")).values()),
                   "running": sum(by_package(running.statistics("filename")).values()),
                   "grown": grown.most_common(), "modules": modules.most_common()}, out)
signal.signal(signal.SIGUSR1, report)
sys.exit(meshllm.cli.main(sys.argv[1:]))
"""


def mib(kib: float) -> str:
    return f"{kib / 1024:6.1f}"


def run_child(steps: list[tuple[str, str]]) -> list[list]:
    got = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(steps)], capture_output=True, text=True, check=True
    )
    return json.loads(got.stdout)


def imports() -> None:
    print("1. imports, one after another in one fresh interpreter (VmRSS after each)")
    print(f"   {'step':<52}{'+MiB':>7}{'total':>8}{'modules':>9}  new top-level packages")
    rows = run_child(STEPS + NOT_AT_START)
    last = 0.0
    for label, rss, count, new, error in rows:
        news = " ".join(p for p in new if not p.startswith("_"))[:60]
        print(f"   {label:<52}{rss - last:7.1f}{rss:8.1f}{count:9d}  {error or news}")
        last = rss
    kept = "import builtins, ssl\nbuiltins.kept_context = ssl.create_default_context()"
    rows = run_child([("ssl", "import ssl"), ("ca", kept)])
    print(
        f"   (of aiohttp client's: {rows[1][1] - rows[0][1]:.1f} MiB for the CA store of the "
        "ssl.create_default_context() its connector makes at import)"
    )
    base = run_child([("bare", "")])[0][1]
    print("\n   each alone in a fresh interpreter (what not importing it saves, at most):")
    for label, code in ALONE:
        (_, bare, *_), (_, rss, count, _, error) = run_child([("bare", ""), (label, code)])
        print(f"   {label:<52}{rss - bare:7.1f} MiB  {count:4d} modules  {error}")
    print(f"   (bare interpreter: {base:.1f} MiB)")

    got = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", DAEMON_IMPORTS], capture_output=True, text=True
    )
    tops = []
    for line in got.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 3:  # direct imports of the top level and one below
            tops.append((int(m.group(2)), m.group(4)))
    print("\n   slowest imports (python -X importtime, cumulative, top level and one below):")
    for us, name in sorted(tops, reverse=True)[:12]:
        print(f"   {name:<52}{us / 1000:7.0f} ms")

    print("\n   ideas: VmRSS after the daemon's imports, in a fresh interpreter each")
    first = None
    with tempfile.TemporaryDirectory(prefix="pycache-") as cache:
        for label, flags, prelude, cached in IDEAS:
            env = None
            if (
                cached
            ):  # .pyc files written on a first run into a dir of their own, read on a second
                env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
                env["PYTHONPYCACHEPREFIX"] = cache
            argv = [
                sys.executable,
                *flags,
                "-c",
                CHILD,
                json.dumps([["x", prelude + DAEMON_IMPORTS]]),
            ]
            for _ in range(2 if cached else 1):
                got = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
            _, rss, _, _, error = json.loads(got.stdout)[0]
            first = rss if first is None else first
            print(f"   {label:<52}{rss:7.1f} MiB  ({rss - first:+.1f}) {error}")


def smaps(pid: int) -> dict[str, list[int]]:
    """kB by mapping group: [rss, anonymous (incl. private copy-on-write), swap]."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    group = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and not head[0].endswith(":") and "-" in head[0]:
            group = _group(head[5] if len(head) > 5 else "")
        elif head[0] == "Rss:":
            groups[group][0] += int(head[1])
        elif head[0] == "Anonymous:":
            groups[group][1] += int(head[1])
    return groups


def _group(path: str) -> str:
    if not path:
        return "anonymous mappings (pymalloc arenas, big mallocs, thread stacks)"
    if path.startswith("["):
        return path
    if "/site-packages/" in path:
        package = path.split("/site-packages/", 1)[1].split("/")[0]
        return "site-packages: " + package.removesuffix(".libs").split("-")[0]
    if "/lib-dynload/" in path:
        return "python lib-dynload (_ssl, _asyncio, ...)"
    if "libpython" in path or re.search(r"/bin/python[\d.]*$", path):
        return "python executable / libpython"
    name = Path(path).name
    return "system: " + re.split(r"[.-]", name, maxsplit=1)[0]


def daemons(root: Path) -> None:
    from meshllm.testing.cluster import Cluster, NodeProcess

    print("\n2. running daemons, idle after start (one seed, one joined), /proc/<pid>/smaps")
    cluster = Cluster(root / "mesh")
    wrapped = None
    try:
        seed = cluster.add()
        joined = cluster.add()
        variants = []
        for env in ({"MALLOC_ARENA_MAX": "2"}, {"PYTHONMALLOC": "malloc"}):
            name = "+".join(f"{k}={v}" for k, v in env.items())
            state = root / "mesh" / name
            args = [*cluster.base_args, "--join", seed.token, "--models-dir", str(state / "models")]
            node = NodeProcess(state, args, env)
            cluster.nodes.append(node)
            variants.append((node.start(), f"joined, {name}"))
        time.sleep(3)
        for node, what in ((seed, "seed"), *variants, (joined, "joined")):
            groups = smaps(node.pid)
            total = sum(g[0] for g in groups.values())
            anon = sum(g[1] for g in groups.values())
            threads = len(os.listdir(f"/proc/{node.pid}/task"))
            print(
                f"   {what}: RSS {total / 1024:.1f} MiB = anonymous {anon / 1024:.1f} "
                f"+ file-backed {(total - anon) / 1024:.1f}; {threads} threads"
            )
        print(f"   {'mapping group (joined node)':<66}{'RSS':>6}{'anon':>7}{'file':>7} MiB")
        for name, (rss, anon, _) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:16]:
            print(f"   {name:<66}{mib(rss)} {mib(anon)} {mib(rss - anon)}")

        print("\n3. Python allocations of a running daemon (tracemalloc from the first import)")
        report = root / "report.json"
        argv = [
            sys.executable, "-c", WRAPPER, "--state-dir", str(root / "traced"),
            "--bind", "127.0.0.1:0", "--port", "0", "--no-install",
            "--models-dir", str(root / "traced" / "models"), "--join", seed.token,
            "--probe-interval", "1", "--probe-timeout", "1", "--gossip-interval", "1",
        ]  # fmt: skip
        (root / "traced").mkdir()
        log = open(root / "traced.log", "wb")  # noqa: SIM115 (closed in finally)
        env = {**os.environ, "MEMORY_REPORT": str(report), "PYTHONUNBUFFERED": "1"}
        wrapped = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while b"\nready\n" not in (root / "traced.log").read_bytes():
            if wrapped.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "traced.log").read_text()[-2000:])
            time.sleep(0.05)
        time.sleep(3)
        os.kill(wrapped.pid, signal.SIGUSR1)
        while not report.exists() or not report.stat().st_size:
            time.sleep(0.05)
        time.sleep(0.2)
        data = json.loads(report.read_text())
        print(
            f"   traced Python allocations: {data['imported'] / 2**20:.1f} MiB once imported, "
            f"{data['running'] / 2**20:.1f} MiB running; what running added, by package:"
        )
        for name, size in data["grown"][:14]:
            print(f"   {name:<52}{size / 2**20:+7.2f} MiB")
        modules = dict(data["modules"])
        print(f"   modules loaded: {sum(modules.values())}; by package (most first):")
        shown = [f"{k} {v}" for k, v in data["modules"][:24] if not k.startswith("_")]
        print("   " + ", ".join(shown))
        heavy = ["textual", "rich", "yaml", "pynvml", "gguf", "numpy", "OpenSSL", "sqlite3"]
        loaded = ", ".join(f"{k}: {'yes' if k in modules else 'no'}" for k in heavy)
        print(f"   loaded at runtime? {loaded}")
    finally:
        if wrapped is not None:
            if wrapped.poll() is None:
                wrapped.terminate()
            try:
                wrapped.wait(10)
            except subprocess.TimeoutExpired:
                wrapped.kill()
                wrapped.wait(5)
        cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--imports", action="store_true", help="only the import figures")
    args = p.parse_args()
    imports()
    if not args.imports:
        with tempfile.TemporaryDirectory(prefix="memory_breakdown-") as tmp:
            daemons(Path(tmp))


if __name__ == "__main__":
    main()
