"""Reading video: frames as uint8 ``(T, H, W, C)`` arrays and the paper's 1.5 s clips.

One reader over three backends:

- ``decord`` (the default where it is installed; fast, x86_64 only),
- ``pyav`` (everywhere; used where decord is missing or fails on a file, with
  a :class:`BackendWarning` that says so),
- ``torchcodec`` (optional, used only when asked for and installed).

Every read goes by *timestamps*: the file is indexed once with PyAV's demuxer
(packet timestamps, no decoding), and "the frame at time t" is the last frame
whose presentation time is <= t. Resampling 30 fps to the paper's 20 fps, or a
variable-frame-rate phone video to anything, is then the same operation.

decord's known bugs are guarded (see ``ARCHITECTURE.md``):

- its frame count and frame timestamps are cross-checked against the PyAV
  index; a file where they disagree is read with PyAV instead;
- reads are bounded by the verified frame count, go in small forward chunks,
  and run under a watchdog (``DECORD_READ_TIMEOUT_S``): a read that does not
  return in time is abandoned and the file is read with PyAV;
- readers are released as soon as a read ends, and no call hands decord a
  huge index list, so memory does not grow across many files;
- :func:`iter_clips` decodes one clip at a time, so memory stays flat in the
  length of the video.

Taught in ``03_video_and_audio_io``; first used in ``00_welcome_and_setup``.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import threading
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

BACKENDS = ("decord", "pyav", "torchcodec")
DECORD_READ_TIMEOUT_S = 30.0  # one decord call (<= DECORD_CHUNK frames) longer than this is treated as a hang
DECORD_CHUNK = 32  # frames per decord get_batch call: never hand it a huge index list
MAX_READ_BYTES = 2 * 1024**3  # read_frames refuses to return more than this; use size=, fps=, start/end or iter_clips
_EPS = 1e-6


class VideoError(RuntimeError):
    """A video file could not be read; the message names the file and what to do."""


class BackendWarning(UserWarning):
    """A file is read with another backend than the one asked for (and why)."""


@dataclass
class VideoInfo:
    """What :func:`probe` finds. ``frames`` is the verified count (packets really in the file)."""

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


@dataclass
class Clip:
    """One clip from :func:`iter_clips`: ``frames`` uint8 ``(T, H, W, C)`` shown from ``start_s`` to ``end_s``."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray = field(repr=False)

    @property
    def times(self) -> tuple[float, float]:
        return (self.start_s, self.end_s)


# --------------------------------------------------------------------------- checks and backends


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file; check the path (and DATA_DIR)")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a video file; pass one of the files inside it")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes); re-download or regenerate it")
    return path


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(
            f"{path}: not a readable video container ({err}); the file may be truncated, "
            "or not a video at all: re-download or regenerate it"
        ) from None


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """The backends that can be imported here, in order of preference. Taught in ``03_video_and_audio_io``."""
    return [b for b, mod in (("decord", "decord"), ("pyav", "av"), ("torchcodec", "torchcodec")) if _has(mod)]


def default_backend() -> str:
    """``decord`` where installed, else ``pyav``. Taught in ``03_video_and_audio_io``."""
    return "decord" if _has("decord") else "pyav"


def _resolve_backend(backend: str | None, path: Path) -> str:
    if backend is None or backend == "":
        if _has("decord"):
            return "decord"
        warnings.warn(f"decord is not installed: reading {path.name} with PyAV instead (slower, same frames)", BackendWarning, stacklevel=3)
        return "pyav"
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec"}[backend]
    if not _has(module):
        hint = {"decord": "pip install decord (x86_64 only)", "pyav": "pip install av", "torchcodec": "pip install torchcodec"}[backend]
        raise VideoError(f"{path}: backend {backend!r} is not installed; {hint}, or pass backend='pyav'")
    return backend


def _size_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(height), int(width)


# --------------------------------------------------------------------------- the index


@dataclass
class _Index:
    times: np.ndarray  # (N,) presentation time of every frame, seconds, sorted
    header_frames: int  # what the container header claims (0 when it says nothing)
    fps: float
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None

    @property
    def duration_s(self) -> float:
        if len(self.times) == 0:
            return 0.0
        step = 1.0 / self.fps if self.fps > 0 else float(np.median(np.diff(self.times))) if len(self.times) > 1 else 0.0
        return float(self.times[-1] + step)


