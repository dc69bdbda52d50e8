"""The benchmark harness runs (quick mode) so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_bench_writes_results(repo, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    from bench import BENCHMARKS

    for name in BENCHMARKS:
        assert any(key.startswith(f"{name}.") for key in results["results"]), f"no result from benchmark {name}"
    assert results["meta"]["quick"] is True and not results["errors"]
    table = (out / "results.md").read_text()
    assert all(f"`{key}`" in table for key in results["results"])


def test_unknown_benchmark_is_refused(repo):
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr
