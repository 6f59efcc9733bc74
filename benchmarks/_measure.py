"""Peak-memory and time measurement for the benchmark scripts.

Each measurement runs in a fresh subprocess: it builds what it needs, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the operation and reports
the peak resident memory above what was resident just before, and the wall time.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(op: Callable[[], Any], repeats: int = 1) -> dict[str, float]:
    """Run ``op`` (after one warm-up) and return ``{"seconds", "peak_mib"}``.

    ``peak_mib`` is the peak RSS during the timed runs minus the RSS just before.
    """
    op()  # warm-up: allocator pools, lazy init
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    for _ in range(repeats):
        op()
    seconds = (time.perf_counter() - start) / repeats
    peak = _status_kib("VmHWM")
    return {"seconds": seconds, "peak_mib": (peak - before) / 1024}


def run_isolated(script: str, case: str, *args: str) -> dict[str, float]:
    """Run ``python script --case CASE ARGS`` and parse the JSON line it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--case", case, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
