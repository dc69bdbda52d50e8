"""`vbert-lab extract --videos DIR --out DIR [--extractor NAME] [--backend NAME]`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vbert_lab import features, video
from vbert_lab.cli import main


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "videos"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        video.write_video(d / f"{name}.mp4", rng.integers(0, 256, (48, 64, 64, 3), dtype=np.uint8), fps=30)
    (d / "broken.mp4").write_text("not a video")
    return d


def test_extract_writes_features_and_lists_failures(videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["extract", "--videos", str(videos), "--out", str(out), "--weights", "random", "--backend", "pyav",
                 "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "2 videos extracted (2 clips)" in captured.out and "1 failed" in captured.out
    assert "failed: broken: VideoError" in captured.err and "broken.mp4" in captured.err
    feats, rows = features.load_features(out)
    assert feats.shape == (2, 256) and [r["video"] for r in rows] == ["a", "b"]
    assert main(["extract", "--videos", str(videos), "--out", str(out), "--weights", "random"]) == 0
    out_text = capsys.readouterr().out
    assert "0 videos extracted" in out_text and "3 already done" in out_text
    torch.testing.assert_close(features.load_features(out)[0], feats)


def test_extract_without_weights_says_how_to_get_them(videos, tmp_path, capsys, monkeypatch):
    assert main(["extract", "--videos", str(videos), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "tinycook3d.safetensors" in err and "--weights" in err
    monkeypatch.setenv("VBERT_LAB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["extract", "--videos", str(videos), "--out", str(tmp_path / "o"), "--extractor", "s3d"]) == 2
    err = capsys.readouterr().err
    assert "https://download.pytorch.org/models/s3d-d76dad2f.pth" in err and str(tmp_path / "hub" / "checkpoints") in err
    assert main(["extract", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--weights", "random"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_extract_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    out = capsys.readouterr().out
    assert "--videos" in out and "--extractor" in out and "--backend" in out
