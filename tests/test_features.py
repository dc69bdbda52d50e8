"""vbert_lab.features: extractors, batch extraction, shards + manifest, resume after kill -9, bad input, ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vbert_lab import features, video
from vbert_lab.features import ExtractError, TinyCook3DConfig, WeightsNotFound
from vbert_lab.tinycook import ensure_dataset, load_annotations

TINY = TinyCook3DConfig(channels=(8, 8, 16, 16, 32))  # a few seconds of training in the tests


@pytest.fixture(scope="session")
def tc(tmp_path_factory) -> Path:
    """A six-video TinyCook set at 64 px (4 training, 1 validation, 1 testing)."""
    return ensure_dataset(tmp_path_factory.mktemp("features") / "tc", videos=6, seed=0, size=64, workers=2)


@pytest.fixture(scope="session")
def reference(tc, tmp_path_factory) -> Path:
    """An uninterrupted single-process extraction with the untrained (seeded) extractor and audio."""
    out = tmp_path_factory.mktemp("reference") / "features"
    features.extract(tc / "videos", out, "tinycook3d", weights="random", workers=0, audio=True, progress=False)
    return out


def _same(a: Path, b: Path, kind: str = "video") -> None:
    fa, ra = features.load_features(a, kind)
    fb, rb = features.load_features(b, kind)
    keys = ("video", "clip", "start_s", "end_s", "n_clips", "status")
    assert [tuple(r[k] for k in keys) for r in ra] == [tuple(r[k] for k in keys) for r in rb]
    assert torch.equal(fa, fb), f"features differ by up to {(fa - fb).abs().max():.3g}"


# --------------------------------------------------------------------------- extractors


def test_s3d_is_pooled_before_its_classifier():
    model = features.S3DExtractor(weights="random")
    clips = torch.randint(0, 256, (1, 16, 256, 256, 3), dtype=torch.uint8)
    x = model.prepare(clips)
    assert x.shape == (1, 3, 16, 224, 224)  # centre crop of S3D's Kinetics recipe
    pooled = model.embed(clips)
    assert pooled.shape == (1, 1024) and model.dim == 1024
    with torch.no_grad():  # torchvision's own logits are its classifier applied to exactly this pooled vector
        logits = model.backbone(x)
        from_pooled = model.backbone.classifier(pooled[:, :, None, None, None]).flatten(1)
    torch.testing.assert_close(from_pooled, logits, rtol=1e-4, atol=1e-5)


def test_missing_s3d_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = "https://download.pytorch.org/models/s3d-d76dad2f.pth"
    target = tmp_path / "hub" / "checkpoints" / "s3d-d76dad2f.pth"
    with pytest.raises(WeightsNotFound) as err:
        features.load_extractor("s3d", download=False)
    assert url in str(err.value) and str(target) in str(err.value) and "tinycook3d" in str(err.value)

    from torchvision.models.video import S3D_Weights

    def no_internet(self, *a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(type(S3D_Weights.KINETICS400_V1), "get_state_dict", no_internet)
    with pytest.raises(WeightsNotFound, match="download failed.*Name or service"):
        features.load_s3d_state(download=True)

    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a download")
    with pytest.raises(WeightsNotFound, match="corrupt"):
        features.load_s3d_state(download=False)


def test_s3d_loads_weights_from_the_hub_cache_or_a_file(tmp_path, monkeypatch):
    state = features.S3DExtractor(weights="random", seed=3).backbone.state_dict()
    cached = tmp_path / "checkpoints" / "s3d.pth"  # no hash in the name: nothing to verify
    cached.parent.mkdir()
    torch.save(state, cached)
    monkeypatch.setattr(features, "s3d_weights_file", lambda: cached)
    from_cache = features.load_extractor("s3d")
    from_file = features.load_extractor("s3d", weights=cached)
    for model in (from_cache, from_file):
        torch.testing.assert_close(model.backbone.features[0][0][0].weight, state["features.0.0.0.weight"])
    with pytest.raises(WeightsNotFound, match="nope.pth does not exist"):
        features.load_extractor("s3d", weights=tmp_path / "nope.pth")


def test_tinycook3d_needs_weights_and_names_unknown_extractors():
    with pytest.raises(WeightsNotFound, match="train_tinycook3d"):
        features.load_extractor("tinycook3d")
    with pytest.raises(ValueError, match="unknown extractor 'c3d'.*tinycook3d, s3d"):
        features.load_extractor("c3d")
    model = features.load_extractor("tinycook3d", weights="random")
    out = model.embed(torch.zeros(2, 30, 64, 64, 3, dtype=torch.uint8))
    assert out.shape == (2, 256) and model.dim == 256


def test_extractor_split_is_disjoint_from_every_evaluation_split(tc):
    split = features.extractor_split(tc, seed=0)
    subsets = {vid: info["subset"] for vid, info in load_annotations(tc)["database"].items()}
    assert split["extractor"] and all(subsets[v] == "training" for v in split["extractor"])
    assert all(subsets[v] == "training" for v in split["probe"])
    assert sorted(split["heldout"]) == sorted(v for v, s in subsets.items() if s != "training")
    assert not set(split["extractor"]) & (set(split["probe"]) | set(split["heldout"]))
    assert len(split["extractor"]) <= len(split["probe"])  # at most half of the training videos
    assert split == features.extractor_split(tc, seed=0)


def test_training_is_deterministic_and_the_file_round_trips(tc, tmp_path):
    videos = features.extractor_split(tc)["extractor"]
    runs = [features.train_tinycook3d(tc, videos, epochs=2, config=TINY, seed=1, workers=0, progress=False)
            for _ in range(2)]
    assert runs[0].fingerprint() == runs[1].fingerprint()
    history = runs[0].meta["history"]
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert runs[0].meta["videos"] == videos and runs[0].meta["clips"] > 10
    path = features.save_extractor(runs[0], tmp_path / "x" / "tinycook3d.safetensors")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    loaded = features.load_extractor("tinycook3d", weights=path)
    assert torch.equal(torch.rand(3), expected)  # loading draws nothing from the caller's generator
    assert loaded.fingerprint() == runs[0].fingerprint() and loaded.meta["history"] == history
    clips = torch.randint(0, 256, (3, 30, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(loaded.embed(clips), runs[0].embed(clips))
    (tmp_path / "bad.safetensors").write_text("not weights")
    with pytest.raises(WeightsNotFound, match="bad.safetensors: not a readable"):
        features.load_tinycook3d(tmp_path / "bad.safetensors")


def test_pooling_takes_the_strongest_place_in_the_frame_and_old_files_keep_the_average(tmp_path):
    torch.manual_seed(0)
    model = features.TinyCook3D(TINY).eval()
    x = torch.randn(2, 3, 15, 64, 64)
    with torch.no_grad():
        fmap = model.body(x)  # (B, C, T', H', W')
        torch.testing.assert_close(model(x), fmap.mean(2).amax(dim=(2, 3)))
        mean_model = features.TinyCook3D(TinyCook3DConfig(channels=TINY.channels, pooling="mean")).eval()
        mean_model.load_state_dict(model.state_dict())
        torch.testing.assert_close(mean_model(x), fmap.mean(dim=(2, 3, 4)))
    assert mean_model.fingerprint() != model.fingerprint()  # same weights, other features
    with pytest.raises(ValueError, match="pooling='sum'"):
        TinyCook3DConfig(pooling="sum")
    # a file written before the pooling field existed: its features were averaged, and must stay so
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = features.save_extractor(mean_model, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["vbert_lab"])
    del header["config"]["pooling"]
    save_file(load_file(str(path)), str(path), metadata={"vbert_lab": json.dumps(header)})
    assert features.load_tinycook3d(path).config.pooling == "mean"


# --------------------------------------------------------------------------- extraction


def test_extraction_writes_shards_and_a_manifest_that_match_a_direct_pass(tc, reference):
    feats, rows = features.load_features(reference)
    n_videos = len(list((tc / "videos").glob("*.mp4")))
    assert feats.shape == (len(rows), 256) and len({r["video"] for r in rows}) == n_videos
    assert {"video", "clip", "start_s", "end_s", "shard", "row"} <= set(rows[0])
    assert all(r["end_s"] - r["start_s"] == pytest.approx(1.5) for r in rows)
    # the stored features are the extractor applied to the package's 1.5 s clips
    model = features.load_extractor("tinycook3d", weights="random")
    path = tc / "videos" / f"{rows[0]['video']}.mp4"
    clips = list(video.iter_clips(path, size=64))
    mine = [i for i, r in enumerate(rows) if r["video"] == path.stem]
    assert [rows[i]["start_s"] for i in mine] == [round(c.start_s, 6) for c in clips]
    direct = model.embed(torch.from_numpy(np.stack([c.frames for c in clips])))
    torch.testing.assert_close(feats[mine], direct, rtol=1e-5, atol=1e-5)
    audio, audio_rows = features.load_features(reference, "audio")
    assert audio.shape == (len(rows), 128) and audio_rows == rows and torch.isfinite(audio).all()
    assert not all(r["silent"] for r in rows)


def test_workers_shards_and_batch_boundaries_do_not_change_features(tc, reference, tmp_path):
    features.extract(tc / "videos", tmp_path / "f", "tinycook3d", weights="random", workers=2, audio=True,
                     shard_rows=7, progress=False)
    assert len(list((tmp_path / "f").glob("shard-*.safetensors"))) > 1
    _same(reference, tmp_path / "f")
    _same(reference, tmp_path / "f", "audio")


def test_batcher_cuts_a_video_into_the_same_batches_whatever_the_chunks():
    clips = torch.arange(23 * 2).view(23, 2)
    for chunk in (1, 3, 8, 23):
        batcher = features._Batcher(5)
        batches = [b.clone() for lo in range(0, 23, chunk) for b in batcher.add(clips[lo:lo + chunk])]
        rest = batcher.rest()
        assert [len(b) for b in batches] == [5, 5, 5, 5] and len(rest) == 3, chunk
        assert torch.equal(torch.cat(batches + [rest]), clips)
        assert batcher.rest() is None  # the buffer is handed back with the last clips


def test_batches_that_cross_decoded_chunks_give_the_same_features(tc, reference, tmp_path):
    # batches of 12 gather one and a half chunks of 8 decoded clips
    features.extract(tc / "videos", tmp_path / "f", "tinycook3d", weights="random", workers=1, batch_size=12,
                     audio=True, progress=False)
    _same(reference, tmp_path / "f")


def test_ranks_split_the_videos_and_their_union_is_the_single_run(tc, reference, tmp_path, monkeypatch):
    seen = []
    for rank in (0, 1):  # as under `torchrun --nproc-per-node 2`, one after the other
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        summary = features.extract(tc / "videos", tmp_path / "f", "tinycook3d", weights="random", workers=0,
                                   audio=True, progress=False)
        assert (summary.rank, summary.world_size) == (rank, 2) and summary.extracted
        seen.append(set(summary.extracted))
    assert not seen[0] & seen[1]
    assert (tmp_path / "f" / "manifest-r00001.jsonl").is_file()
    _same(reference, tmp_path / "f")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        features.extract(tc / "videos", tmp_path / "g", "tinycook3d", weights="random", progress=False)


KILLABLE = textwrap.dedent("""
    import sys
    from vbert_lab import features
    features.extract(sys.argv[1], sys.argv[2], "tinycook3d", weights="random", workers=1, audio=True,
                     shard_rows=1, progress=False)
