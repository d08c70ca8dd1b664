"""Host resources: CPU, RAM, NVIDIA GPUs, and how much model fits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from meshllm import resources
from meshllm.resources import GiB, host_resources, model_capacity_bytes, model_memory_kind


@pytest.fixture
def fresh_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget whether NVML was initialised, as in a new process with an NVIDIA driver."""
    monkeypatch.setattr(resources, "_nvml_ready", None)
    monkeypatch.setattr(resources, "driver_present", lambda: True)


def test_without_a_driver_nvml_is_never_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "_nvml_ready", None)
    monkeypatch.setattr(resources, "driver_present", lambda: False)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: pytest.fail("NVML initialised"))
    assert resources.gpus() == []


def test_host_resources_shape() -> None:
    res = host_resources()

    assert set(res) == {"cpu_count", "cpu_percent", "ram_total", "ram_used", "gpus"}
    assert res["cpu_count"] >= 1
    assert 0.0 <= res["cpu_percent"] <= 100.0
    assert 0 < res["ram_used"] < res["ram_total"]
    assert isinstance(res["gpus"], list)
    for gpu in res["gpus"]:  # real GPUs only where there is a driver
        assert set(gpu) == {"index", "name", "vram_total", "vram_used"}
        assert 0 <= gpu["vram_used"] <= gpu["vram_total"]


def test_no_driver_means_no_gpu_and_is_tried_once(
    fresh_nvml: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def no_library() -> None:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)

    assert host_resources()["gpus"] == []
    assert resources.gpus() == []
    assert calls == [1]


def fake_nvml(monkeypatch: pytest.MonkeyPatch, devices: list[tuple[Any, int, int]]) -> list[int]:
    """Patch pynvml to show ``devices`` as (name, total, used); returns nvmlInit calls."""
    inits: list[int] = []

    def memory(handle: int) -> SimpleNamespace:
        if devices[handle] is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        _, total, used = devices[handle]
        return SimpleNamespace(total=total, used=used, free=total - used)

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: inits.append(1))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(devices))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", memory)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: devices[h][0])
    return inits


def test_gpus_from_nvml(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    inits = fake_nvml(
        monkeypatch,
        [("NVIDIA H100", 80 * GiB, 10 * GiB), (b"Tesla T4", 16 * GiB, 1 * GiB)],
    )

    first = host_resources()
    second = host_resources()

    assert first["gpus"] == [
        {"index": 0, "name": "NVIDIA H100", "vram_total": 80 * GiB, "vram_used": 10 * GiB},
        {"index": 1, "name": "Tesla T4", "vram_total": 16 * GiB, "vram_used": 1 * GiB},
    ]
    assert second["gpus"] == first["gpus"]
    assert inits == [1]  # nvmlInit once per process
    assert model_capacity_bytes(first) == 70 * GiB + 15 * GiB
    assert model_memory_kind(first) == "vram"


def test_unreadable_gpu_is_skipped(fresh_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, [None, ("NVIDIA L4", 24 * GiB, 0)])

    assert [g["index"] for g in resources.gpus()] == [1]


@pytest.mark.parametrize(
    ("ram_total", "ram_used", "capacity"),
    [
        (16 * GiB, 4 * GiB, 12 * GiB - int(1.6 * GiB)),  # margin: 10 % of RAM
        (4 * GiB, 1 * GiB, 2 * GiB),  # margin: at least 1 GiB
        (4 * GiB, 3.5 * GiB, 0),  # never negative
        (0, 0, 0),
    ],
)
def test_model_capacity_without_gpu(ram_total: int, ram_used: int, capacity: int) -> None:
    res = {"ram_total": ram_total, "ram_used": int(ram_used), "gpus": []}

    assert model_capacity_bytes(res) == capacity
    assert model_memory_kind(res) == "ram"  # a CPU-only node lends RAM, never VRAM


def test_model_capacity_gpu_full() -> None:
    res = {
        "ram_total": 64 * GiB,
        "ram_used": 0,
        "gpus": [{"index": 0, "name": "x", "vram_total": 8 * GiB, "vram_used": 8 * GiB}],
    }

    assert model_capacity_bytes(res) == 0  # VRAM counts when there is a GPU, not RAM
    assert model_memory_kind(res) == "vram"


def test_model_capacity_of_this_host() -> None:
    res = host_resources()
    assert model_capacity_bytes(res) >= 0
    assert model_memory_kind(res) == ("vram" if res["gpus"] else "ram")


def test_model_memory_kind_of_unknown_resources() -> None:
    assert model_memory_kind({}) == "ram"


def test_memory_budget_auto_is_all_memory_less_a_reserve() -> None:
    from meshllm.resources import memory_budget_auto

    gib = 1 << 30
    cpu = {"ram_total": 24 * gib, "ram_used": 20 * gib, "gpus": []}
    assert memory_budget_auto(cpu) == 24 * gib - int(24 * gib * 0.10)  # used RAM is ours
    small = {"ram_total": 4 * gib, "gpus": []}
    assert memory_budget_auto(small) == 3 * gib  # at least 1 GiB stays free
    gpus = {"ram_total": 64 * gib, "gpus": [{"vram_total": 24 * gib, "vram_used": 23 * gib},
                                             {"vram_total": 8 * gib, "vram_used": 0}]}  # fmt: skip
    assert memory_budget_auto(gpus) == 32 * gib - int(32 * gib * 0.05)
    assert memory_budget_auto({"ram_total": 0, "gpus": []}) == 0
