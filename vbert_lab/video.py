"""Reading video: frames as uint8 ``(T, H, W, C)`` arrays.

This first version decodes with PyAV, which works on every platform;
``03_video_and_audio_io`` adds decord (faster, x86_64 only) and clip
iteration on top of the same functions. Used first in ``00_welcome_and_setup``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


class VideoError(RuntimeError):
    """A video file could not be read; the message names the file and what to do."""


@dataclass
class VideoInfo:
    frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    backend: str = "pyav"

    def as_dict(self) -> dict:
        return asdict(self)


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file; check the path (and DATA_DIR)")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes); re-download or regenerate it")
    return path


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.InvalidDataError, av.error.ValueError, UnicodeDecodeError) as err:
        raise VideoError(f"{path}: not a readable video container ({err}); re-download or regenerate it") from None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate, duration, size and audio layout of a video file."""
    path = _check_path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream (audio-only file?)")
        vs = container.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        frames = int(vs.frames) or int(round(duration * fps))
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            frames=frames,
            fps=fps,
            duration_s=duration,
            width=vs.codec_context.width,
            height=vs.codec_context.height,
            has_audio=audio is not None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
        )


def read_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Decode frames between ``start`` and ``end`` seconds as uint8 ``(T, H, W, C)``.

    ``fps`` resamples by presentation timestamps (the frame shown at each tick
    ``start + i / fps``), so it is right for variable-frame-rate files too.
    ``size`` is an int (square) or ``(height, width)``.
    """
    path = _check_path(path)
    start = 0.0 if start is None else float(start)
    end = float("inf") if end is None else float(end)
    if end <= start:
        raise ValueError(f"{path}: end ({end}) must be after start ({start})")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
    frames: list[np.ndarray] = []
    times: list[float] = []
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream (audio-only file?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else len(times) / float(stream.average_rate or 1)
                if t < start - 1e-6:
                    continue
                if t >= end:
                    break
                img = frame.to_ndarray(format="rgb24") if size is None else frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                frames.append(img)
                times.append(t)
        except Exception as err:  # corrupt payload in the middle of the file
            if not frames:
                raise VideoError(f"{path}: decoding failed ({err}); the file may be truncated or corrupt") from None
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    video = np.stack(frames)
    if fps is None:
        return video
    ticks = np.arange(start if np.isfinite(start) else 0.0, times[-1] + 1e-9, 1.0 / fps)
    ticks = ticks[ticks >= times[0] - 1e-9]
    # the frame on screen at each tick: the last frame whose timestamp is <= tick
    idx = np.searchsorted(np.asarray(times), ticks + 1e-6, side="right") - 1
    return video[np.clip(idx, 0, len(times) - 1)]
