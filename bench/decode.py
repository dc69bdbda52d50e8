"""Decoding: what sampling the paper's clips costs above decoding every frame, per backend.

For each installed backend (``decord``, ``pyav``, ``torchcodec``) on a 60 s,
854x480, 30 fps H.264 video with moving content (written once with PyAV into
a temporary folder; 6 s in quick mode):

- ``decode.<backend>.raw_frames_per_s``: the backend's own plain loop decoding
  every frame to RGB at full size (the peer: no vbert_lab code involved);
- ``decode.<backend>.clips_per_s``: ``vbert_lab.video.iter_clips(fps=20,
  clip_frames=30)`` at full size, i.e. 1.5 s clips at 20 fps, each clip
  resampled by timestamps and stacked;
- ``decode.<backend>.ratio`` = clip throughput / raw throughput, both in
  seconds of source video per wall second:
  ``(clips_per_s * 1.5) / (raw_frames_per_s / 30)``. A ratio >= 0.9 means
  sampling clips costs little above decoding (the issue's bar); above 1 it is
  cheaper, since only 20 of every 30 decoded frames are converted to RGB.
- ``decode.ffmpeg.raw_frames_per_s``: ``ffmpeg -i video -f null -`` where an
  ``ffmpeg`` binary is on the PATH (skipped otherwise).

Times are medians of 5 repetitions after one warm-up (2 in quick mode), the
raw loop and the clip loop timed in turns (``bench.common.interleaved_median_seconds``)
so that a burst of other work slows both sides of the ratio alike. Taught in ``03_video_and_audio_io``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .common import interleaved_median_seconds, median_seconds

FPS_SOURCE = 30
WIDTH, HEIGHT = 854, 480


def make_video(path: Path, seconds: float) -> Path:
    """A textured scene with a moving square and a drifting gradient: something for the codec to do."""
    from vbert_lab.video import write_video

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]

    def frames():
        for i in range(int(seconds * FPS_SOURCE)):
            img = ((xs + 3 * i) % 256).astype(np.uint8)[..., None].repeat(3, axis=2)
            img[..., 1] = texture[..., 1] // 2 + (ys // 4 + i) % 128
            top, left = (7 * i) % (HEIGHT - 96), (11 * i) % (WIDTH - 96)
            img[top:top + 96, left:left + 96] = texture[top:top + 96, left:left + 96]
            yield img

    return write_video(path, frames(), fps=FPS_SOURCE, crf=23)


def _raw_decord(path: Path) -> int:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    n = len(vr)
    for lo in range(0, n, 32):
        vr.get_batch(list(range(lo, min(lo + 32, n)))).asnumpy()
    del vr
    return n


def _raw_pyav(path: Path) -> int:
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def _raw_torchcodec(path: Path) -> int:  # pragma: no cover - not installed in CI
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path))
    n = len(decoder)
    for lo in range(0, n, 32):
        decoder.get_frames_in_range(lo, min(lo + 32, n))
    return n


RAW = {"decord": _raw_decord, "pyav": _raw_pyav, "torchcodec": _raw_torchcodec}


def run(quick: bool = False, device: str = "cpu") -> dict:
    from vbert_lab import video

    seconds = 6 if quick else 60
    reps = 2 if quick else 5
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        path = make_video(Path(tmp) / "moving_480p.mp4", seconds)
        info = video.probe(path, backend="pyav")
        assert info.frames == seconds * FPS_SOURCE, info
        for backend in video.available_backends():
            n_clips = len(video.clip_times(path, fps=20, clip_frames=30))

            def clips(backend=backend):
                got = sum(1 for _ in video.iter_clips(path, fps=20, clip_frames=30, backend=backend))
                assert got == n_clips

            timed = interleaved_median_seconds({"raw": lambda backend=backend: RAW[backend](path), "clips": clips},
                                               reps=reps, warmup=1)
            raw_s, clip_s = timed["raw"], timed["clips"]
            raw_fps = info.frames / raw_s
            results[f"decode.{backend}.raw_frames_per_s"] = raw_fps
            results[f"decode.{backend}.clips_per_s"] = n_clips / clip_s
            results[f"decode.{backend}.ratio"] = (n_clips * 1.5 / clip_s) / (info.duration_s / raw_s)
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg:
            cmd = [ffmpeg, "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"]
            seconds_ff = median_seconds(lambda: subprocess.run(cmd, check=True), reps=reps, warmup=1)
            results["decode.ffmpeg.raw_frames_per_s"] = info.frames / seconds_ff
    return results
