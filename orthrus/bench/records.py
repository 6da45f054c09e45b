"""Moved to ``orthrus.results`` (the record of one measurement and the summary columns); these
names are re-exported for callers not yet updated."""

from orthrus.results.record import RECORD_VERSION, MeasurementRecord
from orthrus.results.summary import SUMMARY_COLUMNS

__all__ = ["RECORD_VERSION", "SUMMARY_COLUMNS", "MeasurementRecord"]
