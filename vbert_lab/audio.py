"""Reading sound: the audio track of a video as a mono float waveform.

Decoding uses PyAV (any container and channel layout, the 6-channel AAC of
``bigbuckbunny.mp4`` included); resampling uses torchaudio. Log-mel features
per clip are taught in ``03_video_and_audio_io``; the waveform is shown first
in ``00_welcome_and_setup``.
"""

from __future__ import annotations

import os

import numpy as np

from .video import VideoError, _check_path, _open


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """The sound track as float32 ``(channels, samples)`` in [-1, 1] and its sample rate.

    ``mono`` averages all channels (any layout); ``sample_rate`` resamples with
    torchaudio. A file without audio raises :class:`VideoError`; check
    ``vbert_lab.video.probe(path).has_audio`` first where that is expected.
    """
    path = _check_path(path)
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise VideoError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            arr = frame.to_ndarray()
            if frame.format.is_planar:
                arr = arr.reshape(len(frame.layout.channels), -1)
            else:  # interleaved: (1, samples * channels)
                arr = arr.reshape(-1, len(frame.layout.channels)).T
            if arr.dtype.kind == "i":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
            chunks.append(arr.astype(np.float32, copy=False))
    if not chunks:
        raise VideoError(f"{path}: the audio stream holds no samples")
    wave = np.concatenate(chunks, axis=1)
    if mono:
        wave = wave.mean(axis=0, keepdims=True)
    if sample_rate is not None and sample_rate != rate:
        import torch
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(wave), rate, sample_rate).numpy()
        rate = sample_rate
    return wave, rate
