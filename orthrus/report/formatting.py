"""Number formatting shared by the report pages, ``compare`` and the gates' outputs: one way to
write a figure, so a value reads the same in report.html, the compare page and a gate table."""

from __future__ import annotations

from typing import Any

from orthrus.results.derived import is_present


def fmt(value: Any) -> str:
    if not is_present(value):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if float(value).is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)
