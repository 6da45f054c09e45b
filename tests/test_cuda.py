"""CUDA paths (marker ``cuda``; skipped without a GPU): run by scripts/gpu_check.py on a GPU machine."""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPT = list(range(3, 200))


@pytest.fixture(scope="module")
def zoo_cuda():
    from orthrus.models import load_causal_lm

    return load_causal_lm("tiny-orthrus", dtype="float32", device="cuda")


@pytest.mark.parametrize(
    "engine, options",
    [("orthrus", {"cache": "static"}), ("orthrus", {"cache": "dynamic"}), ("hf_generate", {}), ("prompt_lookup", {})],
)
def test_engines_on_cuda_fp32_equal_ar(zoo_cuda, engine, options):
    from orthrus.engines import build_engine

    reference = build_engine("ar", zoo_cuda).generate(PROMPT, 48)
    result = build_engine(engine, zoo_cuda, **options).generate(PROMPT, 48)
    assert result.tokens == reference.tokens


def test_static_cache_lives_on_the_device(zoo_cuda):
    from orthrus.engines import build_engine

    engine = build_engine("orthrus", zoo_cuda, cache="static")
    seen = []
    engine.after_cycle = lambda cache, lengths, tokens: seen.append({t.device.type for t in (*cache.keys, *cache.values)})
    engine.generate(PROMPT, 32)
    assert seen and all(devices == {"cuda"} for devices in seen)


def test_nvml_readings_are_plausible(zoo_cuda):
    pytest.importorskip("pynvml")
    try:
        from orthrus.bench.trackers import NvmlReader
    except ImportError:  # pragma: no cover - moved by a refactor
        pytest.skip("NvmlReader not found")
    reader = NvmlReader(torch.device("cuda"))
    assert reader.available
    device_used, process_used = reader.read()
    total_mib = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert device_used is not None and 0 < device_used <= total_mib * 1.01
    allocated_mib = torch.cuda.memory_allocated() / 2**20
    assert device_used >= allocated_mib
    if process_used is not None:  # containers often hide per-process figures
        assert 0 < process_used <= device_used * 1.01


def test_timers_are_synchronised():
    from orthrus.profile.timing import Timer

    timer = Timer(torch.device("cuda"))
    assert timer.name == "cuda_events"
    a = torch.randn(4096, 4096, device="cuda")

    def work() -> None:
        for _ in range(20):
            a @ a

    timer(work)  # warm up
    event_ms = timer(work)
    torch.cuda.synchronize()
    begin = time.perf_counter()
    work()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - begin) * 1e3
    assert event_ms > 1.0  # 20 GEMMs of 4096^3 are not free: the events saw the kernels run
    assert 0.5 * wall_ms < event_ms < 1.5 * wall_ms + 1.0


def test_engine_timings_wait_for_the_gpu(zoo_cuda):
    from orthrus.engines import build_engine

    result = build_engine("ar", zoo_cuda).generate(PROMPT, 16)
    assert result.e2e_ms > 0 and result.ttft_ms is not None and result.ttft_ms < result.e2e_ms


def test_profile_on_cuda_uses_events(zoo_cuda):
    from orthrus.profile.timing import measure_profile

    profile = measure_profile(zoo_cuda, "tiny-orthrus", contexts=[64, 256], blocks=[1, 4], repeats=3, warmup=1)
    assert profile.settings["timer"] == "cuda_events" and profile.device["type"] == "cuda"
    assert all(t.median_ms > 0 for t in profile.timings)
