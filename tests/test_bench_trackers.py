"""Memory trackers: a figure that cannot be measured is None, never 0; peaks are peaks of the window."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from orthrus.bench import trackers
from orthrus.bench.environment import collect_environment
from orthrus.bench.trackers import MemoryTracker, NvmlReader


def test_cpu_device_gives_none_for_gpu_sources_and_a_real_rss():
    tracker = MemoryTracker("cpu")
    tracker.start()
    sample = tracker.stop()
    assert sample.nvml_device_used_mib is None and sample.nvml_process_used_mib is None
    assert sample.torch_max_allocated_mib is None and sample.torch_max_reserved_mib is None
    assert sample.rss_peak_mib is not None and sample.rss_peak_mib > 10


def test_nvml_unavailable_reads_none_not_zero(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    reader = NvmlReader(torch.device("cuda"))  # as if a GPU were asked for on a machine without a driver
    assert reader.available is False
    assert reader.read() == (None, None)
    assert NvmlReader(torch.device("cpu")).read() == (None, None)
    assert trackers.nvml_driver_version() is None


@pytest.mark.parametrize("kernel_peak", [True, False], ids=["VmHWM-reset", "sampled-VmRSS"])
def test_rss_peak_sees_memory_freed_before_the_window_ends(monkeypatch, kernel_peak):
    if not kernel_peak:
        monkeypatch.setattr(trackers, "_reset_peak_rss", lambda: False)
    tracker = MemoryTracker("cpu", sample_interval_ms=1.0)
    tracker.start()
    before = trackers._status_kib("VmRSS") / 1024
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    if not kernel_peak:
        import time

        time.sleep(0.05)  # let the sampler see it
    del block
    sample = tracker.stop()
    assert sample.rss_peak_mib is not None and sample.rss_peak_mib >= before + 60


def test_environment_names_facts_and_never_copies_the_process_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-value-123")
    env = collect_environment(["cpu"], ["float32"], "abc", None)
    assert "secret-value-123" not in repr(env)
    assert env["packages"]["torch"] == torch.__version__
    assert env["threads"]["torch_intra_op"] == torch.get_num_threads()
    assert env["devices"][0]["type"] == "cpu" and env["suite_sha256"] == "abc"


class StrictNvml:
    """A stand-in for pynvml that fails as the C library would on anything but a PCI bus id string:
    the real pynvml hands a non-str on as a raw pointer, and NVML then reads memory at that address."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        if not isinstance(bus_id, str):
            raise AssertionError(f"segmentation fault: NVML got {type(bus_id).__name__} {bus_id!r}, not a str")
        self.looked_up.append(bus_id)
        return ("handle", bus_id)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=3 * 1024 * 1024)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2 * 1024 * 1024)]


def test_nvml_looks_the_gpu_up_by_its_pci_bus_id_string(monkeypatch):
    """torch's device properties give the PCI bus number as an int; NVML needs "domain:bus:device.function"."""
    nvml = StrictNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    properties = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x18, pci_device_id=0, name="stand-in")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    reader = NvmlReader(torch.device("cuda"))
    assert reader.available and nvml.looked_up == ["00000000:18:00.0"]
    assert reader.read() == (3.0, 2.0)
    # properties without the ids (an older torch): looked up by index, never by a guessed id
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(pci_bus_id=0x18))
    assert NvmlReader(torch.device("cuda:0")).handle == ("handle", 0)


class _Device:
    """Stand-ins for the GPU the trackers read: torch's allocator (allocated, reserved and their peaks,
    as torch.cuda keeps them) and NVML's per-process and device figures, with every NVML read logged
    together with whether the timed region was open at that moment."""

    def __init__(self) -> None:
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0.0
        self.nvml_process = self.nvml_device = 0.0
        self.timed = False
        self.reads: list[bool] = []

    def use(self, allocated: float, reserved: float, process: float) -> None:
        self.allocated, self.reserved = allocated * trackers.MIB, reserved * trackers.MIB
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.nvml_process, self.nvml_device = process, process + 500

    # torch.cuda
    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def max_memory_allocated(self, device=None) -> float:
        return self.peak_allocated

    def max_memory_reserved(self, device=None) -> float:
        return self.peak_reserved

    # NvmlReader
    available = True

    def read(self) -> tuple[float, float]:
        self.reads.append(self.timed)
        return self.nvml_device, self.nvml_process


def test_gpu_memory_three_ways_is_sampled_between_the_start_and_the_end_of_the_timed_region(monkeypatch):
    """torch allocated, torch reserved and NVML per process: each is the peak of the timed region only
    (stand-ins for the GPU, so that the CPU test runs it): what was held before the region (a warm-up's
    peak) and after it is not counted, and NVML is never read outside it."""
    import time

    device = _Device()
    for name in ("reset_peak_memory_stats", "max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(trackers.torch.cuda, name, getattr(device, name))
    tracker = MemoryTracker("cuda", sample_interval_ms=2)
    tracker.nvml = device

    def timed_region(*steps: tuple[float, float, float]):
        device.timed = True
        tracker.start()
        for step in steps:
            device.use(*step)
            time.sleep(0.03)  # several sampler ticks
        sample = tracker.stop()
        device.timed = False
        return sample

    device.use(8000, 9000, 9500)  # a warm-up's peak, before the region
    device.use(1000, 2000, 2500)  # released before it starts
    first = timed_region((3000, 4000, 4500), (1500, 4000, 4500))
    assert (first.torch_max_allocated_mib, first.torch_max_reserved_mib) == (3000, 4000)
    assert (first.nvml_process_used_mib, first.nvml_device_used_mib) == (4500, 5000)
    device.use(7000, 7000, 7500)  # after the region: the next one must not see it
    device.use(500, 1000, 1500)
    second = timed_region((600, 1000, 1500))
    assert (second.torch_max_allocated_mib, second.torch_max_reserved_mib) == (600, 1000)
    assert second.nvml_process_used_mib == 1500
    assert len(device.reads) > 6 and all(device.reads), "NVML was read outside the timed region"
