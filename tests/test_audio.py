"""vbert_lab.audio: any layout to mono, torchaudio resampling, log-mel per clip, no sound as a flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vbert_lab import audio, video
from vbert_lab.video import VideoError


def tone(seconds: float, rate: int = 16000, hz: float = 440.0, level: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("audio")
    frames = np.full((90, 32, 32, 3), 100, np.uint8)
    wave = tone(3.0)
    wave[:, 16000:32000] = 0.0  # the middle second is silent
    out = {
        "tone": video.write_video(d / "tone.mp4", frames, fps=30, audio=wave, sample_rate=16000),
        "mute": video.write_video(d / "mute.mp4", frames, fps=30),
        "stereo": video.write_video(d / "stereo.mp4", frames, fps=30, audio=np.concatenate([tone(3.0), -tone(3.0, hz=880)]), sample_rate=22050),
    }
    data = out["tone"].read_bytes()
    (d / "cut.mp4").write_bytes(data[: int(len(data) * 0.9)])
    out["cut"] = d / "cut.mp4"
    return out


def test_six_channel_aac_downmixes_to_mono(sample_videos):
    path = sample_videos["bigbuckbunny"]
    full = audio.read_audio(path, mono=False)
    assert full.wave.shape[0] == 6 and full.sample_rate == 48000 and full.source_channels == 6
    mono = audio.read_audio(path)
    assert mono.wave.shape == (1, full.wave.shape[1])
    np.testing.assert_allclose(mono.wave[0], full.wave.mean(axis=0), atol=1e-6)
    assert abs(full.duration_s - video.probe(path).duration_s) < 0.1
    wave, rate = audio.load_audio(path, sample_rate=16000)
    assert rate == 16000 and wave.shape[0] == 1 and abs(wave.shape[1] - full.wave.shape[1] / 3) <= 2


def test_resampling_keeps_the_pitch(files):
    wave, rate = audio.load_audio(files["tone"], sample_rate=8000)
    assert rate == 8000
    spectrum = np.abs(np.fft.rfft(wave[0, :8000]))
    assert np.fft.rfftfreq(8000, 1 / 8000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    stereo, rate = audio.load_audio(files["stereo"], sample_rate=16000)
    assert rate == 16000 and stereo.shape[0] == 1


def test_logmel_clips_on_the_video_clips_times(files):
    times = video.clip_times(files["tone"], fps=20, clip_frames=20)  # 1 s clips
    assert times == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    mels = audio.logmel_clips(files["tone"], times, sample_rate=16000, n_mels=64)
    assert mels.has_audio and mels.features.shape == (3, 64, 16000 // 160 + 1) and mels.features.dtype == np.float32
    assert mels.silent.tolist() == [False, True, False]
    # the loudest mel band of a 440 Hz tone is the band whose filter peaks nearest 440 Hz
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(201, 0.0, 8000.0, 64, 16000)  # (freq bins, mels)
    band = int(fb[int(round(440 / 40))].argmax())
    assert abs(int(mels.features[0].mean(axis=1).argmax()) - band) <= 1
    # equal to torchaudio applied to the same samples by hand
    wave, _ = audio.load_audio(files["tone"], sample_rate=16000)
    expected = audio.mel_transform(16000, 64)(torch.from_numpy(wave[:, 32000:48000].copy()))[0]
    torch.testing.assert_close(torch.from_numpy(mels.features[2]), expected.clamp_min(audio.LOG_FLOOR_DB))


def test_clips_from_iter_clips_are_accepted(files):
    clips = list(video.iter_clips(files["tone"], fps=20, clip_frames=30, size=32))
    mels = audio.logmel_clips(files["tone"], clips)
    assert mels.features.shape[0] == len(clips) == 2 and mels.clip_times == [c.times for c in clips]


def test_no_audio_is_a_flag_not_a_crash(files, sample_videos):
    for path in (files["mute"], sample_videos["bikes"]):
        track = audio.read_audio(path)
        assert not track.has_audio and track.wave.shape == (1, 0)
        times = video.clip_times(path)
        mels = audio.logmel_clips(path, times, n_mels=32)
        assert not mels.has_audio and mels.silent.all() and mels.features.shape[:2] == (len(times), 32)
        assert (mels.features == audio.LOG_FLOOR_DB).all()
    with pytest.raises(VideoError, match="mute.mp4.*no audio"):
        audio.load_audio(files["mute"])
    wave, rate = audio.load_audio(files["mute"], missing_ok=True, sample_rate=16000)
    assert wave.shape == (1, 0) and rate == 16000


def test_clips_past_the_end_of_the_sound_are_padded(files):
    mels = audio.logmel_clips(files["tone"], [(2.5, 4.0), (5.0, 6.5)])
    assert mels.features.shape[0] == 2 and mels.silent.tolist() == [False, True]


def test_truncated_audio_does_not_crash(files):
    track = audio.read_audio(files["cut"])
    assert track.has_audio and 0 < track.duration_s <= 3.1


@pytest.mark.parametrize("expected", [0, 7, 1000])  # duration unknown, too short, ample
def test_decoded_frames_gather_into_one_buffer_whatever_the_expected_length(expected):
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((2, int(k))).astype(np.float32) for k in rng.integers(1, 50, 40)]
    samples = audio._Samples()
    samples.expect(expected)
    for c in chunks:
        samples.append(c)
    assert np.array_equal(samples.array(), np.concatenate(chunks, axis=1))


def test_bad_paths_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.mp4"):
        audio.read_audio(tmp_path / "nothing.mp4")
    (tmp_path / "text.mp4").write_text("not audio")
    with pytest.raises(VideoError, match="text.mp4.*not a readable"):
        audio.logmel_clips(tmp_path / "text.mp4", [(0, 1.5)])
