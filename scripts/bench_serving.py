#!/usr/bin/env python3
"""Serving benchmark with the real llama-server and the default model.

Prints:
- the proof of the llama-server build on this machine: each setting it can run
  with (as built, ``--no-repack``, and any ``--alt-binary`` such as a build
  without AMX), whether it completes here, and its tokens/s generated and prompt;
- the build time, with ``--build`` (a rebuild: about 10 minutes on 2 cores);
- ``meshllm --model gemma-3-270m-q4_k_m``: banner, the wait of a request sent
  right at the banner (it is held while the model warms), and cold start to
  the first streamed token;
- the GGUF copy rate when a second node joins with an empty models dir.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from meshllm.errors import ServingError
from meshllm.serving.install import (
    DEFAULT_MODEL,
    cached_llama_server,
    install_default_model,
    install_llama_server,
    prove_llama_server,
)
from meshllm.serving.proof import CANDIDATES, Attempt, prove
from meshllm.testing.cluster import Cluster, wait_for

# About 100 prompt tokens and 128 generated: long enough for steady figures.
PROMPT = " ".join(["The mesh pools many machines' language models into one endpoint."] * 9)
TOKENS = 128


def first_token_seconds(url: str) -> float:
    body = json.dumps({"model": DEFAULT_MODEL, "stream": True, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()  # fmt: skip
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        for line in resp:
            if line.startswith(b"data: {") and b'"content"' in line:
                return time.perf_counter() - t0
    raise RuntimeError("no token")


def settings_table(binaries: list[tuple[str, Path]], model: Path, log_dir: Path) -> None:
    print(f"{'llama-server setting':<44}{'outcome':<10}{'gen tok/s':>10}{'prompt tok/s':>14}")
    for label, binary in binaries:
        for extra in CANDIDATES:
            try:
                proof = prove(
                    binary, model, candidates=(extra,), log_dir=log_dir, prompt=PROMPT,
                    tokens=TOKENS,
                )  # fmt: skip
                attempt: Attempt = proof.attempts[0]
            except ServingError as exc:
                cause = str(exc).split("(", 1)[-1].split(")", 1)[0].split(": ")[-1]
                print(f"{label + ' ' + ' '.join(extra):<44}{cause:<10}")
                continue
            print(
                f"{label + ' ' + ' '.join(extra):<44}{'ok':<10}"
                f"{attempt.tokens_per_s:>10.1f}{attempt.prompt_per_s:>14.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="store_true", help="rebuild llama-server and time it")
    parser.add_argument(
        "--alt-binary", type=Path, action="append", default=[],
        help="another llama-server build to compare (e.g. one built without AMX)",
    )  # fmt: skip
    args = parser.parse_args()

    source = install_default_model(Path.home() / ".models")
    if args.build:
        t0 = time.perf_counter()
        binary = install_llama_server(force=True)
        print(f"build and proof                {time.perf_counter() - t0:.0f} s")
    binary = cached_llama_server() or install_llama_server()
    t0 = time.perf_counter()
    proof = prove_llama_server(binary, force=True)
    print(f"proof on this machine          {time.perf_counter() - t0:.1f} s")
    print(f"chosen setting                 {' '.join(proof.extra_args) or 'as built'}\n")

    with tempfile.TemporaryDirectory() as tmp:
        binaries = [("native build", binary)]
        binaries += [(f"alt {path.parents[2].name}", path) for path in args.alt_binary]
        settings_table(binaries, source, Path(tmp) / "logs")
        print()

        with Cluster(Path(tmp)) as cluster:
            models = Path(tmp) / "a-models"
            models.mkdir()
            os.link(source, models / source.name)
            t0 = time.perf_counter()
            a = cluster.add("--model", DEFAULT_MODEL, "--models-dir", str(models), name="a")
            ready = time.perf_counter() - t0
            sent = time.perf_counter()
            waited = first_token_seconds(a.url)  # held while the model warms, not refused
            cold = time.perf_counter() - t0
            print(f"daemon ready (banner)          {ready:.2f} s")
            print(f"first request, sent at banner  first token after {waited:.2f} s")
            print(f"cold start to first token      {cold:.2f} s  (sent {sent - t0:.2f} s in)")

            b = cluster.add("--models-dir", str(Path(tmp) / "b-models"), name="b")
            wait_for(lambda: "100%" in b.log(), 300, interval=0.05, what="the copy")
            rates = re.findall(r"fetching \S+: 100% (\d+)/(\d+) MB (\d+) MB/s", b.log())
            print(f"GGUF copy over the mesh        {rates[-1][1]} MB at {rates[-1][2]} MB/s")


if __name__ == "__main__":
    main()
