"""Host resources: CPU, RAM, NVIDIA GPUs, and how much model fits."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import msgpack
import pytest

from meshllm import resources
from meshllm.gossip.announcement import MAX_RESOURCES_BYTES, PeerAnnouncement
from meshllm.resources import GiB, host_resources, model_capacity_bytes, model_memory_kind

HOST_KEYS = {"cpu_count", "cpu_percent", "load_avg", "ram_total", "ram_used", "gpus"}
GPU_KEYS = {
    "index", "name", "uuid", "util_percent", "vram_total", "vram_used",
    "temperature_c", "power_w", "power_limit_w",
}  # fmt: skip


class FakeGpu:
    """What the fake NVML reports for one GPU; None readings raise NotSupported."""

    def __init__(self, name: Any, total: int, used: int, **readings: Any) -> None:
        self.name, self.total, self.used = name, total, used
        self.readings = {"uuid": f"GPU-{name!s}", "util": 0, "temp": 40, "power": 50_000,
                         "limit": 300_000} | readings  # fmt: skip


def fake_pynvml(devices: list[FakeGpu | None], init_error: int | None = None) -> ModuleType:
    """A stand-in for ``pynvml`` showing ``devices`` (None: a GPU whose memory is lost)."""
    nv = ModuleType("pynvml")
    nv.inits = []  # type: ignore[attr-defined]

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    class NVMLError_NotSupported(NVMLError):  # pynvml's spelling
        def __init__(self) -> None:
            super().__init__(3)

    def reading(handle: int, key: str) -> Any:
        value = devices[handle].readings[key]  # type: ignore[union-attr]
        if value is None:
            raise NVMLError_NotSupported()
        return value

    def init() -> None:
        nv.inits.append(1)  # type: ignore[attr-defined]
        if init_error is not None:
            raise NVMLError(init_error)

    def memory(handle: int) -> SimpleNamespace:
        gpu = devices[handle]
        if gpu is None:
            raise NVMLError(15)  # NVML_ERROR_GPU_IS_LOST
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)

    def temperature(handle: int, sensor: int) -> int:
        assert sensor == nv.NVML_TEMPERATURE_GPU  # type: ignore[attr-defined]
        return reading(handle, "temp")

    nv.__dict__.update(
        NVMLError=NVMLError,
        NVMLError_NotSupported=NVMLError_NotSupported,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetName=lambda h: devices[h].name,  # type: ignore[union-attr]
        nvmlDeviceGetUUID=lambda h: reading(h, "uuid"),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=reading(h, "util"), memory=0),
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetPowerUsage=lambda h: reading(h, "power"),
        nvmlDeviceGetEnforcedPowerLimit=lambda h: reading(h, "limit"),
    )
    return nv


@pytest.fixture
def use_nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a fake NVML as in a new process with an NVIDIA driver; returns its installer."""
    monkeypatch.setattr(resources, "_nvml_ready", None)
    monkeypatch.setattr(resources, "_pynvml", None)
    monkeypatch.setattr(resources, "driver_present", lambda: True)

    def install(nv: ModuleType) -> ModuleType:
        monkeypatch.setattr(resources, "_load_pynvml", lambda: nv)
        return nv

    return install


def test_without_a_driver_nvml_is_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "_nvml_ready", None)
    monkeypatch.setattr(resources, "driver_present", lambda: False)
    monkeypatch.setattr(resources, "_load_pynvml", lambda: pytest.fail("pynvml imported"))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)

    assert resources.gpus() == []
    assert host_resources()["gpus"] == []
    assert "pynvml" not in sys.modules


def test_the_real_loader_imports_pynvml() -> None:
    real = pytest.importorskip("pynvml")
    assert resources._load_pynvml() is real


def test_fake_nvml_matches_the_real_bindings() -> None:
    """Every NVML name the fake stands in for exists in the real ``pynvml``."""
    real = pytest.importorskip("pynvml")
    fake = fake_pynvml([])
    names = [n for n in vars(fake) if n.startswith(("nvml", "NVML"))]

    assert [n for n in names if not hasattr(real, n)] == []
    assert issubclass(real.NVMLError_NotSupported, real.NVMLError)


def test_host_resources_shape() -> None:
    res = host_resources()

    assert set(res) == HOST_KEYS
    assert res["cpu_count"] >= 1
    assert 0.0 <= res["cpu_percent"] <= 100.0
    assert res["load_avg"] is None or (len(res["load_avg"]) == 3 and min(res["load_avg"]) >= 0)
    assert 0 < res["ram_used"] < res["ram_total"]
    assert isinstance(res["gpus"], list)
    for gpu in res["gpus"]:  # real GPUs only where there is a driver
        assert set(gpu) == GPU_KEYS
        assert 0 <= gpu["vram_used"] <= gpu["vram_total"]


