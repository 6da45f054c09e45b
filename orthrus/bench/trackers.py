"""Memory trackers that run alongside one measurement; each figure is labelled by its source.

* NVML (nvidia-ml-py): memory used on the device and by this process, sampled in a background
  thread while the measurement runs, peak kept. No NVML (no driver, no GPU, CPU device): None.
* torch.cuda: max allocated / reserved since a reset at the start (None off CUDA).
* Process RSS: the kernel's peak (VmHWM) after resetting it through /proc/self/clear_refs when the
  kernel allows it; otherwise VmRSS sampled in the background thread. None where neither exists.

A figure that could not be measured is None, never 0.

Every figure is the peak of the timed region only: ``start()`` (called by the measurer after it
synchronised the device, just before ``generate``) resets torch's peak statistics and the kernel's peak
RSS, reads NVML once and starts the sampler thread; ``stop()`` (after ``generate`` and a second
synchronisation) stops and joins the thread, reads once more and reads the peaks. Nothing is read
before ``start()`` or after ``stop()`` returns (tests/test_bench_trackers.py checks it with stand-ins).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

MIB = 1024 * 1024
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class MemorySample:
    nvml_device_used_mib: float | None = None
    nvml_process_used_mib: float | None = None
    torch_max_allocated_mib: float | None = None
    torch_max_reserved_mib: float | None = None
    rss_peak_mib: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return dict(self.__dict__)


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux >= 4.0); False where not allowed."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def pci_bus_id(properties: Any) -> str | None:
    """NVML's PCI bus id string, ``"DDDDDDDD:BB:DD.0"`` (hex domain:bus:device.function), of a GPU
    from its torch device properties; None where they lack the ids.

    torch's ``pci_bus_id`` is the bus number alone, an int: handed to
    ``nvmlDeviceGetHandleByPciBusId``, which takes a string, pynvml passes the int on as a raw pointer
    and NVML reads memory at that address, a segmentation fault no ``except`` catches."""
    domain = getattr(properties, "pci_domain_id", None)
    bus = getattr(properties, "pci_bus_id", None)
    device = getattr(properties, "pci_device_id", None)
    if not all(isinstance(x, int) for x in (domain, bus, device)):
        return None
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


class NvmlReader:
    """Device-used and this-process-used memory of one GPU; ``available`` is False without NVML."""

    def __init__(self, device: torch.device) -> None:
        self.available = False
        self.handle: Any = None
        self.pynvml: Any = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.handle = self._handle(pynvml, device)
            self.available = True
        except Exception:  # noqa: BLE001 - no library, no driver, no permission: unavailable
            self.available = False

    @staticmethod
    def _handle(pynvml: Any, device: torch.device) -> Any:
        index = device.index if device.index is not None else torch.cuda.current_device()
        bus_id = pci_bus_id(torch.cuda.get_device_properties(index))
        if bus_id is not None:  # robust to CUDA_VISIBLE_DEVICES reordering
            try:
                return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
            except Exception:  # noqa: BLE001
                pass
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def read(self) -> tuple[float | None, float | None]:
        """(device used MiB, this process's used MiB); None where NVML cannot tell."""
        if not self.available:
            return None, None
        pynvml = self.pynvml
        try:
            device_used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used / MIB
        except Exception:  # noqa: BLE001
            device_used = None
        process_used = None
        try:
            pid = os.getpid()
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    process_used = proc.usedGpuMemory / MIB
        except Exception:  # noqa: BLE001 - containers often hide other pids; keep None
            process_used = None
        return device_used, process_used


class MemoryTracker:
    """``start()`` before the timed region, ``stop()`` after it: a MemorySample of the peaks in between."""

    def __init__(self, device: torch.device | str, sample_interval_ms: float = 10.0) -> None:
        self.device = torch.device(device)
        self.interval = sample_interval_ms / 1e3
        self.nvml = NvmlReader(self.device)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_device_peak: float | None = None
        self._nvml_process_peak: float | None = None
        self._rss_peak_kib: int | None = None
        self._hwm_reset = False

    def _sample(self) -> None:
        if self.nvml.available:
            device_used, process_used = self.nvml.read()
            if device_used is not None:
                self._nvml_device_peak = max(self._nvml_device_peak or 0.0, device_used)
            if process_used is not None:
                self._nvml_process_peak = max(self._nvml_process_peak or 0.0, process_used)
        if not self._hwm_reset:
            rss = _status_kib("VmRSS")
            if rss is not None:
                self._rss_peak_kib = max(self._rss_peak_kib or 0, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._nvml_device_peak = self._nvml_process_peak = None
        self._rss_peak_kib = None
        self._hwm_reset = _reset_peak_rss() and _status_kib("VmHWM") is not None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        # a sampler thread only where something must be sampled (it costs GIL time on CPU)
        if self.nvml.available or not self._hwm_reset:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="memory-tracker", daemon=True)
            self._thread.start()

    def stop(self) -> MemorySample:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._sample()
        sample = MemorySample(
            nvml_device_used_mib=self._nvml_device_peak,
            nvml_process_used_mib=self._nvml_process_peak,
        )
        if self.device.type == "cuda":
            sample.torch_max_allocated_mib = torch.cuda.max_memory_allocated(self.device) / MIB
            sample.torch_max_reserved_mib = torch.cuda.max_memory_reserved(self.device) / MIB
        if self._hwm_reset:
            hwm = _status_kib("VmHWM")
            sample.rss_peak_mib = hwm / 1024 if hwm is not None else None
        elif self._rss_peak_kib is not None:
            sample.rss_peak_mib = self._rss_peak_kib / 1024
        return sample


def nvml_driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001
        return None
