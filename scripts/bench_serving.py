#!/usr/bin/env python3
"""Serving benchmark with the real llama-server and the default model.

Prints the cold start from ``meshllm --model gemma-3-270m-q4_k_m`` to the first
streamed token, and the GGUF copy rate when a second node joins with an empty
models dir and fetches the model from the first (loopback).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from meshllm.serving.install import DEFAULT_MODEL, install_default_model
from meshllm.testing.cluster import Cluster, wait_for


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


def main() -> None:
    source = install_default_model(Path.home() / ".models")
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp)) as cluster:
        models = Path(tmp) / "a-models"
        models.mkdir()
        os.link(source, models / source.name)
        t0 = time.perf_counter()
        a = cluster.add("--model", DEFAULT_MODEL, "--models-dir", str(models), name="a")
        ready = time.perf_counter() - t0

        def answered() -> float | None:
            try:
                return first_token_seconds(a.url)
            except OSError:
                return None

        wait_for(answered, 300, interval=0.05, what="first token")
        cold = time.perf_counter() - t0
        print(f"daemon ready (banner)          {ready:.2f} s")
        print(f"cold start to first token      {cold:.2f} s")

        b = cluster.add("--models-dir", str(Path(tmp) / "b-models"), name="b")
        wait_for(lambda: "100%" in b.log(), 300, interval=0.05, what="the copy")
        rates = re.findall(r"fetching \S+: 100% (\d+)/(\d+) MB (\d+) MB/s", b.log())
        print(f"GGUF copy over the mesh        {rates[-1][1]} MB at {rates[-1][2]} MB/s")


if __name__ == "__main__":
    main()