def test_load_avg_without_os_support(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(resources.os, "getloadavg", unsupported)
    assert host_resources()["load_avg"] is None
    monkeypatch.delattr(resources.os, "getloadavg")  # Windows
    assert resources.load_avg() is None


def test_load_avg_is_one_five_fifteen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (1.234, 0.5, 0.25))
    assert resources.load_avg() == [1.23, 0.5, 0.25]


def test_nvml_init_failure_means_no_gpu_and_is_tried_once(use_nvml: Any) -> None:
    nv = use_nvml(fake_pynvml([FakeGpu("NVIDIA L4", 24 * GiB, 0)], init_error=12))

    assert host_resources()["gpus"] == []
    assert resources.gpus() == []
    assert nv.inits == [1]


def test_gpus_from_nvml(use_nvml: Any) -> None:
    h100 = FakeGpu("NVIDIA H100", 80 * GiB, 10 * GiB, uuid="GPU-1", util=87, temp=71,
                   power=412_345, limit=700_000)  # fmt: skip
    t4 = FakeGpu(b"Tesla T4", 16 * GiB, 1 * GiB, uuid=b"GPU-2", util=3,
                 temp=None, power=None, limit=None)  # fmt: skip
    nv = use_nvml(fake_pynvml([h100, t4]))

    first = host_resources()
    second = host_resources()

    assert first["gpus"] == [
        {"index": 0, "name": "NVIDIA H100", "uuid": "GPU-1", "util_percent": 87,
         "vram_total": 80 * GiB, "vram_used": 10 * GiB, "temperature_c": 71,
         "power_w": 412.3, "power_limit_w": 700.0},
        {"index": 1, "name": "Tesla T4", "uuid": "GPU-2", "util_percent": 3,
         "vram_total": 16 * GiB, "vram_used": 1 * GiB, "temperature_c": None,
         "power_w": None, "power_limit_w": None},
    ]  # fmt: skip
    assert second["gpus"] == first["gpus"]
    assert nv.inits == [1]  # nvmlInit once per process
    assert model_capacity_bytes(first) == 70 * GiB + 15 * GiB
    assert model_memory_kind(first) == "vram"


def test_every_optional_reading_can_fail(use_nvml: Any) -> None:
    bare = FakeGpu("GeForce", 8 * GiB, 1 * GiB, uuid=None, util=None, temp=None,
                   power=None, limit=None)  # fmt: skip
    use_nvml(fake_pynvml([bare]))

    [gpu] = resources.gpus()

    assert set(gpu) == GPU_KEYS
    assert (gpu["index"], gpu["name"], gpu["vram_total"]) == (0, "GeForce", 8 * GiB)
    assert {k for k, v in gpu.items() if v is None} == {
        "uuid", "util_percent", "temperature_c", "power_w", "power_limit_w"
    }  # fmt: skip


def test_unreadable_gpu_is_skipped(use_nvml: Any) -> None:
    use_nvml(fake_pynvml([None, FakeGpu("NVIDIA L4", 24 * GiB, 0)]))

    assert [g["index"] for g in resources.gpus()] == [1]


def test_device_count_failure_means_no_gpu(use_nvml: Any) -> None:
    nv = use_nvml(fake_pynvml([FakeGpu("NVIDIA L4", 24 * GiB, 0)]))

    def count() -> int:
        raise nv.NVMLError(999)

    nv.nvmlDeviceGetCount = count
    assert resources.gpus() == []


def test_resources_fit_the_announcement_bound(use_nvml: Any) -> None:
    many = [FakeGpu(f"NVIDIA H200 NVL {i}", 141 * GiB, 1 * GiB, uuid=f"GPU-{'f' * 36}")
            for i in range(16)]  # fmt: skip
    use_nvml(fake_pynvml(many))
    res = host_resources()

    assert len(res["gpus"]) == 16
    ann = PeerAnnouncement("n", "m", resources=res)
    assert PeerAnnouncement.from_wire(ann.to_wire()).resources == res
    assert len(msgpack.packb(res, use_bin_type=True)) < MAX_RESOURCES_BYTES


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


def test_a_gpu_nodes_requests_are_costed_by_the_power_nvml_reads(use_nvml: Any) -> None:
    from meshllm.records.cost import serving_watts

    h100 = FakeGpu("NVIDIA H100", 80 * GiB, 10 * GiB, power=412_345)  # milliwatts
    t4 = FakeGpu("Tesla T4", 16 * GiB, 1 * GiB, power=None)  # reads no power
    use_nvml(fake_pynvml([h100, t4]))
    assert serving_watts(host_resources(), cpu_watts=65.0) == 412.3  # W, to 0.1 as reported
