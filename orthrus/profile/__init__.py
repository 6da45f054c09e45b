"""Device latency profiles and projected speedups (issue 11).

- ``shapes``: published Qwen3 architectures (``qwen3-shape:8b``) as random-weight dual-view models;
- ``timing``: time decode(1), verify(K) and draft(K) per context length -> one JSON profile;
- ``project``: tokens per cycle from acceptance x a profile -> projected tokens/s and speedup;
- ``report``: the "projected on <device>" section (HTML, escaped) and its text form;
- ``cli``: ``python -m orthrus profile`` and ``run_bench.py project`` (``main_project``).

Layer: imports orthrus.models, orthrus.engines, orthrus.errors and orthrus.results, never
orthrus.bench or orthrus.report.
"""
