"""The course runner: papermill runs, summary.json, and a clean stop on a failing notebook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from notebook_factory import make_notebook
from vbert_lab.course import NotebookFailed, format_summary, prepare_course, run_course

RECORDS = "from vbert_lab import report\nreport.record('test.profile', PROFILE)\nreport.record('test.seed', SEED)"


@pytest.fixture
def course(tmp_path):
    nbs = tmp_path / "notebooks"
    make_notebook(nbs / "00_first.ipynb", [RECORDS, "report.record('test.first.value', 0.5)"])
    make_notebook(nbs / "01_second.ipynb", ["from vbert_lab import report\nreport.record('test.second.n', 3)"])
    return nbs


def test_runs_every_notebook_and_gathers_metrics(course, tmp_path):
    out = tmp_path / "out"
    summary = run_course("smoke", "cpu", 5, out, tmp_path / "data", course, make_data=False, echo=lambda *_: None)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["profile"] == "smoke" and summary["device"] == "cpu" and summary["seed"] == 5
    assert list(summary["notebooks"]) == ["00_first", "01_second"]
    assert all(row["status"] == "ok" and row["seconds"] > 0 for row in summary["notebooks"].values())
    # the parameters reached the kernel, and every recorded metric landed in the summary
    assert summary["metrics"] == {"test.profile": "smoke", "test.seed": 5, "test.first.value": 0.5, "test.second.n": 3}
    executed = json.loads((out / "00_first.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    table = format_summary(summary)
    assert "00_first" in table and "test.second.n" in table


def test_only_selects_notebooks(course, tmp_path):
    summary = run_course("smoke", "cpu", 0, tmp_path / "out", tmp_path / "d", course, only=["01"], make_data=False, echo=lambda *_: None)
    assert list(summary["notebooks"]) == ["01_second"]
    with pytest.raises(ValueError, match="no such notebook"):
        run_course("smoke", "cpu", 0, tmp_path / "out", tmp_path / "d", course, only=["07"], make_data=False)


def test_failing_notebook_stops_the_run(course, tmp_path):
    make_notebook(course / "00_first.ipynb", ["x = 1", "1 / 0", "print('never')"])
    out = tmp_path / "out"
    with pytest.raises(NotebookFailed) as info:
        run_course("smoke", "cpu", 0, out, tmp_path / "d", course, make_data=False, echo=lambda *_: None)
    assert "ZeroDivisionError" in str(info.value)
    assert str(out / "00_first.ipynb") in str(info.value)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["notebooks"]["00_first"]["status"] == "failed"
    assert "ZeroDivisionError" in summary["notebooks"]["00_first"]["error"]
    assert summary["notebooks"]["01_second"]["status"] == "skipped"
    assert (out / "00_first.ipynb").exists()  # the partly executed copy is kept


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_course_exits_nonzero_with_the_cell_error(course, tmp_path, repo):
    make_notebook(course / "01_second.ipynb", ["raise RuntimeError('deliberately broken')"])
    out = tmp_path / "out"
    # STAMP= skips the environment set-up: this interpreter already is that environment
    proc = subprocess.run(
        ["make", "-s", "-C", str(repo), "course", f"PY={sys.executable}", "STAMP=", f"NOTEBOOKS={course}",
         f"OUT={out}", "PROFILE=smoke", "DEVICE=cpu", "NODATA=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "deliberately broken" in proc.stderr
    assert str(out / "01_second.ipynb") in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["notebooks"].values()] == ["ok", "failed"]


def test_prepare_only_injects_parameters_without_running(course, tmp_path):
    written = prepare_course("smoke", "cpu", 3, tmp_path / "prep", tmp_path / "data", course)
    assert [p.name for p in written] == ["00_first.ipynb", "01_second.ipynb"]
    nb = json.loads(written[0].read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1
    src = "".join(injected[0]["source"])
    assert 'PROFILE = "smoke"' in src and "SEED = 3" in src
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_out_that_is_a_file_is_refused(course, tmp_path):
    bad = tmp_path / "file"
    bad.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        run_course("smoke", "cpu", 0, bad, tmp_path / "d", course, make_data=False)
