"""vbert_lab.video: backends agree, resampling by timestamps, clips, decord's guards, bad input."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
import tracemalloc
import warnings

import av
import numpy as np
import pytest

from vbert_lab import video
from vbert_lab.video import BackendWarning, VideoError

HAS_DECORD = "decord" in video.available_backends()
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed (x86_64 only)")


def numbered_frames(n: int, size: int = 64) -> np.ndarray:
    """Frame i carries its number in red (i mod 32) and green (i // 32), and a moving bar on its left half."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = 8 * (i % 32)
        frames[i, ..., 1] = 8 * ((i // 32) % 32)
        frames[i, :, (2 * i) % (size // 2): (2 * i) % (size // 2) + 4, 2] = 255
    return frames


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    patch = frames[:, 8:-8, -12:-4, :].astype(float).mean(axis=(1, 2))  # (T, 3), far from the bar
    return (np.round(patch[:, 0] / 8) + 32 * np.round(patch[:, 1] / 8)).astype(int)


def plain_pyav_count(path) -> int:
    """Frames a plain PyAV loop decodes (skipping packets that fail, as in a truncated file)."""
    n = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            try:
                n += len(packet.decode())
            except av.FFmpegError:
                pass
    return n


def tone(seconds: float, rate: int = 16000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    """Good and bad files, written once with PyAV."""
    d = tmp_path_factory.mktemp("media")
    files = {}
    files["clean"] = video.write_video(d / "clean.mp4", numbered_frames(90), fps=30, audio=tone(3.0))
    files["no_audio"] = video.write_video(d / "no_audio.mp4", numbered_frames(60), fps=30)
    files["unicode"] = video.write_video(d / "a folder é" / "cuisson à l'étuvée 料理.mp4", numbered_frames(30), fps=30)
    # variable frame rate: gaps of 1/60 s and 1/10 s alternate
    steps = np.where(np.arange(23) % 2 == 0, 1 / 60, 1 / 10)
    files["vfr_pts"] = np.concatenate([[0.0], np.cumsum(steps)])
    files["vfr"] = video.write_video(d / "vfr.mp4", numbered_frames(24), fps=30, pts=files["vfr_pts"])

    files["empty"] = d / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["text"] = d / "notes.mp4"
    files["text"].write_text("this is a text file, not a video\n" * 20)
    data = files["clean"].read_bytes()  # moov at the end: cutting it loses the index
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    # over-reported frame count: the index (at the front) lists 300 frames, the data holds about half
    fast = video.write_video(d / "fast.mp4", numbered_frames(300), fps=30, faststart=True)
    data = fast.read_bytes()
    files["overreport"] = d / "overreport.mp4"
    files["overreport"].write_bytes(data[: len(data) // 2])
    files["audio_only"] = d / "audio_only.mp4"
    with av.open(str(files["audio_only"]), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        wave = tone(1.0)
        for lo in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, lo:lo + 1024]), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, lo
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    files["huge"] = video.write_video(d / "huge.mp4", np.full((2, 4320, 7680, 3), 90, np.uint8), fps=30, crf=40)
    files["folder"] = d / "a_folder.mp4"
    files["folder"].mkdir()
    files["missing"] = d / "missing.mp4"
    return files


# --------------------------------------------------------------------------- real files


def test_probe_and_read_frames_agree_with_plain_pyav_on_real_files(sample_videos):
    for name, path in sample_videos.items():
        expected = plain_pyav_count(path)
        info = video.probe(path)
        assert info.frames == expected, name
        for backend in video.available_backends():
            if backend == "torchcodec":
                continue
            got = video.read_frames(path, size=(36, 64), backend=backend)
            assert got.shape == (expected, 36, 64, 3) and got.dtype == np.uint8, (name, backend)
    big = video.probe(sample_videos["bigbuckbunny"])
    assert (big.width, big.height, big.fps, big.has_audio, big.audio_channels) == (1280, 720, 25.0, True, 6)


@needs_decord
def test_decord_and_pyav_give_the_same_frames_on_real_files(sample_videos):
    for name, path in sample_videos.items():
        with video.VideoReader(path, backend="decord") as reader:
            a = reader.read(end=2.0)
            assert reader.backend == "decord", f"{name}: decord fell back to PyAV"
        b = video.read_frames(path, end=2.0, backend="pyav")
        assert a.shape == b.shape, name
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (name, diff.mean())
        # resized by each backend's own scaler: the same within interpolation rounding
        a = video.read_frames(path, fps=20, size=64, backend="decord")
        b = video.read_frames(path, fps=20, size=64, backend="pyav")
        assert a.shape == b.shape and np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 2.0, name


@needs_decord
def test_decord_and_pyav_agree_on_tinycook(tmp_path_factory):
    from vbert_lab import tinycook

    root = tinycook.ensure_dataset(tmp_path_factory.mktemp("tc"), videos=2, seed=0, size=64, workers=1)
    paths = sorted((root / "videos").glob("*.mp4"))
    assert paths
    for path in paths:
        info = video.probe(path)
        assert info.frames == plain_pyav_count(path) and abs(info.fps - 30) < 0.1
        a = video.read_frames(path, fps=20, backend="decord")
        b = video.read_frames(path, fps=20, backend="pyav")
        assert a.shape == b.shape and np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 1.0


# --------------------------------------------------------------------------- timestamps and clips


def test_sample_ticks_picks_the_frame_on_screen():
    times = np.arange(90) / 30  # 30 fps, 3 s
    ticks, idx = video.sample_ticks(times, fps=20, duration_s=3.0)
    assert len(ticks) == 60
    np.testing.assert_array_equal(idx, np.floor(np.arange(60) * 1.5 + 1e-9).astype(int))
    ticks, idx = video.sample_ticks(times, fps=None, start=1.0, end=2.0)
    np.testing.assert_array_equal(idx, np.arange(30, 60))


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_resampling_30_to_20_fps_by_timestamps(media, backend):
    frames = video.read_frames(media["clean"], fps=20, backend=backend)
    assert frames.shape == (60, 64, 64, 3)
    np.testing.assert_array_equal(frame_numbers(frames), np.floor(np.arange(60) * 1.5 + 1e-9).astype(int))


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_resampling_a_variable_frame_rate_file(media, backend):
    pts = media["vfr_pts"]
    frames = video.read_frames(media["vfr"], fps=25, backend=backend)
    ticks = np.arange(len(frames)) / 25
    expected = np.searchsorted(pts, ticks + 1e-6, side="right") - 1
    np.testing.assert_array_equal(frame_numbers(frames), expected)
    # a constant-rate assumption (frame i at i / average fps) would pick other frames
    naive = np.minimum(np.round(ticks * len(pts) / pts[-1]).astype(int), len(pts) - 1)
    assert (naive != expected).any()


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_start_and_end_seek_to_the_same_frames(sample_videos, backend):
    path = sample_videos["bikes"]  # 10 s at 25 fps
    whole = video.read_frames(path, fps=20, size=(68, 160), backend=backend)
    part = video.read_frames(path, fps=20, size=(68, 160), start=5.0, end=7.0, backend=backend)
    np.testing.assert_array_equal(part, whole[100:140])
    clips = list(video.iter_clips(path, fps=20, clip_frames=30, size=(68, 160), start=4.5, backend=backend))
    assert [c.start_s for c in clips] == [4.5, 6.0, 7.5]
    np.testing.assert_array_equal(clips[1].frames, whole[120:150])


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_iter_clips_cuts_the_papers_clips(media, backend):
    clips = list(video.iter_clips(media["clean"], fps=20, clip_frames=30, backend=backend))
    assert [(c.index, c.start_s, c.end_s) for c in clips] == [(0, 0.0, 1.5), (1, 1.5, 3.0)]
    whole = video.read_frames(media["clean"], fps=20, backend=backend)
    for clip in clips:
        assert clip.frames.shape == (30, 64, 64, 3) and clip.frames.dtype == np.uint8
        np.testing.assert_array_equal(clip.frames, whole[clip.index * 30:(clip.index + 1) * 30])
    assert video.clip_times(media["clean"]) == [c.times for c in clips]
    short = list(video.iter_clips(media["clean"], fps=20, clip_frames=25, drop_last=False, backend=backend))
    assert [len(c.frames) for c in short] == [25, 25, 10] and short[-1].end_s == pytest.approx(3.0)


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_iter_clips_upsampling_repeats_frames_across_clips(tmp_path, backend):
    """At 20 fps from a 12 fps file a source frame can end one clip and start the next: both get it."""
    path = video.write_video(tmp_path / "slow.mp4", numbered_frames(36, size=64), fps=12)  # 3 s
    whole = video.read_frames(path, fps=20, backend=backend)
    clips = list(video.iter_clips(path, fps=20, clip_frames=7, backend=backend))
    assert len(clips) == 60 // 7
    for clip in clips:
        np.testing.assert_array_equal(clip.frames, whole[clip.index * 7:(clip.index + 1) * 7])
    pyav = video.read_frames(path, fps=20, backend="pyav")
    assert np.abs(whole.astype(int) - pyav.astype(int)).mean() < 2  # the same frames whatever the backend
    seen = np.concatenate([frame_numbers(c.frames) for c in clips]).tolist()
    boundaries = [seen[7 * i - 1] == seen[7 * i] for i in range(1, len(clips))]
    assert any(boundaries)  # a frame repeated across a clip boundary...
    assert seen == sorted(seen) and set(seen) == set(range(seen[-1] + 1))  # ...in order, no source frame skipped


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_iter_clips_memory_is_flat_in_video_length(tmp_path, backend):
    """Peak Python/numpy memory while streaming clips of a 4 s and a 24 s video stays the same."""
    peaks = {}
    for seconds in (4, 24):
        path = video.write_video(tmp_path / f"{seconds}s.mp4", numbered_frames(30 * seconds, size=96), fps=30)
        tracemalloc.start()
        n = 0
        for clip in video.iter_clips(path, fps=20, clip_frames=30, backend=backend):
            n += 1
            del clip
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == seconds * 20 // 30
    clip_bytes = 30 * 96 * 96 * 3
    assert peaks[24] < peaks[4] * 1.5 + clip_bytes, peaks
    assert peaks[24] < 6 * clip_bytes, peaks  # the 24 s video's frames would be 24 clips' worth


# --------------------------------------------------------------------------- decord's guards


@needs_decord
@pytest.mark.parametrize("name", ["overreport"])
def test_a_header_that_over_reports_its_frame_count(media, name):
    path = media[name]
    with av.open(str(path)) as container:
        claimed = container.streams.video[0].frames
    real = plain_pyav_count(path)
    assert claimed > real  # the file really lies
    t0 = time.perf_counter()
    with pytest.warns(BackendWarning, match="claims|PyAV"):
        info = video.probe(path)
    assert info.frames <= real + 1 and info.frames < claimed
    with pytest.warns(BackendWarning):
        frames = video.read_frames(path)
    assert 0 < len(frames) <= info.frames
    assert time.perf_counter() - t0 < 10


@needs_decord
def test_a_decord_read_that_hangs_is_abandoned(media, monkeypatch):
    release = threading.Event()

    class HangingReader:
        def get_batch(self, indices):
            release.wait(30)  # what decord does on a file that over-reports: never returns
            raise RuntimeError("released")

    monkeypatch.setattr(video, "_open_decord", lambda *a, **k: HangingReader())
    try:
        t0 = time.perf_counter()
        with video.VideoReader(media["clean"], backend="decord", timeout_s=1.0) as reader:
            with pytest.warns(BackendWarning, match="did not return"):
                frames = reader.read(fps=20)
            assert reader.backend == "pyav"
        assert time.perf_counter() - t0 < 8
        np.testing.assert_array_equal(frames, video.read_frames(media["clean"], fps=20, backend="pyav"))
    finally:
        release.set()


@needs_decord
def test_decord_count_mismatch_falls_back_to_pyav(media, monkeypatch):
    import decord

    class OverCounting:
        def __init__(self, *a, **k):
            self._inner = real(*a, **k)

        def __len__(self):
            return len(self._inner) + 50

        def __getattr__(self, name):
            return getattr(self._inner, name)

    real = decord.VideoReader
    monkeypatch.setattr(decord, "VideoReader", OverCounting)
    with pytest.warns(BackendWarning, match="over-reported"):
        with video.VideoReader(media["clean"], backend="decord") as reader:
            assert reader.backend == "pyav"
            assert len(reader.read()) == 90


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_decord
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_no_memory_growth_across_many_files(media, tmp_path):
    paths = [shutil.copy(media["clean"], tmp_path / f"copy{i}.mp4") for i in range(10)]
    for p in paths:  # warm up allocator pools and codec tables
        video.read_frames(p, fps=20, size=32, backend="decord")
    gc.collect()
    before = _rss_bytes()
    for _ in range(15):
        for p in paths:
            with video.VideoReader(p, backend="decord") as reader:
                reader.read(fps=20, size=32)
                assert reader.backend == "decord"
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 60 * 1024**2, f"RSS grew by {grown / 1024**2:.0f} MiB over 150 opens"


def test_missing_decord_falls_back_with_a_warning(media, monkeypatch):
    monkeypatch.setattr(video, "_has", lambda module: module != "decord")
    with pytest.warns(BackendWarning, match="decord is not installed"):
        frames = video.read_frames(media["clean"], fps=20)
    assert frames.shape == (60, 64, 64, 3)
    with pytest.raises(VideoError, match="not installed"):
        video.read_frames(media["clean"], backend="decord")


def test_unknown_backend_is_refused(media):
    with pytest.raises(ValueError, match="unknown video backend"):
        video.read_frames(media["clean"], backend="opencv")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("empty", VideoError, "empty"),
        ("text", VideoError, "not a readable video"),
        ("truncated", VideoError, "truncated"),
        ("audio_only", VideoError, "no video stream"),
        ("folder", IsADirectoryError, "is a folder"),
        ("missing", FileNotFoundError, "no such video file"),
    ],
)
def test_bad_input_gets_a_clear_error_quickly(media, name, error, message):
    path = media[name]
    for call in (video.probe, video.read_frames, lambda p: list(video.iter_clips(p))):
        t0 = time.perf_counter()
        with pytest.raises(error, match=message) as err:
            call(path)
        assert path.name in str(err.value)
        assert time.perf_counter() - t0 < 5


def test_a_video_without_audio_is_read_and_flagged(media):
    info = video.probe(media["no_audio"])
    assert (info.has_audio, info.audio_sample_rate, info.audio_channels) == (False, None, None)
    assert video.read_frames(media["no_audio"]).shape == (60, 64, 64, 3)


def test_a_very_large_resolution(media):
    t0 = time.perf_counter()
    info = video.probe(media["huge"])
    assert (info.width, info.height, info.frames) == (7680, 4320, 2)
    small = video.read_frames(media["huge"], size=32)
    assert small.shape == (2, 32, 32, 3) and abs(int(small.mean()) - 90) <= 3
    with pytest.raises(VideoError, match="huge.mp4.*GiB.*size="):
        video.read_frames(media["huge"], max_bytes=64 * 1024**2)
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("backend", [b for b in ("decord", "pyav") if b in video.available_backends()])
def test_a_path_with_spaces_and_non_ascii(media, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendWarning)  # decord must read it itself
        frames = video.read_frames(media["unicode"], backend=backend)
    np.testing.assert_array_equal(frame_numbers(frames), np.arange(30))


def _read_in_child(path, queue):
    queue.put(len(video.read_frames(path, fps=20, backend="decord")))


@needs_decord
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_reads_work_in_a_forked_worker(media):
    """DataLoader workers are forked after the parent has read with decord: the watchdog must not be inherited dead."""
    import multiprocessing

    video.read_frames(media["clean"], fps=20, backend="decord")  # the parent's watchdog thread exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(media["clean"], queue))
    child.start()
    child.join(20)
    assert child.exitcode == 0 and queue.get(timeout=1) == 60


@needs_decord
def test_a_real_decord_failure_falls_back_to_the_same_frames(media):
    """decord 0.6.0 cannot scale to some small widths (16 px here): the read warns and PyAV gives the frames."""
    with pytest.warns(BackendWarning, match="decord failed"):
        with video.VideoReader(media["clean"], backend="decord") as reader:
            got = reader.read(fps=20, size=16)
            assert reader.backend == "pyav"
    np.testing.assert_array_equal(got, video.read_frames(media["clean"], fps=20, size=16, backend="pyav"))
