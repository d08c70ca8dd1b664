"""ModelRunner over real processes (the fake llama-server): loads, evictions, TTLs, drains,
pins, and the announcement fields it reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshllm.errors import ServingError
from meshllm.serving.launch import LlamaOptions
from meshllm.serving.model_file import ModelFile
from meshllm.serving.pool import PoolSettings
from meshllm.serving.runner import ModelRunner
from meshllm.serving.scan import scan_catalog
from tests.serving.fake_llama import until
from tests.serving.test_catalog import make_gguf


async def models(tmp_path: Path, *names: str) -> dict[str, ModelFile]:
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    for name in names:
        make_gguf(folder / f"{name}.gguf")
    found, _ = await scan_catalog(folder, [])
    return found


@pytest.fixture
async def make_runner(tmp_path: Path, fake_binary: Path) -> AsyncIterator:
    runners: list[ModelRunner] = []
    changes: list[bool] = []

    async def binary() -> Path:
        return fake_binary

    def make(**settings: object) -> ModelRunner:
        runner = ModelRunner(
            PoolSettings(**settings),  # type: ignore[arg-type]
            binary,
            log_dir=tmp_path / "logs",
            options=LlamaOptions(stop_grace=2.0),
            on_change=changes.append,
        )
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        await runner.stop()


def hot(runner: ModelRunner, model: str) -> bool:
    return runner.base_url(model) is not None


async def test_a_model_loads_answers_and_reports_its_state(tmp_path: Path, make_runner) -> None:
    found = await models(tmp_path, "a")
    runner = make_runner()
    runner.add(found["a"])
    assert runner.fields()["pool"] == {} and runner.fields()["serving"] == {}
    assert runner.load("a") is None
    fields = runner.fields()
    assert fields["pool"]["a"]["state"] == "warming"
    assert fields["serving"] == {"a": "starting"}
    await until(lambda: hot(runner, "a"))
    fields = runner.fields()
    assert fields["serving"] == {"a": "ready"}
    assert fields["pool"]["a"]["state"] == "cooling"  # idle: its TTL counts down
    assert fields["pool"]["a"]["until"] > fields["pool"]["a"]["since"]
    runner.request_started("a")
    assert runner.fields()["pool"]["a"]["state"] == "hot"
    runner.request_finished("a")
    # A second load measured nothing new, but the first gave a speed: the next warm-up
    # has an ETA.
    assert runner._speed is not None


async def test_idle_ttl_unloads_and_a_request_in_flight_holds_it(
    tmp_path: Path, make_runner
) -> None:
    found = await models(tmp_path, "a")
    runner = make_runner(idle_ttl=2.0)
    runner.add(found["a"])
    runner.request_started("a")  # a request waiting for the load holds it from the start
    runner.load("a")
    await until(lambda: hot(runner, "a"))
    await asyncio.sleep(3.0)
    assert hot(runner, "a"), "unloaded with a request in flight"
    runner.request_finished("a")
    await until(lambda: "a" not in runner.servers)
    assert runner.fields()["pool"] == {}
    assert runner.pool.state("a") == "cold"


async def test_max_loaded_evicts_the_idle_model_and_refuses_over_a_busy_one(
    tmp_path: Path, make_runner
) -> None:
    found = await models(tmp_path, "a", "b")
    runner = make_runner(max_loaded=1)
    for model in found.values():
        runner.add(model)
    runner.load("a")
    await until(lambda: hot(runner, "a"))
    runner.request_started("a")
    refusal = runner.load("b")
    assert refusal is not None and "max_loaded" in refusal.message
    assert runner.fields()["pool_room"] == 0  # the busy model takes the only slot
    runner.request_finished("a")
    assert runner.load("b") is None
    await until(lambda: hot(runner, "b"))
    assert list(runner.servers) == ["b"]
    assert runner.pool.state("a") == "cold"


async def test_an_unload_drains_its_requests_first(tmp_path: Path, make_runner) -> None:
    found = await models(tmp_path, "a")
    runner = make_runner()
    runner.add(found["a"])
    runner.load("a")
    await until(lambda: hot(runner, "a"))
    runner.request_started("a")
    assert runner.unload("a", "test") is True
    assert runner.base_url("a") is None  # takes no new requests
    assert runner.fields()["pool"]["a"]["state"] == "unloading"
    await asyncio.sleep(0.5)
    assert "a" in runner.servers, "stopped with a request in flight"
    runner.request_finished("a")
    await until(lambda: "a" not in runner.servers)
    assert runner.unload("a", "again") is False


async def test_a_pinned_model_stays_and_pool_room_counts_it(tmp_path: Path, make_runner) -> None:
    found = await models(tmp_path, "a", "b")
    runner = make_runner(idle_ttl=0.3, memory_budget=10 << 30)  # "b" would cool off at once
    runner.add(found["a"], pinned=True)
    runner.add(found["b"])
    runner.load("a")
    await until(lambda: hot(runner, "a"))
    await asyncio.sleep(0.8)
    assert hot(runner, "a")
    fields = runner.fields()
    assert fields["pool"]["a"] == {"state": "hot", "since": fields["pool"]["a"]["since"],
                                   "pinned": True}  # fmt: skip
    assert fields["pool_room"] == (10 << 30) - runner.pool.snapshot(0).held_bytes


async def test_a_server_that_cannot_start_is_failed_with_its_cause(
    tmp_path: Path, make_runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = await models(tmp_path, "a")
    monkeypatch.setenv("FAKE_LLAMA_SIGNAL", "SIGSEGV")
    runner = make_runner()
    runner.add(found["a"])
    runner._options = LlamaOptions(max_start_failures=1, backoff_initial=0.05)
    runner.load("a")
    await until(lambda: runner.pool.state("a") == "failed")
    assert "SIGSEGV" in runner.fields()["failures"]["a"]
    assert runner.fields()["serving"] == {"a": "failed"}


async def test_no_binary_fails_the_load(tmp_path: Path) -> None:
    found = await models(tmp_path, "a")

    async def no_binary() -> Path:
        raise ServingError("llama-server not found")

    runner = ModelRunner(PoolSettings(), no_binary, log_dir=tmp_path, options=LlamaOptions())
    runner.add(found["a"])
    runner.load("a")
    await until(lambda: runner.pool.state("a") == "failed")
    assert runner.fields()["failures"] == {"a": "llama-server not found"}
    await runner.stop()
    assert runner.load("a") is not None  # stopping: refused
    assert time.monotonic() > 0
