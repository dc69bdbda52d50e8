"""TinyCook generation speed, videos per second at the default size (no peer: a course budget)."""

from __future__ import annotations

import os
import tempfile
import time


def run(quick: bool = False, device: str = "cpu") -> dict:
    from vbert_lab.tinycook import ensure_dataset

    videos = 8 if quick else 48
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-tinycook-") as tmp:
        ensure_dataset(os.path.join(tmp, "warmup"), videos=2, seed=1, size=128, workers=workers)
        t0 = time.perf_counter()
        ensure_dataset(os.path.join(tmp, "tc"), videos=videos, seed=0, size=128, workers=workers)
        seconds = time.perf_counter() - t0
    return {"tinycook.videos_per_s": videos / seconds, "tinycook.workers": workers}
