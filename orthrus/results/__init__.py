"""The results of a benchmark: the record of one measurement, the run directory (its one reader and
writer), the summary table, the vocabulary of axes and metrics, and the metrics derived from
records, each written once.

This package sits below ``orthrus.bench`` (which writes results) and ``orthrus.report`` (which
reads them) and imports neither; it may import ``orthrus.engines``, ``orthrus.models``,
``orthrus.errors`` and ``orthrus.quality``. The names below are loaded when first used, so that
importing one light module of the package (the vocabulary, which the pure schedule reads) does not
load torch; the summary (pandas) is imported from ``orthrus.results.summary``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AR_ENGINE": "derived",
    "ar_counterpart": "derived",
    "kv_overhead_bytes": "derived",
    "pooled_acceptance": "derived",
    "ENGINE_FACTS": "record",
    "RECORD_VERSION": "record",
    "MeasurementRecord": "record",
    "record_key": "record",
    "RESULTS_FILE": "rundir",
    "ResultsWriter": "rundir",
    "read_json": "rundir",
    "read_jsonl": "rundir",
    "read_records": "rundir",
    "write_json": "rundir",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'orthrus.results' has no attribute {name!r}")
    return getattr(importlib.import_module(f"orthrus.results.{_WHERE[name]}"), name)
