"""EndpointSet over real (in-process) servers: run-time adds kept in the state dir, a drain
before a removal, keys added to forwarded requests, and an Ollama found on this machine."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from meshllm.serving.endpoints import EndpointSet
from meshllm.testing import FakeBackend
from meshllm.testing.fake_ollama import FakeOllama
from tests.serving.fake_llama import until


async def test_an_endpoint_added_at_run_time_is_kept_and_served(tmp_path: Path) -> None:
    async with FakeBackend(models=["gpt-fake"]) as backend:
        changes: list[None] = []
        endpoints = EndpointSet(tmp_path, find_local_ollama=False, poll_interval=0.2,
                                on_change=lambda: changes.append(None))  # fmt: skip
        await endpoints.start()
        record = await endpoints.add(backend.url, "openai", "lab", "sk-secret")
        await until(lambda: endpoints.serving() == {"gpt-fake": "ready"})
        assert endpoints.base_url("gpt-fake") == backend.url
        assert endpoints.headers_for(backend.url) == {"Authorization": "Bearer sk-secret"}
        assert endpoints.headers_for("http://elsewhere") == {}
        announced = endpoints.announced()[record.id]
        assert announced["state"] == "up" and announced["kind"] == "openai"
        assert "sk-secret" not in repr(endpoints.listed()) and changes
        stored = tmp_path / "endpoints.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        await endpoints.stop()

        # A restart fronts it again, from the state dir.
        again = EndpointSet(tmp_path, find_local_ollama=False, poll_interval=0.2)
        await again.start()
        await until(lambda: again.serving() == {"gpt-fake": "ready"})
        await again.stop()


async def test_a_removed_endpoint_drains_its_requests_first(tmp_path: Path) -> None:
    async with FakeBackend(models=["gpt-fake"]) as backend:
        endpoints = EndpointSet(tmp_path, find_local_ollama=False, poll_interval=0.2)
        await endpoints.start()
        record = await endpoints.add(backend.url)
        await until(lambda: endpoints.base_url("gpt-fake") is not None)
        endpoints.request_started("gpt-fake")
        removal = asyncio.ensure_future(endpoints.remove(record.id))
        await until(lambda: "gpt-fake" not in endpoints.serving())  # no new requests
        assert endpoints.base_url("gpt-fake") is None
        assert endpoints.announced()[record.id]["state"] == "draining"
        await asyncio.sleep(0.5)
        assert not removal.done(), "removed with a request in flight"
        endpoints.request_finished("gpt-fake")
        assert await removal is True
        assert endpoints.announced() == {} and endpoints.store.list() == []
        assert await endpoints.remove(record.id) is False
        await endpoints.stop()


async def test_an_ollama_on_this_machine_is_found_and_fronted(tmp_path: Path) -> None:
    async with FakeOllama(models=["llama3:8b"], warm=["llama3:8b"]) as ollama:
        endpoints = EndpointSet(tmp_path, poll_interval=0.2, local_ollama=ollama.url)
        await endpoints.start()
        await until(lambda: endpoints.serving() == {"llama3:8b": "ready"})
        (entry,) = endpoints.announced().values()
        assert entry["kind"] == "ollama" and entry["models"]["llama3:8b"]["warm"] is True
        assert endpoints.store.list() == []  # found, not stored
        await endpoints.stop()
    nothing = EndpointSet(tmp_path, poll_interval=0.2, local_ollama="http://127.0.0.1:1")
    await nothing.start()
    await asyncio.sleep(0.5)
    assert nothing.serving() == {} and nothing.announced() == {}
    await nothing.stop()
