"""What a run ran on: package versions, devices, CPU, threads, dtypes, git commit, suite hash.

Only named facts are collected; the process environment is never copied wholesale (no tokens or
secrets end up in results), only the few threading variables that change timings.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from orthrus.bench.trackers import nvml_driver_version
from orthrus.results.machine import cpu_model

PACKAGES = (
    "orthrus-bench",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "PyYAML",
    "tqdm",
    "nvidia-ml-py",
    "accelerate",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__
    return versions


def git_commit(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The project's commit and whether tracked files differ from it (None outside a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(devices: list[str]) -> list[dict[str, Any]]:
    info = []
    for name in sorted(set(devices)):
        device = torch.device(name)
        entry: dict[str, Any] = {"device": name, "type": device.type}
        if device.type == "cuda" and torch.cuda.is_available():
            index = device.index if device.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            entry.update(
                name=props.name,
                total_memory_mib=props.total_memory / 2**20,
                capability=f"{props.major}.{props.minor}",
                multiprocessors=props.multi_processor_count,
            )
        else:
            entry["name"] = cpu_model()
        info.append(entry)
    return info


def collect_environment(
    devices: list[str], dtypes: list[str], suite_sha256: str, suite_file_sha256: str | None
) -> dict[str, Any]:
    import os

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "driver": nvml_driver_version(),
        },
        "devices": device_info(devices),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "machine": platform.machine()},
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "variables": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        },
        "dtypes": sorted(set(dtypes)),
        "git": git_commit(),
        "suite_sha256": suite_sha256,  # of the effective suite (after overrides), as in suite.yaml
        "suite_file_sha256": suite_file_sha256,  # of the file as given on the command line
    }
