"""Moved to ``orthrus.results.rundir`` (the one reader and writer of a run directory); these names
are re-exported for callers not yet updated."""

from orthrus.results.record import record_key
from orthrus.results.rundir import RESULTS_FILE, ResultsWriter, read_records, write_json

__all__ = ["RESULTS_FILE", "ResultsWriter", "read_records", "record_key", "write_json"]
