#!/usr/bin/env python3
"""CPU cost of the local API guard per request (``meshllm.proxy.guard``).

Runs the guard's middleware and its response-header hook on in-memory requests (a
chat POST as the openai SDK sends it, and a GET), against a handler that answers at
once, and prints microseconds per request with the guard and without it.  The guard
must cost under 50 µs (0.05 ms) a request.

    .venv/bin/python scripts/bench_guard.py [--requests 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from meshllm.config import Config
from meshllm.proxy.guard import GuardSettings, guard_middleware, guard_response_headers

CHAT_HEADERS = {
    "Host": "127.0.0.1:9337",
    "Content-Type": "application/json",
    "User-Agent": "OpenAI/Python 1.0",
    "Accept": "application/json",
}


async def answer(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"{}", content_type="application/json")


async def per_request_us(requests: int, guarded: bool, method: str, path: str) -> float:
    settings = GuardSettings.from_config(Config())
    middleware, hook = guard_middleware(settings), guard_response_headers(settings)
    batch = [make_mocked_request(method, path, headers=CHAT_HEADERS) for _ in range(requests)]
    started = time.perf_counter()
    for request in batch:
        if guarded:
            response = await middleware(request, answer)
            await hook(request, response)
        else:
            response = await answer(request)
    return (time.perf_counter() - started) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
        bare = await per_request_us(args.requests, False, method, path)
        guarded = await per_request_us(args.requests, True, method, path)
        print(
            f"{method:<5}{path:<24} without guard {bare:6.2f} µs   with guard {guarded:6.2f} µs"
            f"   guard costs {guarded - bare:5.2f} µs a request"
        )


if __name__ == "__main__":
    asyncio.run(main())
