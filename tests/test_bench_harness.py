"""The benchmark harness runs (quick mode) so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


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


def test_interleaved_timing_takes_turns_and_returns_medians():
    from bench.common import interleaved_median_seconds

    calls = []
    slow = iter([0.0, 0.09, 0.0, 0.0])  # one slow repetition of "a": the median ignores it

    def a():
        calls.append("a")
        time.sleep(next(slow, 0.0))

    def b():
        calls.append("b")

    out = interleaved_median_seconds({"a": a, "b": b}, reps=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up round, then three timed rounds, in turns
    assert set(out) == {"a", "b"} and 0 <= out["a"] < 0.02 and out["b"] < 0.02
    with pytest.raises(ValueError):
        interleaved_median_seconds({"a": a}, reps=0)


def _append_many(path, worker, n):
    from bench.studies._common import append_row

    for i in range(n):
        append_row(path, {"worker": worker, "i": i})


def test_studies_side_by_side_append_every_row(tmp_path):
    """Studies run one process per seed and append to one JSON file: no process's row may be lost."""
    import multiprocessing as mp

    path = tmp_path / "rows.json"
    procs = [mp.get_context("spawn").Process(target=_append_many, args=(path, w, 25)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(6) for i in range(25)]