def _scan(path: Path) -> _Index:
    """Index a file with PyAV's demuxer: packet timestamps only, no decoding (milliseconds per minute of video)."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(
                f"{path}: has no video stream (an audio-only file?); read its sound with vbert_lab.audio.load_audio"
            )
        vs = container.streams.video[0]
        tb = vs.time_base or Fraction(1, 1_000_000)
        stamps: list[int] = []
        try:
            for packet in container.demux(vs):
                if packet.size == 0:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                stamps.append(ts if ts is not None else (stamps[-1] + 1 if stamps else 0))
        except av.FFmpegError:
            pass  # truncated or corrupt tail: keep the packets that are there
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        audio = container.streams.audio[0] if container.streams.audio else None
        index = _Index(
            times=np.sort(np.asarray(stamps, dtype=np.float64)) * float(tb),
            header_frames=int(vs.frames or 0),
            fps=fps,
            width=int(vs.codec_context.width),
            height=int(vs.codec_context.height),
            has_audio=audio is not None,
            audio_sample_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
            audio_channels=int(audio.codec_context.channels) if audio is not None else None,
        )
    if len(index.times) == 0:
        raise VideoError(f"{path}: the video stream holds no frames (truncated or corrupt?); re-download or regenerate it")
    if index.fps <= 0 and len(index.times) > 1:
        index.fps = float(1.0 / np.median(np.diff(index.times)))
    if index.width < 1 or index.height < 1:
        raise VideoError(f"{path}: the video stream has no frame size ({index.width}x{index.height}); the file is corrupt")
    if index.header_frames > len(index.times):
        warnings.warn(
            f"{path}: the header claims {index.header_frames} frames but only {len(index.times)} are in the file "
            "(truncated?); reading the frames that are there",
            BackendWarning,
            stacklevel=3,
        )
    return index


def sample_ticks(times: np.ndarray, fps: float | None = None, start: float | None = None, end: float | None = None,
                 duration_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The times to show and, for each, the index of the frame on screen then.

    ``times`` are the frames' presentation times (sorted). With ``fps=None`` every
    frame in ``[start, end)`` is taken; otherwise the ticks are
    ``start + i / fps`` up to ``end`` (or the end of the last frame), and each
    takes the last frame whose time is <= the tick, which is right for
    variable frame rates. Returns ``(ticks, indices)``. Taught in ``03_video_and_audio_io``.
    """
    times = np.asarray(times, dtype=np.float64)
    if len(times) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    lo = 0.0 if start is None else float(start)
    video_end = float(duration_s) if duration_s is not None else float(times[-1] + (np.median(np.diff(times)) if len(times) > 1 else 0.0))
    hi = video_end if end is None else min(float(end), video_end)
    if fps is None:
        keep = times >= lo - _EPS
        if end is not None:
            keep &= times < float(end) - _EPS
        idx = np.nonzero(keep)[0]
        return times[idx], idx.astype(np.int64)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n = max(0, int(np.ceil((hi - lo) * fps - _EPS)))
    ticks = lo + np.arange(n, dtype=np.float64) / float(fps)
    ticks = ticks[(ticks >= times[0] - _EPS) & (ticks < hi - _EPS)]
    idx = np.searchsorted(times, ticks + _EPS, side="right") - 1
    return ticks, np.clip(idx, 0, len(times) - 1).astype(np.int64)


# --------------------------------------------------------------------------- decoders


class _DecordFailed(Exception):
    pass


_WATCHDOG: concurrent.futures.ThreadPoolExecutor | None = None
_WATCHDOG_LOCK = threading.Lock()


def _reset_watchdog_after_fork() -> None:
    # a forked child (DataLoader workers) inherits the pool object but not its thread
    global _WATCHDOG, _WATCHDOG_LOCK
    _WATCHDOG = None
    _WATCHDOG_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_watchdog_after_fork)


def _guarded(fn, timeout_s: float, what: str):
    """Run one decord call under a watchdog; a call that does not return in time is abandoned."""
    global _WATCHDOG
    with _WATCHDOG_LOCK:
        if _WATCHDOG is None:
            _WATCHDOG = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vbert-decord")
        pool = _WATCHDOG
    future = pool.submit(fn)
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        with _WATCHDOG_LOCK:  # the stuck thread keeps its pool; later reads get a fresh one
            if _WATCHDOG is pool:
                _WATCHDOG = None
        pool.shutdown(wait=False)
        raise _DecordFailed(f"decord did not return from {what} within {timeout_s:g} s (a known decord hang)") from None
    except _DecordFailed:
        raise
    except Exception as err:  # DECORDError and friends
        raise _DecordFailed(f"decord failed on {what}: {str(err).splitlines()[-1][:200]}") from None


