"""The declared dependency range is the tested range: pyproject.toml's floors are the releases the
CI floor run installs, and that run covers every engine, the harness, the report and the gates."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.version import Version

from orthrus.engines import ENGINES

ROOT = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, str]:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for requirement in declared:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement)
        if match:
            floors[match.group(1).lower()] = match.group(2)
    return floors


def test_the_floor_run_installs_exactly_the_declared_floors():
    pins = {}
    for line in (ROOT / ".ci" / "floor-constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip():
            pins[name.strip().lower()] = version.strip()
    floors = _floors()
    assert pins and all(floors.get(name) is not None for name in pins)
    for name, version in pins.items():
        assert Version(floors[name]) == Version(version), name
    assert Version(floors["transformers"]) <= Version("5.17.0")  # the GPU machine's stack
    assert Version(floors["torch"]) <= Version("2.11.0")


def test_the_floor_run_covers_every_engine_the_harness_the_report_and_the_gates():
    listed = [
        line.strip() for line in (ROOT / ".ci" / "floor-tests.txt").read_text().splitlines() if line.strip()[:1] not in "#"
    ]
    assert all((ROOT / path).is_file() for path in listed)
    text = "\n".join((ROOT / path).read_text() for path in listed)
    for engine in ENGINES:
        assert f'"{engine}"' in text, f"no floor test names engine {engine!r}"
    for part in ("test_bench_run.py", "test_report_render.py", "test_gates.py"):
        assert f"tests/{part}" in listed
    assert "floor-tests.txt" in (ROOT / ".ci" / "run").read_text()
