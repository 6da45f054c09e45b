"""The results of a benchmark: the record of one measurement, the run directory (its one reader and
writer), the summary table, and the metrics derived from records, each written once.

This package sits below ``orthrus.bench`` (which writes results) and ``orthrus.report`` (which
reads them) and imports neither; it may import ``orthrus.engines``, ``orthrus.models``,
``orthrus.errors`` and ``orthrus.quality``. The summary (pandas) lives in
``orthrus.results.summary`` and is imported from there, so that reading records stays light.
"""

from orthrus.results.derived import AR_ENGINE, ar_counterpart, kv_overhead_bytes, pooled_acceptance
from orthrus.results.record import ENGINE_FACTS, RECORD_VERSION, MeasurementRecord, record_key
from orthrus.results.rundir import RESULTS_FILE, ResultsWriter, read_json, read_jsonl, read_records, write_json

__all__ = [
    "AR_ENGINE",
    "ENGINE_FACTS",
    "RECORD_VERSION",
    "RESULTS_FILE",
    "MeasurementRecord",
    "ResultsWriter",
    "ar_counterpart",
    "kv_overhead_bytes",
    "pooled_acceptance",
    "read_json",
    "read_jsonl",
    "read_records",
    "record_key",
    "write_json",
]
