"""The environment of the node a worker runs on: device, driver, library versions, hostname.

Named facts only, as in ``orthrus.bench.environment``: no environment variables, no tokens, no
paths from the user's home; the hostname names the node in every record it measures.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any


def node_name() -> str:
    """The name records carry in ``node``: the host's name (the machine, not the worker process)."""
    return socket.gethostname() or "unknown-host"


def node_environment(devices: list[str]) -> dict[str, Any]:
    """What this node measures with: its devices (by name), CUDA driver, CPU, Python and library versions."""
    import torch

    from orthrus.bench.environment import device_info, package_versions
    from orthrus.bench.trackers import nvml_driver_version
    from orthrus.results.machine import cpu_model

    packages = package_versions()
    try:
        packages["ray"] = metadata.version("ray")
    except metadata.PackageNotFoundError:
        packages["ray"] = None
    devices_info = device_info(devices)
    return {
        "hostname": node_name(),
        "device_kind": device_kind({"devices": devices_info}),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda,
            "driver": nvml_driver_version(),
        },
        "devices": devices_info,
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "machine": platform.machine()},
        "torch_threads": torch.get_num_threads(),
    }


def device_kind(environment: dict[str, Any]) -> str:
    """One label for the kind of device a node measured on (its devices' names), for comparing nodes."""
    names = sorted({str(d.get("name") or d.get("device")) for d in environment.get("devices") or []})
    return ", ".join(names) or "unknown device"
