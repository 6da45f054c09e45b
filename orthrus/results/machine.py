"""What machine a measurement was made on, as recorded beside it (environment.json, profiles)."""

from __future__ import annotations

import platform


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo, else what the platform module knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
