"""``vbert-lab probe PATH --json``."""

from __future__ import annotations

import json
import subprocess
import sys

from vbert_lab import video
from vbert_lab.cli import main

KEYS = {"frames", "fps", "duration_s", "width", "height", "has_audio", "audio_sample_rate", "audio_channels", "backend"}


def test_probe_json_on_a_real_file(sample_videos, capsys):
    assert main(["probe", str(sample_videos["bigbuckbunny"]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == KEYS
    assert got == video.probe(sample_videos["bigbuckbunny"]).as_dict()
    assert (got["frames"], got["width"], got["height"], got["audio_channels"]) == (132, 1280, 720, 6)


def test_probe_table_and_pyav_backend(sample_videos, capsys):
    assert main(["probe", str(sample_videos["bikes"]), "--backend", "pyav"]) == 0
    out = capsys.readouterr().out
    assert "frames" in out and "250" in out and "pyav" in out


def test_bad_paths_exit_non_zero_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "notes.mp4").write_text("not a video")
    for path, words in [(tmp_path / "gone.mp4", "no such video file"), (tmp_path / "notes.mp4", "not a readable"), (tmp_path, "is a folder")]:
        assert main(["probe", str(path), "--json"]) != 0
        captured = capsys.readouterr()
        assert captured.out == "" and str(path) in captured.err and words in captured.err


def test_the_installed_command_runs(sample_videos, tmp_path):
    done = subprocess.run([sys.executable, "-m", "vbert_lab", "probe", str(sample_videos["carphone_pristine"]), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"] == 120
    done = subprocess.run([sys.executable, "-m", "vbert_lab", "probe", str(tmp_path / "missing file é.mp4")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "missing file é.mp4" in done.stderr
