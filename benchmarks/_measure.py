"""Peak-memory and time measurement for the benchmark scripts.

Each measurement runs in a fresh subprocess: it builds what it needs, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the operation and reports
the peak resident memory above what was resident just before, and the wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


def run_cases(
    script: str, doc: str, cases: Sequence[str], run_case: Callable[[str], dict]
) -> tuple[dict[str, dict], str | None] | None:
    """The command line shared by the benchmarks that compare isolated cases.

    ``--case C`` runs one case in this process and prints its JSON (what
    :func:`run_isolated` reads); returns None. Otherwise every case runs in its own
    process: returns the results by case and the ``--json`` path (or None).
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return None
    return {c: run_isolated(script, c) for c in cases}, args.json


def documents_prompt(doc_words: int, n_docs: int = 20, relevant: int = 7, n_response: int = 16):
    """A word-tokenizer prompt of ``n_docs`` documents of ``doc_words`` words each, the
    ``relevant``-th relevant, followed by a response of ``n_response`` words."""
    from focuslens import LabeledPrompt

    docs = [
        " ".join(f"t{(d * 997 + i * 31) % 50000}" for i in range(doc_words)) for d in range(n_docs)
    ]
    text = "t1 t2 " + " ".join(docs) + " t1"
    spans, pos = [], len("t1 t2 ")
    for d in docs:
        spans.append((pos, pos + len(d)))
        pos += len(d) + 1
    response = " ".join(f"t{50000 + i}" for i in range(n_response))
    rest = spans[:relevant] + spans[relevant + 1 :]
    return LabeledPrompt(text, spans[relevant], rest, ["r0"], response=response)


def print_ratios(res: dict[str, dict], width: int, base: str = "forward") -> None:
    """Time and peak memory of each case, and their ratios to the ``base`` case."""
    ref = res[base]
    print(f"{'case':<{width}}{'time s':>9}{'peak MiB':>10}{'time/fwd':>10}{'mem/fwd':>9}")
    for case, r in res.items():
        print(
            f"{case:<{width}}{r['seconds']:>9.3f}{r['peak_mib']:>10.0f}"
            f"{r['seconds'] / ref['seconds']:>10.2f}{r['peak_mib'] / max(ref['peak_mib'], 1):>9.2f}"
        )
