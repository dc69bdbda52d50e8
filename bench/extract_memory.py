"""Extraction memory: peak resident memory of feature extraction, 1-minute vs 10-minute video.

Two 128x128, 30 fps H.264 videos with moving content and a 16 kHz sound track
(1 and 10 minutes; 10 s and 60 s in quick mode) are written with PyAV into a
temporary folder. Each is extracted by ``vbert_lab.features.extract`` with
the ``tinycook3d`` network (untrained weights: the same compute as trained
ones) and its default settings (DataLoader workers decoding chunks of 8 clips, batches of 32
clips), in a fresh subprocess, so that nothing of one run stays in the
memory of the next.

Memory is the peak footprint of the extraction: the extracting process's peak
resident set (the kernel's high-water mark ``VmHWM`` from ``/proc/self/status``:
exact, whenever the peak happened) plus the peak over the run of its DataLoader
workers' *unique* set size (USS, their private pages, via psutil), sampled every
20 ms. A page a worker shares with its parent (torch's libraries, the decoded
chunks in shared memory) is counted once, in the parent. The worker's memory
changes slowly, so sampling finds its peak; the parent's is dominated by the
extractor's activations, which live for milliseconds, so a sampled peak would
depend on how many batches the run has (more chances to catch one) and read a
10-minute video higher than a 1-minute one for that reason alone (the growth read
0.05 to 0.12 that way, from the same code). Off Linux, the parent's RSS is sampled too.

- ``extract_memory.rss_1min_mb`` / ``extract_memory.rss_10min_mb``: the peaks (MiB);
- ``extract_memory.growth`` = ``rss_10min / rss_1min - 1``; the goal is <= 0.10
  (clips stream, so memory should not depend on the video's length);
- ``extract_memory.audio.*``: the same with ``audio=True`` (per-clip log-mel
  features), which decodes the whole sound track of a video at once
  (16 kHz mono float32: 3.8 MB per minute), so some growth is expected there.

Quick mode (10 s vs 60 s) only checks that the benchmark runs: its extractions
last about a second, too short for the sampler to catch every peak of the
short one, so its growth reads high. The goal is judged on the full run.

Taught in ``04_clip_features``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZE = 128
FPS_SOURCE = 30
AUDIO_RATE = 16000

_MEASURE = r"""
import json, os, sys, threading, time
import psutil

def private(proc):
    try:
        return proc.memory_full_info().uss
    except (psutil.AccessDenied, AttributeError):
        return proc.memory_info().rss

def own_peak():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None

main_peak = workers_peak = 0
stop = threading.Event()

def sample():
    global main_peak, workers_peak
    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for proc in me.children(recursive=True):
            try:
                total += private(proc)
            except psutil.NoSuchProcess:
                pass
        workers_peak = max(workers_peak, total)
        main_peak = max(main_peak, me.memory_info().rss)
        time.sleep(0.02)

from vbert_lab import features
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
summary = features.extract([sys.argv[1]], sys.argv[2], "tinycook3d", weights="random", audio=sys.argv[3] == "1",
                           device=sys.argv[4], progress=False)
seconds = time.perf_counter() - t0
stop.set()
thread.join()
main_peak = own_peak() or main_peak
print(json.dumps({"peak_bytes": main_peak + workers_peak, "main_bytes": main_peak, "workers_bytes": workers_peak,
                  "clips": summary.clips, "seconds": seconds, "failed": summary.failed}))
"""


def make_video(path: Path, seconds: float) -> Path:
    """A textured square moving over a drifting gradient, with a tone whose pitch steps every second."""
    from vbert_lab.video import write_video

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    xs = np.arange(SIZE, dtype=np.int64)

    def frames():
        for i in range(int(seconds * FPS_SOURCE)):
            img = np.empty((SIZE, SIZE, 3), np.uint8)
            img[...] = ((xs[None, :, None] + 2 * i) % 256).astype(np.uint8)
            top, left = (3 * i) % (SIZE - 32), (5 * i) % (SIZE - 32)
            img[top:top + 32, left:left + 32] = texture
            yield img

    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    wave = (0.2 * np.sin(2 * np.pi * (220 + 40 * np.floor(t % 8)) * t)).astype(np.float32)[None]
    return write_video(path, frames(), fps=FPS_SOURCE, audio=wave, sample_rate=AUDIO_RATE, crf=28)


def measure(path: Path, out: Path, audio: bool, device: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(out), "1" if audio else "0", device],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"extraction of {path.name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["failed"] or not result["clips"]:
        raise RuntimeError(f"extraction of {path.name} extracted nothing: {result}")
    return result


def run(quick: bool = False, device: str = "cpu") -> dict:
    short_s, long_s = (10.0, 60.0) if quick else (60.0, 600.0)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="vbert-bench-extract-") as tmp:
        tmp = Path(tmp)
        short = make_video(tmp / "short.mp4", short_s)
        long = make_video(tmp / "long.mp4", long_s)
        for prefix, audio in (("extract_memory", False), ("extract_memory.audio", True)):
            a = measure(short, tmp / f"out-short-{audio}", audio, device)
            b = measure(long, tmp / f"out-long-{audio}", audio, device)
            results[f"{prefix}.rss_1min_mb"] = round(a["peak_bytes"] / 1024**2, 1)
            results[f"{prefix}.rss_10min_mb"] = round(b["peak_bytes"] / 1024**2, 1)
            results[f"{prefix}.growth"] = round(b["peak_bytes"] / a["peak_bytes"] - 1, 4)
            results[f"{prefix}.workers_1min_mb"] = round(a["workers_bytes"] / 1024**2, 1)
            results[f"{prefix}.workers_10min_mb"] = round(b["workers_bytes"] / 1024**2, 1)
            if not audio:
                results["extract_memory.clips_per_s_10min"] = round(b["clips"] / b["seconds"], 1)
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