def _open_decord(path: Path, index: _Index, hw: tuple[int, int] | None, timeout_s: float):
    import decord

    height, width = hw if hw is not None else (-1, -1)
    vr = _guarded(lambda: decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height), timeout_s, "opening the file")
    n = len(index.times)
    if len(vr) < n:
        del vr
        raise _DecordFailed(f"decord sees fewer frames than the container index ({n})")
    if len(vr) != n:
        count = len(vr)
        del vr
        raise _DecordFailed(f"decord reports {count} frames but the container holds {n} (an over-reported count)")
    stamps = _guarded(lambda: vr.get_frame_timestamp(np.arange(n))[:, 0], timeout_s, "reading its frame timestamps")
    off = np.abs(np.asarray(stamps, dtype=np.float64) - index.times)
    step = 1.0 / index.fps if index.fps > 0 else 0.04
    if off.max(initial=0.0) > step / 2:
        del vr
        raise _DecordFailed(f"decord's frame timestamps differ from the container's by up to {off.max():.3f} s")
    return vr


def _decord_frames(vr, indices: np.ndarray, timeout_s: float, frame_bytes: int) -> Iterator[np.ndarray]:
    """Frames at ``indices`` (sorted, possibly repeated) in forward chunks, each call under the watchdog."""
    chunk = max(1, min(DECORD_CHUNK, (256 * 1024**2) // max(frame_bytes, 1)))
    unique, inverse = np.unique(indices, return_inverse=True)
    pos = 0
    for lo in range(0, len(unique), chunk):
        part = unique[lo:lo + chunk]
        batch = _guarded(lambda: vr.get_batch(part.tolist()).asnumpy(), timeout_s, f"frames {part[0]}..{part[-1]}")
        # repeated indices (upsampling) map back onto the decoded unique frames
        while pos < len(indices) and inverse[pos] < lo + len(part):
            yield batch[inverse[pos] - lo]
            pos += 1


def _decord_blocks(vr, indices: np.ndarray, timeout_s: float, block: int) -> Iterator[np.ndarray]:
    """Frames at ``indices`` (sorted, possibly repeated) as arrays of ``block`` frames, one decord call each.

    With no repeated index in a block, the array decord returns *is* the block
    (no copy: this is how :meth:`VideoReader.iter_clips` gets a clip). A frame
    repeated across two blocks (upsampling) is reused, never decoded again.
    """
    last_index, last_frame = None, None
    for lo in range(0, len(indices), block):
        part = indices[lo:lo + block]
        unique, inverse = np.unique(part, return_inverse=True)
        reuse = last_index is not None and unique[0] == last_index
        need = unique[1:] if reuse else unique
        if len(need):
            batch = _guarded(lambda: vr.get_batch(need.tolist()).asnumpy(), timeout_s, f"frames {need[0]}..{need[-1]}")
            if reuse:
                batch = np.concatenate([last_frame[None], batch])
        else:
            batch = last_frame[None]
        last_index, last_frame = unique[-1], batch[-1]
        yield batch if len(unique) == len(part) else batch[inverse]


def _pyav_frames(path: Path, ticks: np.ndarray, hw: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """For each tick (sorted), the frame on screen then, decoding forward once (streaming)."""
    import av

    if len(ticks) == 0:
        return
    bad = 0
    with _open(path) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        tb = float(vs.time_base)
        if ticks[0] > 1.0:
            try:
                container.seek(int(ticks[0] / tb), stream=vs, backward=True, any_frame=False)
            except av.FFmpegError:
                container.seek(0, stream=vs)
        k = 0
        held = None  # (av frame, converted array or None)

        def convert(frame):
            if hw is None:
                return frame.to_ndarray(format="rgb24")
            return frame.reformat(width=hw[1], height=hw[0], format="rgb24").to_ndarray()

        def packets():
            nonlocal bad
            try:
                for packet in container.demux(vs):
                    yield packet
            except av.FFmpegError:
                bad += 1

        for packet in packets():
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                bad += 1
                continue
            for frame in decoded:
                t = frame.time if frame.time is not None else (held[2] + 1.0 / float(vs.average_rate or 25) if held else 0.0)
                while k < len(ticks) and ticks[k] < t - _EPS:
                    if held is None:  # nothing shown before the first frame: take it
                        held = [frame, None, t]
                    if held[1] is None:
                        held[1] = convert(held[0])
                    yield held[1]
                    k += 1
                if k >= len(ticks):
                    break
                held = [frame, None, t]
            if k >= len(ticks):
                break
        while k < len(ticks) and held is not None:
            if held[1] is None:
                held[1] = convert(held[0])
            yield held[1]
            k += 1
    if bad:
        warnings.warn(f"{path}: {bad} packet(s) could not be decoded; their frames repeat the frame before", BackendWarning, stacklevel=2)
    if k < len(ticks):
        raise VideoError(f"{path}: decoding failed before any frame could be read; the file may be truncated or corrupt")


def _torchcodec_frames(path: Path, indices: np.ndarray, hw: tuple[int, int] | None) -> Iterator[np.ndarray]:  # pragma: no cover - not installed in CI
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path))
    for lo in range(0, len(indices), DECORD_CHUNK):
        batch = decoder.get_frames_at(indices[lo:lo + DECORD_CHUNK].tolist()).data  # (B, C, H, W) uint8
        if hw is not None:
            import torch.nn.functional as F

            batch = F.interpolate(batch.float(), size=hw, mode="bilinear", antialias=True).round().clamp(0, 255).byte()
        yield from batch.permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------- the reader


class VideoReader:
    """One video file, indexed once, read by any backend: ``with VideoReader(path) as v: v.read(fps=20)``.

    ``backend`` is ``None`` (decord where installed, else PyAV), ``"decord"``,
    ``"pyav"`` or ``"torchcodec"``. Where decord fails on the file (count or
    timestamps disagree with the container, an error, a hang) the reader
    warns (:class:`BackendWarning`) and switches to PyAV; ``.backend`` says
    which backend is in use. Taught in ``03_video_and_audio_io``.
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, timeout_s: float = DECORD_READ_TIMEOUT_S):
        self.path = _check_path(path)
        self._index = _scan(self.path)
        self.backend = _resolve_backend(backend, self.path)
        self.timeout_s = float(timeout_s)
        self._decord = None
        self._decord_hw: tuple[int, int] | None = None
        if self.backend == "decord":
            self._decord_reader(None)  # cross-check counts and timestamps now; release at close()

    # -- facts
    @property
    def times(self) -> np.ndarray:
        """Presentation time of every frame in the file (seconds)."""
        return self._index.times

    @property
    def info(self) -> VideoInfo:
        ix = self._index
        return VideoInfo(
            frames=len(ix.times), fps=ix.fps, duration_s=ix.duration_s, width=ix.width, height=ix.height,
            has_audio=ix.has_audio, audio_sample_rate=ix.audio_sample_rate, audio_channels=ix.audio_channels,
            backend=self.backend,
        )

    def _fall_back(self, reason: str) -> None:
        warnings.warn(f"{self.path}: {reason}; reading this file with PyAV instead", BackendWarning, stacklevel=4)
        self._release()
        self.backend = "pyav"

    def _decord_reader(self, hw):
        if self._decord is not None and self._decord_hw == hw:
            return self._decord
        self._release()
        try:
            self._decord = _open_decord(self.path, self._index, hw, self.timeout_s)
            self._decord_hw = hw
        except _DecordFailed as err:
            self._fall_back(str(err))
            return None
        return self._decord

    def _release(self) -> None:
        self._decord = None  # decord frees its native reader in __del__
        self._decord_hw = None

    def close(self) -> None:
        self._release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading
    def ticks(self, fps: float | None = None, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ticks, frame indices)``: see :func:`sample_ticks`."""
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{self.path}: end ({end}) must be after start ({start})")
        return sample_ticks(self._index.times, fps, start, end, self._index.duration_s)

    def _frames(self, ticks: np.ndarray, idx: np.ndarray, hw) -> Iterator[np.ndarray]:
        """Frames for (ticks, idx), streaming; falls back to PyAV where decord fails midway."""
        done = 0
        if self.backend == "decord":
            vr = self._decord_reader(hw)
            if vr is not None:
                h, w = hw if hw is not None else (self._index.height, self._index.width)
                try:
                    for frame in _decord_frames(vr, idx, self.timeout_s, h * w * 3):
                        yield frame
                        done += 1
                    return
                except _DecordFailed as err:
                    self._fall_back(str(err))
        if self.backend == "torchcodec":  # pragma: no cover - not installed in CI
            yield from _torchcodec_frames(self.path, idx, hw)
            return
        yield from _pyav_frames(self.path, ticks[done:], hw)

    def _blocks(self, ticks: np.ndarray, idx: np.ndarray, hw, size: int) -> Iterator[np.ndarray]:
        """The frames of :meth:`_frames` as ``(size, H, W, C)`` arrays (the last may be shorter)."""
        done = 0
        if self.backend == "decord":
            vr = self._decord_reader(hw)
            if vr is not None:
                try:
                    for block in _decord_blocks(vr, idx, self.timeout_s, size):
                        yield block
                        done += len(block)
                    return
                except _DecordFailed as err:
                    self._fall_back(str(err))
        if self.backend == "torchcodec":  # pragma: no cover - not installed in CI
            frames = _torchcodec_frames(self.path, idx, hw)
        else:
            frames = _pyav_frames(self.path, ticks[done:], hw)
        buffer: list[np.ndarray] = []
        for frame in frames:
            buffer.append(frame)
            if len(buffer) == size:
                yield np.stack(buffer)
                buffer = []
        if buffer:
            yield np.stack(buffer)

    def read(self, fps: float | None = None, size: int | tuple[int, int] | None = None, start: float | None = None,
             end: float | None = None, max_bytes: int = MAX_READ_BYTES) -> np.ndarray:
        """Frames in ``[start, end)`` seconds as uint8 ``(T, H, W, C)``; see :func:`read_frames`."""
        hw = _size_hw(size)
        ticks, idx = self.ticks(fps, start, end)
        h, w = hw if hw is not None else (self._index.height, self._index.width)
        need = len(ticks) * h * w * 3
        if need > max_bytes:
            raise VideoError(
                f"{self.path}: reading {len(ticks)} frames of {w}x{h} needs {need / 1024**3:.1f} GiB "
                f"(limit {max_bytes / 1024**3:.1f} GiB); pass size=, fps=, start=/end=, or stream with iter_clips"
            )
        out = np.empty((len(ticks), h, w, 3), dtype=np.uint8)
        n = 0
        for frame in self._frames(ticks, idx, hw):
            out[n] = frame
            n += 1
        return out[:n]

    def clip_times(self, fps: float = 20, clip_frames: int = 30, start: float | None = None, end: float | None = None,
                   drop_last: bool = True) -> list[tuple[float, float]]:
        """``(start_s, end_s)`` of every clip :meth:`iter_clips` would yield, without decoding anything."""
        ticks, _ = self.ticks(fps, start, end)
        n = len(ticks) // clip_frames if drop_last else -(-len(ticks) // clip_frames)
        return [
            (float(ticks[i * clip_frames]), float(ticks[i * clip_frames]) + min(clip_frames, len(ticks) - i * clip_frames) / fps)
            for i in range(n)
        ]

    def iter_clips(self, fps: float = 20, clip_frames: int = 30, size: int | tuple[int, int] | None = None,
                   start: float | None = None, end: float | None = None, drop_last: bool = True) -> Iterator[Clip]:
        """Consecutive non-overlapping clips of ``clip_frames`` frames at ``fps``, one at a time."""
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        hw = _size_hw(size)
        ticks, idx = self.ticks(fps, start, end)
        n_clips = len(ticks) // clip_frames if drop_last else -(-len(ticks) // clip_frames)
        ticks, idx = ticks[: n_clips * clip_frames], idx[: n_clips * clip_frames]
        for clip, frames in enumerate(self._blocks(ticks, idx, hw, clip_frames)):
            if len(frames) < min(clip_frames, len(ticks) - clip * clip_frames):
                return  # the file ended before its index said: no partial clip
            t0 = float(ticks[clip * clip_frames])
            yield Clip(index=clip, start_s=t0, end_s=t0 + len(frames) / fps, frames=frames)


# --------------------------------------------------------------------------- functions


def probe(path: str | os.PathLike, backend: str | None = None) -> VideoInfo:
    """Frame count, frame rate, duration, size and audio layout of a video file.

    ``frames`` is verified: the packets really in the file (a header that
    over-reports is caught, with a :class:`BackendWarning`). ``backend`` is
    the one :func:`read_frames` will use on this file. CLI: ``vbert-lab probe PATH --json``.
    Taught in ``03_video_and_audio_io``.
    """
    with VideoReader(path, backend=backend) as reader:
        return reader.info


def read_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str | None = None,
    max_bytes: int = MAX_READ_BYTES,
) -> np.ndarray:
    """Decode frames between ``start`` and ``end`` seconds as uint8 ``(T, H, W, C)``.

    ``fps`` resamples by presentation timestamps (the frame on screen at each
    tick ``start + i / fps``), so it is right for variable-frame-rate files too;
    ``fps=None`` returns every frame. ``size`` is an int (square) or
    ``(height, width)``. A read larger than ``max_bytes`` raises
    :class:`VideoError` (use ``size``, ``fps``, ``start``/``end`` or
    :func:`iter_clips`). Taught in ``03_video_and_audio_io``.
    """
    with VideoReader(path, backend=backend) as reader:
        return reader.read(fps=fps, size=size, start=start, end=end, max_bytes=max_bytes)


