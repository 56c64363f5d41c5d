"""Shared helpers for benchmarks: timing, environment record, JSON output.

Every benchmark times after a warm-up, blocks on results (``block_until_ready`` / CUDA sync),
reports the median and the spread (min, max, interquartile range) of repeated runs, and records the
device, versions, git commit and command line next to its numbers.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np


def environment() -> dict[str, Any]:
    """Device name, library versions, git commit and command of this run."""
    import jax

    info: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except Exception:
        pass
    # MLFF_JAX_COMMIT wins: the GPU machine gets a copy of the working tree whose .git may be stale.
    info["git_commit"] = os.environ.get("MLFF_JAX_COMMIT")
    if not info["git_commit"]:
        try:
            info["git_commit"] = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        except Exception:
            info["git_commit"] = "unknown"
    try:
        out = subprocess.check_output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], text=True)
        info["gpu"] = out.strip()
    except Exception:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_torch"] = torch.version.cuda
    except Exception:
        pass
    return info


def time_fn(fn: Callable[[], Any], sync: Callable[[Any], Any], repeats: int = 30, warmup: int = 3, min_time_s: float = 0.0,
            on_warm: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median and spread of the wall time of ``sync(fn())`` in microseconds, after ``warmup`` calls
    (then ``on_warm()``, e.g. to forget what the warm-up recorded)."""
    for _ in range(warmup):
        sync(fn())
    if on_warm is not None:
        on_warm()
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start_all) < min_time_s:
        t0 = time.perf_counter()
        sync(fn())
        samples.append((time.perf_counter() - t0) * 1e6)
        if len(samples) >= 10 * repeats:
            break
    a = np.asarray(samples)
    return {
        "median_us": float(np.median(a)),
        "min_us": float(a.min()),
        "max_us": float(a.max()),
        "iqr_us": float(np.percentile(a, 75) - np.percentile(a, 25)),
        "repeats": int(a.size),
    }


def jax_sync(result):
    import jax

    return jax.block_until_ready(result)


def peak_memory_bytes() -> int | None:
    """Peak device memory of the first JAX device so far (None where the backend does not say)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    print(f"wrote {path}")
