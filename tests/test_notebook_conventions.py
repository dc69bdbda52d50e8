"""The course's notebook conventions hold for every notebook, and the check can fail."""

from __future__ import annotations

import json

import nbformat
import pytest

from notebook_factory import make_notebook
from vbert_lab.course import SYLLABUS, check_notebook, course_notebooks


def test_course_has_notebooks(repo):
    names = [p.stem for p in course_notebooks(repo / "notebooks")]
    assert names and names[0] == "00_welcome_and_setup"
    known = {f"{num}_{name}" for num, name, _ in SYLLABUS}
    assert set(names) <= known, f"notebooks not in the syllabus: {set(names) - known}"


@pytest.mark.parametrize("path", course_notebooks("notebooks") if __import__("pathlib").Path("notebooks").is_dir() else [], ids=lambda p: p.stem)
def test_notebook_follows_conventions(path):
    assert check_notebook(path) == []


def test_clean_notebook_passes(tmp_path):
    assert check_notebook(make_notebook(tmp_path / "99_a_test.ipynb", ["x = 1"])) == []


def test_notebook_with_output_fails(tmp_path):
    path = make_notebook(tmp_path / "99_a_test.ipynb", ["print(1)"])
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[-1].execution_count = 4
    nbformat.write(nb, str(path))
    problems = check_notebook(path)
    assert any("has outputs" in p for p in problems)
    assert any("execution count" in p for p in problems)


def test_notebook_without_parameters_cell_fails(tmp_path):
    problems = check_notebook(make_notebook(tmp_path / "99_a_test.ipynb", ["x = 1"], parameters=None))
    assert any("parameters" in p for p in problems)


def test_parameters_cell_must_set_all_four(tmp_path):
    problems = check_notebook(make_notebook(tmp_path / "99_a_test.ipynb", [], parameters='PROFILE = ""\nSEED = 0'))
    assert any("DEVICE" in p for p in problems) and any("DATA_DIR" in p for p in problems)


def test_install_cell_must_not_pin_torch(tmp_path):
    path = make_notebook(tmp_path / "99_a_test.ipynb", [])
    nb = json.loads(path.read_text())
    nb["cells"][1]["source"] = 'import sys\nif "google.colab" in sys.modules:\n    !pip install torch==2.3.0 vbert-lab\n'
    path.write_text(json.dumps(nb))
    assert any("torch" in p for p in check_notebook(path))


def test_opening_needs_title_badge_and_goals(tmp_path):
    path = make_notebook(tmp_path / "99_a_test.ipynb", [])
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] = "Some text without a title"
    path.write_text(json.dumps(nb))
    problems = check_notebook(path)
    assert any("title" in p for p in problems)
    assert any("Colab" in p for p in problems)
    assert any("learning goals" in p for p in problems)


def test_readme_lists_every_notebook_with_colab_link(repo):
    readme = (repo / "README.md").read_text()
    for path in course_notebooks(repo / "notebooks"):
        assert path.name in readme, f"README's syllabus table does not link {path.name}"
    assert "make course" in readme and "make test" in readme