def iter_clips(
    path: str | os.PathLike,
    fps: float = 20,
    clip_frames: int = 30,
    size: int | tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str | None = None,
    drop_last: bool = True,
) -> Iterator[Clip]:
    """The paper's clips: ``clip_frames`` frames at ``fps`` (30 at 20 fps = 1.5 s), non-overlapping.

    Yields :class:`Clip` (``frames`` uint8 ``(clip_frames, H, W, C)``,
    ``start_s``, ``end_s``) one at a time, decoding as it goes, so memory stays
    flat in the length of the video. ``drop_last=False`` also yields a shorter
    final clip. Taught in ``03_video_and_audio_io``.
    """
    with VideoReader(path, backend=backend) as reader:
        yield from reader.iter_clips(fps=fps, clip_frames=clip_frames, size=size, start=start, end=end, drop_last=drop_last)


def clip_times(path: str | os.PathLike, fps: float = 20, clip_frames: int = 30, start: float | None = None,
               end: float | None = None, drop_last: bool = True) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of the clips :func:`iter_clips` yields, from the index alone (no decoding).

    Used to cut the sound track on the same times (``vbert_lab.audio.logmel_clips``).
    Taught in ``03_video_and_audio_io``.
    """
    with VideoReader(path, backend="pyav") as reader:
        return reader.clip_times(fps, clip_frames, start, end, drop_last)


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: float = 30,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    codec: str = "libx264",
    crf: int = 18,
    pts: Iterable[float] | None = None,
    faststart: bool = False,
) -> Path:
    """Write uint8 RGB frames (and optionally a float waveform ``(C, N)``) with PyAV.

    ``pts`` gives each frame's time in seconds (a variable-frame-rate file);
    ``faststart`` puts the index at the front of an mp4. Used by the tests, the
    benchmark and ``03_video_and_audio_io`` to make test files.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    rate = Fraction(fps).limit_denominator(1001)
    times = None if pts is None else list(pts)
    with av.open(str(path), "w", options=options) as out:
        vs = None
        astream = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            astream = out.add_stream("aac", rate=sample_rate, layout="mono" if audio.shape[0] == 1 else "stereo" if audio.shape[0] == 2 else f"{audio.shape[0]}.0")
        for i, img in enumerate(frames):
            img = np.ascontiguousarray(img, dtype=np.uint8)
            if vs is None:
                vs = out.add_stream(codec, rate=rate)
                vs.height, vs.width = img.shape[0] - img.shape[0] % 2, img.shape[1] - img.shape[1] % 2
                vs.pix_fmt = "yuv420p"
                if codec == "libx264":
                    vs.options = {"crf": str(crf), "preset": "veryfast"}
                if times is not None:
                    vs.codec_context.time_base = Fraction(1, 90000)
            frame = av.VideoFrame.from_ndarray(img[: vs.height, : vs.width], format="rgb24")
            if times is not None:
                frame.pts = int(round(times[i] * 90000))
                frame.time_base = Fraction(1, 90000)
            for packet in vs.encode(frame):
                out.mux(packet)
        if vs is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in vs.encode():
            out.mux(packet)
        if astream is not None:
            chunk = 1024
            for lo in range(0, audio.shape[1], chunk):
                part = np.ascontiguousarray(audio[:, lo:lo + chunk])
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=astream.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = lo
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path
