"""Smoke runs of the scripts behind the docs' figures (``--quick``), so that they keep
working as the package changes. The figures themselves are in the docs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_repro_directions_quick(tmp_path):
    out = _run(
        str(ROOT / "scripts" / "repro_directions.py"), "--quick", "--out", "run", cwd=tmp_path
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    import importlib.util

    spec = importlib.util.spec_from_file_location("repro", ROOT / "scripts" / "repro_directions.py")
    repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repro)
    assert [r["alpha"] for r in results["top"]] == repro.ALPHAS
    assert [r["alpha"] for r in results["closed"]] == repro.CLOSED
    assert {"random", "closed", "cosine_top", "gold_only", "loss_history"} <= set(results)
    for row in results["top"]:
        assert 0 <= row["present"]["accuracy"] <= 1 and 0 <= row["absent"]["accuracy"] <= 1
        assert 0 <= row["present"]["attn_relevant"] <= 1
    assert "### top" in out and "| auto |" in out
    assert (tmp_path / "run" / "directions_learned.safetensors").is_file()


@pytest.mark.slow
def test_head_study_quick(tmp_path):
    out = _run(str(ROOT / "scripts" / "head_study.py"), "--quick", "--out", "hs.json", cwd=tmp_path)
    result = json.loads((tmp_path / "hs.json").read_text())
    methods = result["methods"]
    assert list(methods) == [
        "contextual score",
        "zero ablation",
        "resample ablation",
        "gold-only patching",
    ]
    for table in methods.values():
        assert len(table["top"]) == 3
        for l, h in table["top"]:  # every top head's interval holds its value
            assert table["low"][l][h] <= table["values"][l][h] <= table["high"][l][h]
    assert "| contextual score / gold-only patching |" in out


@pytest.mark.slow
def test_bench_steering_quick(tmp_path):
    out = _run(str(ROOT / "benchmarks" / "bench_steering.py"), "--quick", cwd=tmp_path)
    ratios = re.findall(r"^steer qk\s+[\d.]+\s+([\d.]+)", out, flags=re.MULTILINE)
    assert len(ratios) == 1 and float(ratios[0]) > 0
    assert out.count("speed-up") == 2
    diffs = re.findall(r"max \|d_q difference\|\s+:\s+(\S+)", out)
    assert len(diffs) == 2 and all(float(d) < 1e-5 for d in diffs)  # the same computation


RELEASE = ROOT.parent / "shared" / "reference" / "focus_direction_release"  # beside the checkout


@pytest.mark.slow
@pytest.mark.skipif(not RELEASE.is_dir(), reason="release files not present")
def test_convert_release_reproduces_the_shipped_files(tmp_path):
    """The shipped directions are what scripts/convert_release.py makes of the release,
    and --check sees a difference."""
    script = str(ROOT / "scripts" / "convert_release.py")
    out = _run(script, "--release", str(RELEASE), "--check", cwd=tmp_path)
    assert "matches the release (8 files)" in out
    _run(script, "--release", str(RELEASE), "--out", str(tmp_path / "copy"), cwd=tmp_path)
    heads = tmp_path / "copy" / "Qwen_Qwen2.5-7B-Instruct.heads.json"
    heads.write_text(heads.read_text().replace("[19, 15], [19, 22]", "[19, 22], [19, 15]"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [script, "--release", str(RELEASE), "--check", "--out", str(tmp_path / "copy")]
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "Qwen_Qwen2.5-7B-Instruct.heads.json" in proc.stderr


@pytest.mark.slow
def test_bench_fused_quick(tmp_path):
    out = _run(
        str(ROOT / "benchmarks" / "bench_fused.py"), "--quick", "--json", "f.json", cwd=tmp_path
    )
    results = json.loads((tmp_path / "f.json").read_text())
    assert {"bound@512", "ours@1024", "authors@512", "steering", "evaluate"} <= set(results)
    assert results["evaluate"]["same_rows"] is True
    assert re.search(r"contextual_scores / fused bound, time: [\d.]+x at 512", out)
    assert "authors' style / contextual_scores at 512" in out and "| 480 | ours |" in out
