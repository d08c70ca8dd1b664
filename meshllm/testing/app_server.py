"""An aiohttp app served on ``host:port`` for as long as a test needs it (the fakes'
common lifecycle)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Self

from aiohttp import web


class AppServer:
    """Serves :meth:`make_app` on ``host:port`` (``port=0``: any free one, kept across a
    ``stop()`` and ``start()``); an async context manager."""

    host: str = "127.0.0.1"
    port: int = 0
    handler_cancellation = True
    """A client that goes away cancels the handler, as in llama-server."""

    _runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        """The aiohttp application."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL, without ``/v1``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; ``url`` is valid afterwards."""
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handler_cancellation=self.handler_cancellation
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until_signalled(self) -> None:
        """As a process: listen, print ``listening URL`` and ``ready`` (what
        :class:`~meshllm.testing.cluster.BackendProcess` waits for), serve until SIGINT
        or SIGTERM, then stop."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        print(f"listening {self.url}", flush=True)
        print("ready", flush=True)
        try:
            await stop.wait()
        finally:
            await self.stop()
