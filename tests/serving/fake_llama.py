"""A stand-in for llama-server, and a condition wait, shared by the serving tests.

The fake answers ``/health`` (503 while "loading", then 200) and ``POST /completion``
as the proof asks it; environment variables make it crash, die of a signal, ignore
SIGTERM or fall sick, so the supervisor and the proof can be tested in seconds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAKE_LLAMA = """\
#!{python}
# A stand-in for llama-server: /health 503 while "loading", then 200.
import argparse, json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("-m"); p.add_argument("--host"); p.add_argument("--port", type=int)
p.add_argument("--alias")
args, _ = p.parse_known_args()
env = os.environ.get
print("fake llama-server", " ".join(sys.argv[1:]), flush=True)
counter = env("FAKE_LLAMA_COUNTER")
if counter:
    n = int(open(counter).read() or 0) + 1 if os.path.exists(counter) else 1
    open(counter, "w").write(str(n))
    if n <= int(env("FAKE_LLAMA_CRASHES", "0")):
        print("fake: crashing on start", flush=True)
        sys.exit(3)
crash_signal = env("FAKE_LLAMA_SIGNAL")  # e.g. "SIGILL": die of it while "loading"
if crash_signal and env("FAKE_LLAMA_SPARED_BY", "-") not in sys.argv:
    print("fake: dying of", crash_signal, flush=True)
    os.kill(os.getpid(), getattr(signal, crash_signal))
if env("FAKE_LLAMA_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready_at = time.monotonic() + float(env("FAKE_LLAMA_LOAD", "0.2"))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        sick = env("FAKE_LLAMA_SICK") and os.path.exists(env("FAKE_LLAMA_SICK"))
        code = 500 if sick else 200 if time.monotonic() >= ready_at else 503
        body = json.dumps({{"status": "ok" if code == 200 else "loading"}}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # /completion, as the proof asks it
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        timings = {{"predicted_n": 3, "predicted_per_second": 40.0, "prompt_per_second": 90.0}}
        body = json.dumps({{"content": " Paris.", "timings": timings}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        print("request", fmt % a, flush=True)

ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
"""


def write_fake_llama(path: Path) -> Path:
    """The fake llama-server as an executable script at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_LLAMA.format(python=sys.executable))
    path.chmod(0o755)
    return path


async def until(condition: Callable[[], Any], timeout: float = 120.0) -> None:
    """Wait for ``condition``; generous timeout, no timing asserted."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
