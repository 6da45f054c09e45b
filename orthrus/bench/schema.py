"""Moved: the suite module is split by concern into ``orthrus.bench.suite`` (spec, load, overrides,
checks, models, engines, prompt_sources, validate). This re-export remains only for importers not
yet moved (orthrus/bench/merge.py); import from ``orthrus.bench.suite.*`` instead."""

from orthrus.bench.suite.load import parse_yaml
from orthrus.bench.suite.spec import suite_hash

__all__ = ["parse_yaml", "suite_hash"]