""")


def _ok_lines(manifest: Path) -> list[dict]:
    if not manifest.exists():
        return []
    rows = []
    for line in manifest.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in rows if r.get("status") == "ok"]


def test_extraction_killed_midway_and_started_again_gives_the_same_features(tc, reference, tmp_path):
    out = tmp_path / "f"
    manifest = out / "manifest-r00000.jsonl"
    n_videos = len(list((tc / "videos").glob("*.mp4")))
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tc / "videos"), str(out)],
                            start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not _ok_lines(manifest) and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the extractor and its DataLoader worker, mid-run
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = {r["video"] for r in _ok_lines(manifest)}
    assert 1 <= len(done) < n_videos, f"the kill came too late to test anything ({len(done)} of {n_videos} done)"
    # what a crash can leave besides: an orphan shard, a temporary file, a torn manifest line
    (out / "shard-r00000-999999.safetensors").write_bytes(b"orphan")
    (out / ".shard-r00000-000998.safetensors.tmp").write_bytes(b"half")
    with open(manifest, "a") as fh:
        fh.write('{"video": "tc00005", "status": "ok", "clip": 0, "n_cl')

    summary = features.extract(tc / "videos", out, "tinycook3d", weights="random", workers=1, audio=True,
                               shard_rows=1, progress=False)
    assert set(summary.skipped) == done and len(summary.extracted) == n_videos - len(done)
    assert not (out / "shard-r00000-999999.safetensors").exists()
    assert not list(out.glob(".*.tmp"))
    _same(reference, out)
    _same(reference, out, "audio")
    again = features.extract(tc / "videos", out, "tinycook3d", weights="random", audio=True, progress=False)
    assert len(again.skipped) == n_videos and not again.extracted


def _numbered(n: int, size: int = 64) -> np.ndarray:
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = 8 * (i % 32)
        frames[i, :, (2 * i) % (size // 2): (2 * i) % (size // 2) + 4, 2] = 255
    return frames


@pytest.fixture(scope="module")
def bad_folder(tc, tmp_path_factory) -> Path:
    """Every bad input of the issue in one folder, beside good videos."""
    d = tmp_path_factory.mktemp("bad") / "videos"
    d.mkdir()
    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate)).astype(np.float32)[None]
    good = video.write_video(d / "good.mp4", _numbered(90), fps=30, audio=tone)
    video.write_video(d / "no_audio.mp4", _numbered(60), fps=30)
    video.write_video(d / "cuisson à l'étuvée 料理.mp4", _numbered(60), fps=30)
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (d / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fast = video.write_video(d.parent / "fast.mp4", _numbered(300), fps=30, faststart=True)
    (d / "overreport.mp4").write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    with av.open(str(d / "audio_only.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        for lo in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, lo:lo + 1024]), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, lo
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    video.write_video(d / "huge.mp4", np.full((32, 2160, 3840, 3), 90, np.uint8), fps=20, crf=40)
    (d / "a_folder.mp4").mkdir()
    (d / "missing.mp4").symlink_to(d.parent / "gone.mp4")  # a broken link: the file it names is missing
    video.write_video(d / "short.mp4", _numbered(20), fps=30)  # 0.67 s: shorter than one clip
    (d / "readme.txt").write_text("not a video suffix: ignored")
    return d


def test_a_folder_of_bad_inputs_finishes_lists_them_and_extracts_the_rest(bad_folder, tmp_path):
    t0 = time.perf_counter()
    summary = features.extract(bad_folder, tmp_path / "f", "tinycook3d", weights="random", workers=2, audio=True,
                               progress=False)
    assert time.perf_counter() - t0 < 60
    expected_failures = {"empty": "empty", "notes": "not a readable video", "truncated": "truncated",
                         "audio_only": "no video stream", "a_folder": "is a folder", "missing": "no such video file"}
    assert set(summary.failed) == set(expected_failures)
    failures = {r["video"]: r for r in features.load_failures(tmp_path / "f")}
    assert set(failures) == set(expected_failures)
    for vid, message in expected_failures.items():
        assert message in failures[vid]["error"] and Path(failures[vid]["file"]).name == f"{vid}.mp4"
    assert set(summary.extracted) == {"good", "no_audio", "cuisson à l'étuvée 料理", "overreport", "huge"}
    assert summary.empty == ["short"]
    feats, rows = features.load_features(tmp_path / "f")
    by_video = {v: [r for r in rows if r["video"] == v] for v in summary.extracted}
    assert len(by_video["good"]) == 2 and len(by_video["huge"]) == 1 and len(by_video["overreport"]) >= 2
    assert all(r["silent"] and not r["has_audio"] for r in by_video["no_audio"])
    assert torch.isfinite(feats).all()
    again = features.extract(bad_folder, tmp_path / "f", "tinycook3d", weights="random", workers=0, audio=True,
                             progress=False)
    assert not again.extracted and not again.failed and len(again.skipped) == 12  # failures are not retried
    retried = features.extract(bad_folder, tmp_path / "f", "tinycook3d", weights="random", workers=0, audio=True,
                               retry_failed=True, progress=False)
    assert set(retried.failed) == set(expected_failures)
    assert {r["video"] for r in features.load_failures(tmp_path / "f")} == set(expected_failures)


def test_an_output_folder_of_other_features_is_refused_then_overwritten(tc, tmp_path):
    videos = sorted((tc / "videos").glob("*.mp4"))[:2]
    features.extract(videos, tmp_path / "f", "tinycook3d", weights="random", progress=False)
    other = features.TinyCook3D(TINY)
    with pytest.raises(ExtractError, match="other settings.*dim.*fingerprint.*overwrite"):
        features.extract(videos, tmp_path / "f", other, progress=False)
    features.extract(videos, tmp_path / "f", other, overwrite=True, progress=False)
    feats, _ = features.load_features(tmp_path / "f")
    assert feats.shape[1] == 32
    with pytest.raises(ValueError, match="without audio"):
        features.load_features(tmp_path / "f", "audio")
    with pytest.raises(FileNotFoundError, match="no extracted features"):
        features.load_features(tmp_path / "nothing")


def test_list_videos_refuses_two_files_with_one_id(tmp_path):
    a = video.write_video(tmp_path / "a" / "x.mp4", _numbered(3), fps=30)
    b = video.write_video(tmp_path / "b" / "x.mp4", _numbered(3), fps=30)
    with pytest.raises(ExtractError, match="share the id 'x'"):
        features.list_videos([a, b])
    with pytest.raises(ExtractError, match="not a folder"):
        features.list_videos(tmp_path / "nope")


def test_ensure_features_trains_once_and_reuses_what_is_on_disk(tc, tmp_path, monkeypatch):
    import shutil
    from dataclasses import replace

    import vbert_lab
    from vbert_lab.profiles import get_profile

    data = tmp_path / "tc"
    shutil.copytree(tc, data)
    run = vbert_lab.setup("smoke", "cpu", data, 0)
    run.profile = replace(get_profile("smoke"), tinycook_videos=6, frame_size=64, extractor_epochs=1, extractor_videos=2)
    real_config = features.TinyCook3DConfig
    monkeypatch.setattr(features, "TinyCook3DConfig", lambda **fields: real_config(**fields) if fields else TINY)
    feats, rows = features.ensure_features(run, progress=False)
    weights = data / "derived" / "extractor" / "tinycook3d.safetensors"
    assert weights.is_file() and feats.shape == (len(rows), 32)
    assert (data / "derived" / "features" / "extract.json").is_file()

    def no_training(*a, **k):
        raise AssertionError("trained again although the weights are on disk")

    monkeypatch.setattr(features, "train_tinycook3d", no_training)
    again, rows_again = features.ensure_features(run, progress=False)
    assert torch.equal(again, feats) and rows_again == rows
    # a file of another network (today's default channels or frame size moved) is stale: trained again, not reused
    for other in ({"channels": (8, 8, 16, 16, 16)}, {"frame_size": 32}):
        changed = replace(TINY, **other)
        monkeypatch.setattr(features, "TinyCook3DConfig", lambda changed=changed, **fields: real_config(**fields) if fields else changed)
        with pytest.raises(AssertionError, match="trained again"):
            features.ensure_extractor(run, progress=False)
    labels = features.label_clips(data, rows)
    assert any(label is not None for label in labels) and any(label is None for label in labels)
