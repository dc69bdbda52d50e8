"""The data scripts, offline: everything but the network, on fixture files in the real formats."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"
FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(SCRIPTS))

import _common  # noqa: E402
import action_corpora  # noqa: E402
import howto100m  # noqa: E402
import youcook2  # noqa: E402

from vbert_lab import datasets as ds  # noqa: E402


@pytest.mark.parametrize("script", ["youcook2.py", "howto100m.py", "action_corpora.py"])
def test_help_says_the_download_cannot_be_tested_offline(script):
    result = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert "cannot be tested offline" in " ".join(result.stdout.split())


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int):
        super().__init__(data)
        self.status = status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_resumes_and_checks_sha256(tmp_path):
    payload = b"0123456789" * 100
    requests = []

    def opener(request, timeout):
        requests.append(request.get_header("Range"))
        start = int(request.get_header("Range")[6:-1]) if request.get_header("Range") else 0
        return _FakeResponse(payload[start:], 206 if start else 200)

    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(payload[:300])  # an interrupted earlier run
    good = hashlib.sha256(payload).hexdigest()
    assert _common.download("http://x/file.bin", dest, sha256=good, opener=opener).read_bytes() == payload
    assert requests == ["bytes=300-"]
    _common.download("http://x/file.bin", dest, sha256=good, opener=opener)
    assert len(requests) == 1, "a complete, verified file is not fetched again"

    with pytest.raises(_common.ChecksumError, match="SHA-256"):
        _common.download("http://x/other.bin", tmp_path / "other.bin", sha256="0" * 64, opener=opener)
    assert (tmp_path / "other.bin.bad").is_file() and not (tmp_path / "other.bin").exists()


def test_manifest_survives_a_reload(tmp_path):
    manifest = _common.Manifest(tmp_path / "manifest.json")
    manifest.record("video:a", "ok")
    manifest.record("video:b", "failed", error="HTTP 429")
    again = _common.Manifest(tmp_path / "manifest.json")
    assert again.status("video:a") == "ok" and again.keys_with("failed") == ["video:b"]
    assert again.entries["video:b"]["error"] == "HTTP 429"


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, "x")
    return path


def test_safe_extract_unpacks_zip_and_tar(tmp_path):
    _zip(tmp_path / "good.zip", ["a/b.txt", "c.txt"])
    _common.safe_extract(tmp_path / "good.zip", tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.txt").read_text() == "x"
    with tarfile.open(tmp_path / "good.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "out" / "c.txt", arcname="d/c.txt")
    _common.safe_extract(tmp_path / "good.tar.gz", tmp_path / "out2")
    assert (tmp_path / "out2" / "d" / "c.txt").is_file()


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_safe_extract_refuses_path_traversal(tmp_path, bad_name):
    _zip(tmp_path / "bad.zip", ["fine.txt", bad_name])
    with pytest.raises(_common.UnsafeArchiveError, match="outside"):
        _common.safe_extract(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "fine.txt").exists()


def test_safe_extract_refuses_a_tar_link_out_of_the_folder(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as tf:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tf.addfile(link)
    with pytest.raises(_common.UnsafeArchiveError, match="escape"):
        _common.safe_extract(tmp_path / "bad.tar", tmp_path / "out")
    assert not (tmp_path / "out" / "escape").exists()


def test_commands_are_argument_lists_never_a_shell():
    seen = {}

    def runner(cmd, **kwargs):
        seen.update(kwargs, cmd=cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    _common.run(["yt-dlp", "--", "x; rm -rf /"], runner)
    assert seen["shell"] is False and seen["cmd"][-1] == "x; rm -rf /"
    with pytest.raises(TypeError):
        _common.run("yt-dlp x", runner)


def _youcook2_root(tmp_path: Path) -> Path:
    root = tmp_path / "youcook2"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(FIXTURES / "youcook2" / "youcookii_annotations_trainval.json", root / "annotations")
    return root


def test_youcook2_videos_are_fetched_once_and_failures_recorded(tmp_path):
    root = _youcook2_root(tmp_path)
    calls = []

    def fake_ytdlp(cmd, **kwargs):
        calls.append(cmd)
        assert kwargs["shell"] is False and cmd[0] == "yt-dlp" and cmd[-2] == "--"
        video_id = cmd[-1].rsplit("=", 1)[1]
        if video_id == "GLd3aX16zBg":
            Path(cmd[cmd.index("-o") + 1].replace("%(ext)s", "mp4")).write_bytes(b"video")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: [youtube] xHr8X2Wpmno: Video unavailable")

    manifest = youcook2.fetch_videos(root, runner=fake_ytdlp)
    assert manifest.keys_with("ok") == ["video:GLd3aX16zBg"]
    assert manifest.keys_with("removed") == ["video:xHr8X2Wpmno"]
    assert len(calls) == 2
    youcook2.fetch_videos(root, runner=fake_ytdlp, retry_failed=True)
    assert len(calls) == 2, "downloaded and removed videos are skipped on the next run"

    out = youcook2.prepare(root, tmp_path / "ready")
    segments = ds.read_youcook2_annotations(out / "annotations.json")
    assert {s.video_id for s in segments} == {"GLd3aX16zBg"} and len(segments) == 3
    assert (out / "videos" / "GLd3aX16zBg.mp4").read_bytes() == b"video"
    # the step sentences stand in for narration, and the folder opens as a prepared corpus
    captions = ds.read_howto100m_captions(out / "captions.json")
    assert [c.text for c in captions["GLd3aX16zBg"]] == [ds.normalise_caption(s.sentence) for s in segments]
    assert [c.start for c in captions["GLd3aX16zBg"]] == [s.start for s in segments]
    from vbert_lab.corpus import read_corpus

    assert read_corpus(out) == {"name": "youcook2", "extractor": "s3d", "weights": None}


def test_youcook2_prepare_explains_a_missing_annotation_file(tmp_path, capsys):
    assert youcook2.main(["prepare", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "annotations" in capsys.readouterr().err


def test_howto100m_subset_by_task(tmp_path):
    counts = howto100m.make_subset(FIXTURES / "howto100m" / "HowTo100M_v1.csv", FIXTURES / "howto100m" / "task_ids.csv",
                                   FIXTURES / "howto100m" / "caption.json", tmp_path, match=["salad"])
    assert counts == {"chosen": 2, "with_captions": 2}
    captions = ds.read_howto100m_captions(tmp_path / "captions.json")
    assert sorted(captions) == ["-0Bz8ABBtR0", "zzN1Bvdk01w"]
    assert captions["-0Bz8ABBtR0"][1].text == "you how to make a simple salad"
    with (tmp_path / "videos.csv").open() as f:
        assert {row["task_name"] for row in csv.DictReader(f)} == {"Make Tomato Salad"}


def test_action_corpus_index_keeps_found_clips_and_records_missing(tmp_path):
    root = tmp_path / "ucf101"
    shutil.copytree(FIXTURES / "ucf101", root)
    present = root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"
    present.parent.mkdir(parents=True)
    present.write_bytes(b"avi")
    index, kept = action_corpora.prepare("ucf101", root, tmp_path / "out", split=1)
    assert kept == 1
    with index.open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"path": "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "label": "ApplyEyeMakeup",
                     "label_index": "0", "split": "train"}]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["entries"]
    assert len([k for k, v in manifest.items() if v["status"] == "missing"]) == 4
