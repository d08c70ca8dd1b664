"""What this host has: CPU, RAM and NVIDIA GPUs (ephemeral, gossiped in ``resources``).

GPUs come from NVML (``pynvml``, provided by ``nvidia-ml-py``).  Without a
driver ``nvmlInit()`` raises ``NVMLError_LibraryNotFound``: that means no GPU,
not an error (DESIGN.md §9); the answer is remembered so NVML is tried once.
``pynvml`` is imported only on a machine with an NVIDIA driver (it costs every
daemon 1.1 MiB otherwise).  A GPU's live readings (utilisation, temperature,
power) are optional: one the GPU does not support reads None, the GPU stays.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psutil

log = logging.getLogger(__name__)

GiB = 1 << 30
# Keep this much RAM for the OS, the daemon and llama-server's own buffers when
# a model is sized against RAM: 10 % of it, at least 1 GiB.
RAM_MARGIN_FRACTION = 0.10
RAM_MARGIN_MIN = 1 * GiB
VRAM_RESERVE_FRACTION = 0.05  # --memory-budget auto leaves this much VRAM to the driver,
VRAM_RESERVE_MIN = 512 * 1024 * 1024  # the desktop and other programs (at least this)

_nvml_ready: bool | None = None  # None: not tried yet; False: no usable NVML
_pynvml: ModuleType | None = None  # the initialised bindings, once _nvml_ready


def driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (its kernel module or NVML library)."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(
        ctypes.util.find_library("nvidia-ml")
    )


def _load_pynvml() -> ModuleType:
    """Import the NVML bindings (called only where a driver is present)."""
    import pynvml

    return pynvml


def _nvml() -> ModuleType | None:
    """NVML, initialised once; None for good when there is no driver or no GPU."""
    global _nvml_ready, _pynvml
    if _nvml_ready is None:
        _nvml_ready = False
        if not driver_present():
            log.debug("no NVIDIA driver")
            return None
        pynvml = _load_pynvml()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.debug("no NVIDIA GPU: %s", exc)
            return None
        _pynvml, _nvml_ready = pynvml, True
    return _pynvml if _nvml_ready else None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _watts(milliwatts: Any) -> float | None:
    return None if milliwatts is None else round(milliwatts / 1000, 1)


def _gpu(pynvml: ModuleType, index: int) -> dict[str, Any] | None:
    """One GPU's figures, or None when its memory cannot be read."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = _text(pynvml.nvmlDeviceGetName(handle))
    except pynvml.NVMLError as exc:  # a GPU fallen off the bus, MIG quirks: skip it
        log.debug("NVML GPU %d unreadable: %s", index, exc)
        return None

    def read(call: Callable[[], Any]) -> Any:
        """``call()``, or None when NVML cannot say (NotSupported on consumer, MIG GPUs)."""
        try:
            return call()
        except pynvml.NVMLError:
            return None

    uuid = read(lambda: pynvml.nvmlDeviceGetUUID(handle))
    return {
        "index": index,
        "name": name,
        "uuid": None if uuid is None else _text(uuid),
        "util_percent": read(lambda: int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        "vram_total": int(memory.total),
        "vram_used": int(memory.used),
        "temperature_c": read(
            lambda: int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        ),
        "power_w": _watts(read(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))),
        "power_limit_w": _watts(read(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))),
    }


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs: VRAM in bytes, utilisation in %, temperature in °C, power in W
    (readings a GPU does not support are None); [] when there are none."""
    pynvml = _nvml()
    if pynvml is None:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        log.debug("NVML device count failed: %s", exc)
        return []
    return [gpu for index in range(count) if (gpu := _gpu(pynvml, index)) is not None]


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages; None where the OS has none (Windows)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host_resources() -> dict[str, Any]:
    """CPU, RAM and GPUs of this host, as plain data for the announcement."""
    memory = psutil.virtual_memory()
    return {
        "cpu_count": os.cpu_count() or 1,
        # Since the previous call (the first call after import reads 0.0).
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_avg": load_avg(),
        "ram_total": int(memory.total),
        # total - available, not psutil's "used": page cache is reclaimable.
        "ram_used": int(memory.total - memory.available),
        "gpus": gpus(),
    }


def model_capacity_bytes(resources: dict[str, Any]) -> int:
    """Bytes of model this host can load now: free VRAM on all GPUs, else free RAM
    minus a safety margin.  :func:`model_memory_kind` says which of the two it is."""
    gpu_list = resources.get("gpus") or []
    if gpu_list:
        return sum(max(0, g["vram_total"] - g["vram_used"]) for g in gpu_list)
    total = resources.get("ram_total", 0)
    free = total - resources.get("ram_used", 0)
    margin = max(RAM_MARGIN_MIN, int(total * RAM_MARGIN_FRACTION))
    return max(0, free - margin)


def memory_budget_auto(resources: dict[str, Any]) -> int:
    """``--memory-budget auto``: all VRAM (CPU-only: all RAM) less a reserve, for the
    loaded models together.  Unlike :func:`model_capacity_bytes` it does not shrink as
    our own models load: the pool counts those itself."""
    gpu_list = resources.get("gpus") or []
    if gpu_list:
        total = sum(g["vram_total"] for g in gpu_list)
        return max(0, total - max(VRAM_RESERVE_MIN, int(total * VRAM_RESERVE_FRACTION)))
    total = resources.get("ram_total", 0)
    return max(0, total - max(RAM_MARGIN_MIN, int(total * RAM_MARGIN_FRACTION)))


def model_memory_kind(resources: dict[str, Any]) -> str:
    """What :func:`model_capacity_bytes` counts: "vram" when GPUs are listed, else "ram"."""
    return "vram" if resources.get("gpus") else "ram"


psutil.cpu_percent(interval=None)  # prime the counter so the first real reading is meaningful
