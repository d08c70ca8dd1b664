"""Screenshots of every dashboard page, dark and light, for the README (docs/dashboard/).

Starts a small real mesh (a seed on the default model with a spare model cold, a lite
client, a fake endpoint), sends it a few requests so the history and usage have
something to show, and photographs each page in Debian's chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/dashboard] [--width 1280]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from meshllm.serving import find_llama_server
from meshllm.serving.install import DEFAULT_MODEL
from meshllm.testing.browser import LAUNCH_ARGS, find_chromium
from meshllm.testing.cluster import BackendProcess, Cluster

PAGES = ("fleet", "models", "endpoints", "requests", "usage", "chat", "keys")
MODEL = DEFAULT_MODEL
MODELS = Path.home() / ".models"


def ask(url: str, content: str, stream: bool = False) -> None:
    body = {"model": MODEL, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=860)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no chromium: apt install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        os.link(MODELS / f"{MODEL}.gguf", models / f"{MODEL}.gguf")
        os.link(MODELS / f"{MODEL}.gguf", models / "gemma-spare.gguf")
        backend = BackendProcess(root / "fake.log", ["qwen2.5-coder:7b"]).start()
        base = ["--llama-server", str(find_llama_server(None))]
        try:
            shoot(args, chromium, root, models, backend, base)
        finally:
            backend.kill()


def shoot(
    args: argparse.Namespace,
    chromium: Path,
    root: Path,
    models: Path,
    backend: BackendProcess,
    base: list[str],
) -> None:
    """Start the mesh, give it some history, photograph each page."""
    with Cluster(root, base) as cluster:
        seed = cluster.add("--model", MODEL, "--models-dir", str(models), name="seed")
        seed.wait_serving(MODEL, 300)
        client = cluster.add("--client", "--port", "0", name="laptop")
        cluster.add("--endpoint", backend.url, name="gpu-box")
        for i, text in enumerate(["Hi!", "Name three colours.", "What is a mesh?"] * 2):
            ask(seed.url if i % 2 else client.url, text, stream=bool(i % 3))
        time.sleep(2)
        token = (seed.state_dir / "admin_token").read_text().strip()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
            for scheme in ("dark", "light"):
                context = browser.new_context(
                    color_scheme=scheme,  # type: ignore[arg-type]
                    viewport={"width": args.width, "height": args.height},
                    device_scale_factor=1,
                )
                page = context.new_page()
                page.goto(f"{seed.url}/#token={token}")
                expect(page.get_by_test_id("live-status")).to_have_text("live")
                for name in PAGES:
                    page.goto(f"{seed.url}/#/{name}")
                    expect(page.locator(f"[data-page={name}]:not(a)")).to_be_visible()
                    if name == "chat":
                        page.get_by_test_id("chat-model").select_option(MODEL)
                        page.get_by_label("Max tokens").fill("40")
                        page.get_by_test_id("chat-input").fill(
                            "In one sentence: why pool many machines' models?"
                        )
                        page.get_by_test_id("chat-send").click()
                        expect(page.get_by_test_id("chat-node")).not_to_be_empty(timeout=120_000)
                    page.wait_for_timeout(1500)  # charts and live data settle
                    path = args.out / f"{name}-{scheme}.png"
                    page.screenshot(path=str(path))
                    print(path)
                context.close()
            browser.close()


if __name__ == "__main__":
    main()
