"""Timing helpers shared by the benchmarks: warm-up, then the median of repetitions."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], reps: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` over ``reps`` runs after ``warmup`` untimed runs."""
    if reps < 1:
        raise ValueError("reps must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_median_seconds(fns: dict[str, Callable[[], object]], reps: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each of ``fns``, timed in turns (a, b, a, b, ...) after ``warmup`` untimed rounds.

    For a ratio of two measurements: a burst of other work on the machine
    then slows both sides alike instead of one.
    """
    if reps < 1:
        raise ValueError("reps must be >= 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(run: Callable[..., dict], doc: str | None) -> None:
    """``python -m bench.<name> [--quick] [--device cpu|cuda]``: print the benchmark's results as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, device=args.device), indent=2))

