"""Fuzz the suite schema: mutate keys, types and values of the shipped suites and run ``--dry-run``
in-process; every case ends with exit 0 or 2, one sentence on stderr, never a traceback, within a
memory cap.

A fixed seed and ORTHRUS_FUZZ_CASES cases (200 by default, for CI); more on demand::

    ORTHRUS_FUZZ_CASES=5000 ORTHRUS_FUZZ_SEED=7 python -m pytest tests/test_suite_fuzz.py -q
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import random
import resource
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

import orthrus.bench.prompts
import orthrus.run_cli
from orthrus.bench.prompts import PromptFactory

SUITES = sorted(Path(__file__).resolve().parents[1].glob("suites/*.yaml"))
CASES = int(os.environ.get("ORTHRUS_FUZZ_CASES", "200"))
SEED = int(os.environ.get("ORTHRUS_FUZZ_SEED", "20261128"))
MEMORY_HEADROOM = 3 * 1024**3  # bytes of address space a case may add


def _deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


VALUES: list[Any] = [
    "",
    "x",
    "orthrus",
    "ünïcödé ✓ 😀",
    "../../etc/passwd",
    "$\\alpha$",
    0,
    1,
    -1,
    -5,
    7,
    2**31,
    10**12,
    10**30,
    10**300,
    0.0,
    0.5,
    -0.5,
    1.5,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    [],
    [1, 2],
    ["a", None],
    {},
    {"a": 1},
    {"rule": "n_failed == 0"},
    "1e-3",
    "nan",
    "inf",
]


class _SharedCorpusFactory(PromptFactory):
    """The real factory, with tokenizers and tokenized corpora shared between cases (speed only:
    prompts themselves are rebuilt for every case)."""

    tokenizers: dict = {}
    streams: dict = {}

    def __init__(self) -> None:
        super().__init__()
        self._tokenizers = self.tokenizers
        self._streams = self.streams


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _random_value(rng: random.Random) -> Any:
    kind = rng.random()
    if kind < 0.08:
        return _deep(rng.choice([10, 40, 70, 200]))
    if kind < 0.12:
        return [rng.choice(VALUES[:25]) for _ in range(rng.randint(1, 4))]
    return copy.deepcopy(rng.choice(VALUES))


def mutate(raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(raw) if p]
        path = rng.choice(paths)
        parent: Any = raw
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = rng.random()
        if isinstance(parent, dict) and action < 0.2:
            del parent[last]
        elif isinstance(parent, dict) and action < 0.35:
            new_key = rng.choice([f"{last}s", str(last)[:-1] or "x", str(last).upper(), "ünï", "", "1"])
            parent[new_key] = parent.pop(last)
        elif isinstance(parent, list) and action < 0.3:
            if len(parent) > 1 or rng.random() < 0.5:
                parent.pop(last)
        elif action < 0.4:
            parent[last] = [parent[last]]  # a scalar becomes a list (or a list nests)
        else:
            parent[last] = _random_value(rng)
    return raw


def _run_case(path: Path) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: int | None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = orthrus.run_cli.main([str(path), "--dry-run", "--quiet"])
        except BaseException:  # noqa: BLE001 - the point of the test: anything escaping main is a crash
            code = None
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def memory_cap():
    """Cap this process's address space at its current size plus MEMORY_HEADROOM while the cases run."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as handle:
        size = int(handle.read().split()[0]) * resource.getpagesize()
    cap = size + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_mutated_shipped_suites_exit_0_or_2_without_a_traceback(tmp_path, monkeypatch, memory_cap):
    monkeypatch.setattr(orthrus.bench.prompts, "PromptFactory", _SharedCorpusFactory)
    monkeypatch.setattr(orthrus.run_cli, "PromptFactory", _SharedCorpusFactory, raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # suites name paths relative to the repository
    originals = {path: yaml.safe_load(path.read_text()) for path in SUITES}
    rng = random.Random(SEED)
    crashes = []
    codes = {0: 0, 2: 0}
    for case in range(CASES):
        source = rng.choice(SUITES)
        raw = mutate(originals[source], rng)
        file = tmp_path / f"case{case}.yaml"
        file.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        code, _, err = _run_case(file)
        errors = [line for line in err.splitlines() if not line.startswith(("warning:", "note:"))]
        if code not in (0, 2) or "Traceback" in err or (code == 2 and len(errors) != 1):
            suite_text = file.read_text()[:2000]
            crashes.append(f"case {case} (seed {SEED}, from {source.name}): exit {code}\n{suite_text}\n{err[-3000:]}")
            continue
        codes[code] += 1
    assert not crashes, f"{len(crashes)} of {CASES} cases crashed; the first:\n{crashes[0]}"
    assert codes[2] > 0 and codes[0] > 0, codes  # the mutations reach both outcomes
