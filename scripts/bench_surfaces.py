"""What answering in Ollama's and Anthropic's APIs costs: the translation to and from
the OpenAI shape, per request and per streamed token, in-process (median of 7 runs),
and the same for cloud models (OpenAI's shape to Anthropic's and Gemini's and back);
and, with ``--llama``, Anthropic's Messages API end to end on the default model:
llama-server's own ``/v1/messages`` against meshllm's translation to its
``/v1/chat/completions``, each beside the OpenAI route it stands on.

    .venv/bin/python scripts/bench_surfaces.py [--requests 5000] [--llama [--calls 100]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from meshllm.proxy.cloud import UsageFolder
from meshllm.surfaces import anthropic, gemini, ollama

RUNS = 7
MODEL = "gemma-3-270m-q4_k_m"
MODEL_PORT = 18991  # the default model's llama-server, to ask it directly (--model-ports)

CHUNK = (  # what llama-server streams for a token (measured)
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" word"}}],'
    b'"created":1796143036,"id":"chatcmpl-JhI7WzaOcVebTN4gQHWYApq0vpH61OZi","model":"m",'
    b'"system_fingerprint":"b0-unknown","object":"chat.completion.chunk"}\n\n'
)
OPENAI_CHUNK = (  # the same from an OpenAI-shaped server (another field order: parsed whole)
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}\n\n'
)
ANSWER = json.dumps(
    {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello there, friend."},
            }
        ],
        "usage": {"prompt_tokens": 25, "completion_tokens": 5},
    }
).encode()
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
# What the providers stream for a token, and answer whole (their documented shapes).
ANTHROPIC_CHUNK = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":" word"}}\n\n'
)
GEMINI_CHUNK = (
    b'data: {"candidates":[{"content":{"parts":[{"text":" word"}],"role":"model"},'
    b'"index":0}],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},'
    b'"modelVersion":"gemini-2.5-flash","responseId":"abc"}\r\n\r\n'
)
ANTHROPIC_ANSWER = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [{"type": "text", "text": "Hello there, friend."}],
    "stop_reason": "end_turn", "usage": {"input_tokens": 25, "output_tokens": 5},
}  # fmt: skip
GEMINI_ANSWER = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello there, friend."}]},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 25, "candidatesTokenCount": 5, "totalTokenCount": 30},
}  # fmt: skip


def per_call_us(work: Callable[[], object], calls: int) -> float:
    runs = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        for _ in range(calls):
            work()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def translation(calls: int) -> dict[str, float]:
    """µs per request (translate the request, then a whole answer back) and per
    streamed token (one OpenAI event in, the surface's bytes out), by surface."""
    now = time.time()

    def ollama_request() -> None:
        body = ollama.chat_request({"model": "m", "messages": MESSAGES, "stream": False})
        ollama.chat_answer(json.loads(ANSWER), body["model"], now, 0.5)

    def anthropic_request() -> None:
        body = anthropic.messages_request({"model": "m", "max_tokens": 64, "messages": MESSAGES})
        anthropic.message_answer(json.loads(ANSWER), body["model"])

    chat = {"model": "m", "max_tokens": 64, "messages": MESSAGES}

    def anthropic_cloud_request() -> None:
        anthropic.openai_to_messages(chat, "claude")
        anthropic.messages_to_openai(json.loads(json.dumps(ANTHROPIC_ANSWER)), "m", 1)

    def gemini_request() -> None:
        gemini.openai_to_gemini(chat)
        gemini.gemini_to_openai(json.loads(json.dumps(GEMINI_ANSWER)), "m", 1, "chatcmpl-1")

    anthropic_cloud = anthropic.AnthropicToOpenAIStream("m", "chatcmpl-1", 1)
    gemini_stream = gemini.GeminiToOpenAIStream("m", "chatcmpl-1", 1)
    folder = UsageFolder()
    ollama_stream = ollama.StreamTranslator("chat", "m")
    anthropic_stream = anthropic.StreamTranslator("m", "msg_bench")
    anthropic_stream.feed(CHUNK)  # past message_start and the block's start
    return {
        "ollama request": per_call_us(ollama_request, calls),
        "anthropic request": per_call_us(anthropic_request, calls),
        "ollama token": per_call_us(lambda: ollama_stream.feed(CHUNK, now), calls * 4),
        "anthropic token": per_call_us(lambda: anthropic_stream.feed(CHUNK), calls * 4),
        "ollama token, OpenAI-shaped": per_call_us(
            lambda: ollama_stream.feed(OPENAI_CHUNK, now), calls * 4
        ),
        "anthropic token, OpenAI-shaped": per_call_us(
            lambda: anthropic_stream.feed(OPENAI_CHUNK), calls * 4
        ),
        # the cloud's direction: OpenAI's shape asked of a provider that speaks another
        "anthropic: cloud request": per_call_us(anthropic_cloud_request, calls),
        "google: cloud request": per_call_us(gemini_request, calls),
        "anthropic: cloud token": per_call_us(
            lambda: anthropic_cloud.feed(ANTHROPIC_CHUNK), calls * 4
        ),
        "google: cloud token": per_call_us(lambda: gemini_stream.feed(GEMINI_CHUNK), calls * 4),
        "openai: cloud token (usage fold)": per_call_us(
            lambda: folder.feed(OPENAI_CHUNK), calls * 4
        ),
    }


def post_ms(url: str, body: dict, calls: int) -> float:
    """Median ms of ``calls`` POSTs of ``body`` to ``url``, one at a time."""
    data = json.dumps(body).encode()
    times = []
    for _ in range(calls):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                               "x-api-key": "unused"})  # fmt: skip
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def end_to_end(calls: int) -> dict[str, float]:
    """Median ms per request of one token, direct to llama-server and through a node."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from meshllm.serving.install import cached_llama_server, default_model_file
    from meshllm.testing.cluster import NodeProcess

    tmp = Path(tempfile.mkdtemp(prefix="bench-surfaces-"))
    models = tmp / "models"
    models.mkdir()
    os.link(default_model_file(), models / f"{MODEL}.gguf")
    node = NodeProcess(tmp / "node", [
        "--bind", "127.0.0.1:0", "--port", "0", "--no-mdns", "--no-auto-endpoints",
        "--model", MODEL, "--models-dir", str(models), "--llama-server",
        str(cached_llama_server()), "--model-ports", f"{MODEL_PORT}-{MODEL_PORT}",
    ])  # fmt: skip
    node.start()
    try:
        node.wait_serving(MODEL, 300)
        chat = {"model": MODEL, "max_tokens": 1, "messages": MESSAGES}
        direct = f"http://127.0.0.1:{MODEL_PORT}"
        for url in (f"{direct}/v1/messages", f"{node.url}/v1/messages"):
            post_ms(url, chat, 5)  # warm up: caches, connections
        return {
            "llama-server /v1/chat/completions": post_ms(
                f"{direct}/v1/chat/completions", chat, calls
            ),
            "llama-server /v1/messages (native)": post_ms(f"{direct}/v1/messages", chat, calls),
            "meshllm /v1/chat/completions": post_ms(f"{node.url}/v1/chat/completions", chat, calls),
            "meshllm /v1/messages (translated)": post_ms(f"{node.url}/v1/messages", chat, calls),
        }
    finally:
        node.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="calls per run")
    parser.add_argument("--llama", action="store_true", help="also end to end on llama-server")
    parser.add_argument("--calls", type=int, default=100, help="requests per end-to-end path")
    args = parser.parse_args()
    figures = translation(args.requests)
    print("translation, in-process (median of 7 runs), µs:")
    for name, value in figures.items():
        goal = "0.1 ms" if "request" in name else "5 µs"
        print(f"  {name:<34} {value:7.1f}  (goal: under {goal})")
    if args.llama:
        print(f"\nend to end, one token, one request at a time, median of {args.calls}, ms:")
        for name, value in end_to_end(args.calls).items():
            print(f"  {name:<36} {value:7.2f}")


if __name__ == "__main__":
    main()
