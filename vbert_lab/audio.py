"""Reading sound: the audio track of a video, mono, resampled, and log-mel per clip.

Decoding uses PyAV (any container and channel layout, the 6-channel AAC of
``bigbuckbunny.mp4`` included): each decoded frame is downmixed to mono (the
mean of its channels) as it arrives, so a many-channel track never sits in
memory whole. Resampling and the mel filterbank use torchaudio's transforms.
A file without a sound track, or a silent stretch, is a *flag*
(``has_audio``, ``silent``), not an error, in :func:`read_audio` and
:func:`logmel_clips`.

Taught in ``03_video_and_audio_io``; the waveform is shown first in
``00_welcome_and_setup``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .video import BackendWarning, VideoError, _check_path, _open

SILENCE_DBFS = -60.0  # a clip whose RMS level is below this is flagged silent
LOG_FLOOR_DB = -100.0  # log-mel value of no sound at all (10 * log10(1e-10))


@dataclass
class AudioTrack:
    """A decoded sound track: ``wave`` float32 ``(C, N)`` in [-1, 1] whose first sample plays at ``start_s``."""

    wave: np.ndarray = field(repr=False)
    sample_rate: int
    start_s: float = 0.0
    has_audio: bool = True
    source_channels: int | None = None

    @property
    def duration_s(self) -> float:
        return self.wave.shape[1] / self.sample_rate if self.sample_rate else 0.0


def _to_float(frame) -> np.ndarray:
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels if hasattr(frame.layout, "nb_channels") else len(frame.layout.channels)
    if frame.format.is_planar:
        arr = arr.reshape(channels, -1)
    else:  # interleaved: (1, samples * channels)
        arr = arr.reshape(-1, channels).T
    if arr.dtype.kind == "i":
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif arr.dtype.kind == "u":  # 8-bit PCM is offset binary
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    return arr.astype(np.float32, copy=False)


def resample(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """``wave`` ``(C, N)`` from ``rate`` to ``sample_rate`` with ``torchaudio.functional.resample``. Taught in ``03_video_and_audio_io``."""
    if sample_rate == rate or wave.shape[-1] == 0:
        return wave
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), int(rate), int(sample_rate)).numpy()


class _Samples:
    """A growing ``(C, N)`` float32 array: decoded frames are copied into one buffer (sized from the
    stream's duration where known) instead of kept as a list and concatenated, which held the track twice."""

    def __init__(self):
        self.data: np.ndarray | None = None
        self.n = 0
        self.capacity = 0

    def expect(self, samples: int) -> None:
        self.capacity = max(self.capacity, int(samples))

    def append(self, arr: np.ndarray) -> None:
        k = arr.shape[1]
        if self.data is None:
            self.data = np.empty((arr.shape[0], max(self.capacity, k, 1)), np.float32)
        elif self.n + k > self.data.shape[1]:  # the duration was unknown or short: grow by half
            grown = np.empty((self.data.shape[0], max(self.n + k, self.data.shape[1] * 3 // 2)), np.float32)
            grown[:, : self.n] = self.data[:, : self.n]
            self.data = grown
        self.data[:, self.n : self.n + k] = arr
        self.n += k

    def array(self) -> np.ndarray:
        """The samples: a view of the buffer (a copy would hold the track twice; the unused tail is small)."""
        data, self.data = self.data, None
        return data[:, : self.n]


def read_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True) -> AudioTrack:
    """The sound track of ``path`` as an :class:`AudioTrack`; no sound track gives ``has_audio=False``.

    ``mono`` averages all channels of any layout (5.1 included) frame by frame;
    ``sample_rate`` resamples with torchaudio. Undecodable packets (a truncated
    file) are skipped with a warning. Taught in ``03_video_and_audio_io``.
    """
    import av

    path = _check_path(path)
    buffer = _Samples()
    start_s = None
    bad = 0
    with _open(path) as container:
        if not container.streams.audio:
            rate = int(sample_rate or 16000)
            return AudioTrack(np.zeros((1, 0), np.float32), rate, 0.0, has_audio=False, source_channels=None)
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        source_channels = int(stream.codec_context.channels)
        if stream.duration is not None and stream.time_base is not None:  # room for the whole track at once
            buffer.expect(int(float(stream.duration * stream.time_base) * rate) + rate)
        packets = container.demux(stream)  # one packet at a time: the compressed track is never held whole
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError:  # a broken container: keep what was read
                bad += 1
                break
            try:
                frames = packet.decode()
            except av.FFmpegError:
                bad += 1
                continue
            for frame in frames:
                if start_s is None:
                    start_s = float(frame.time) if frame.time is not None else 0.0
                arr = _to_float(frame)
                buffer.append(arr.mean(axis=0, keepdims=True) if mono else arr)
    if bad:
        warnings.warn(f"{path}: {bad} audio packet(s) could not be decoded and were skipped", BackendWarning, stacklevel=2)
    if not buffer.n:
        return AudioTrack(np.zeros((1, 0), np.float32), int(sample_rate or rate), 0.0, has_audio=False, source_channels=source_channels)
    wave = buffer.array()
    if sample_rate is not None and sample_rate != rate:
        wave = resample(wave, rate, sample_rate)
        rate = int(sample_rate)
    return AudioTrack(wave, rate, start_s or 0.0, has_audio=True, source_channels=source_channels)


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True,
               missing_ok: bool = False) -> tuple[np.ndarray, int]:
    """The sound track as float32 ``(channels, samples)`` in [-1, 1] and its sample rate.

    ``mono`` averages all channels (any layout); ``sample_rate`` resamples with
    torchaudio. A file without audio raises :class:`VideoError` unless
    ``missing_ok`` (then an empty ``(1, 0)`` wave); :func:`read_audio` returns
    the flag instead. Taught in ``03_video_and_audio_io``.
    """
    track = read_audio(path, sample_rate=sample_rate, mono=mono)
    if not track.has_audio and not missing_ok:
        raise VideoError(f"{os.fspath(path)}: has no audio stream (or it holds no samples); pass missing_ok=True to get an empty wave")
    return track.wave, track.sample_rate


def rms_dbfs(wave: np.ndarray) -> float:
    """Level of a waveform in dB relative to full scale (silence gives about -240). Taught in ``03_video_and_audio_io``."""
    wave = np.asarray(wave, dtype=np.float64)
    return float(20.0 * np.log10(np.sqrt(np.mean(wave**2)) + 1e-12)) if wave.size else float("-inf")


@dataclass
class LogMelClips:
    """Log-mel features per clip: ``features`` float32 ``(N, n_mels, F)`` in dB.

    ``has_audio`` is False when the file has no sound track (features are then
    all ``LOG_FLOOR_DB``); ``silent[i]`` is True where clip ``i`` is below
    ``SILENCE_DBFS`` (or has no sound); ``level_dbfs[i]`` is its RMS level.
    """

    features: np.ndarray = field(repr=False)
    clip_times: list[tuple[float, float]]
    sample_rate: int
    hop_length: int
    has_audio: bool
    silent: np.ndarray
    level_dbfs: np.ndarray = field(repr=False)


def mel_transform(sample_rate: int = 16000, n_mels: int = 64, n_fft: int = 400, hop_length: int = 160):
    """``torchaudio.transforms.MelSpectrogram`` then ``AmplitudeToDB`` (power, no top-dB clipping). Taught in ``03_video_and_audio_io``."""
    import torch
    import torchaudio.transforms as T

    return torch.nn.Sequential(
        T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0),
        T.AmplitudeToDB(stype="power", top_db=None),
    )


def _times(clip_times: Iterable) -> list[tuple[float, float]]:
    out = []
    for item in clip_times:
        if hasattr(item, "start_s"):
            out.append((float(item.start_s), float(item.end_s)))
        else:
            t0, t1 = item
            out.append((float(t0), float(t1)))
    return out


def logmel_clips(
    path: str | os.PathLike,
    clip_times: Sequence,
    sample_rate: int = 16000,
    n_mels: int = 64,
    n_fft: int = 400,
    hop_length: int = 160,
    silence_dbfs: float = SILENCE_DBFS,
    track: AudioTrack | None = None,
) -> LogMelClips:
    """Log-mel spectrogram of the sound under each clip, on the video clips' own times.

    ``clip_times`` is a list of ``(start_s, end_s)`` (from
    ``vbert_lab.video.clip_times``) or of :class:`vbert_lab.video.Clip`. Every
    clip is cut to the same number of samples (the longest clip; padded with
    silence past the end of the track), so ``features`` stack into
    ``(N, n_mels, F)``. No sound track, or silence, is flagged, never an
    error. Pass ``track`` to reuse a decoded :class:`AudioTrack`. Taught in
    ``03_video_and_audio_io``.
    """
    import torch

    times = _times(clip_times)
    if track is None:
        track = read_audio(path, sample_rate=sample_rate, mono=True)
    elif track.sample_rate != sample_rate or track.wave.shape[0] != 1:
        wave = resample(track.wave.mean(axis=0, keepdims=True), track.sample_rate, sample_rate)
        track = AudioTrack(wave, sample_rate, track.start_s, track.has_audio, track.source_channels)
    length = max((int(round((t1 - t0) * sample_rate)) for t0, t1 in times), default=0)
    frames_per_clip = length // hop_length + 1
    n = len(times)
    if not track.has_audio or n == 0 or length == 0:
        return LogMelClips(
            features=np.full((n, n_mels, frames_per_clip), LOG_FLOOR_DB, np.float32), clip_times=times,
            sample_rate=sample_rate, hop_length=hop_length, has_audio=track.has_audio,
            silent=np.ones(n, dtype=bool), level_dbfs=np.full(n, -np.inf),
        )
    wave = track.wave[0]
    segments = np.zeros((n, length), np.float32)
    for i, (t0, _) in enumerate(times):
        lo = int(round((t0 - track.start_s) * sample_rate))
        src_lo, src_hi = max(lo, 0), min(lo + length, len(wave))
        if src_hi > src_lo:
            segments[i, src_lo - lo: src_hi - lo] = wave[src_lo:src_hi]
    levels = np.array([rms_dbfs(s) for s in segments])
    with torch.no_grad():
        feats = mel_transform(sample_rate, n_mels, n_fft, hop_length)(torch.from_numpy(segments))  # (N, n_mels, F)
    feats = feats.clamp_min(LOG_FLOOR_DB).numpy().astype(np.float32)
    return LogMelClips(
        features=feats, clip_times=times, sample_rate=sample_rate, hop_length=hop_length, has_audio=True,
        silent=levels < silence_dbfs, level_dbfs=levels,
    )
