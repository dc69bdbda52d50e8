"""Small notebooks that follow (or deliberately break) the course conventions."""

from __future__ import annotations

from pathlib import Path

import nbformat

from vbert_lab.course import COLAB_BADGE, COLAB_INSTALL_CELL, colab_url

PARAMETERS = 'PROFILE = ""\nDEVICE = ""\nDATA_DIR = ""\nSEED = 0'


def make_notebook(path: Path, body: list[str], *, parameters: str | None = PARAMETERS, title: str = "# 99 · A test") -> Path:
    nb = nbformat.v4.new_notebook()
    head = f"{title}\n\n[![Open In Colab]({COLAB_BADGE})]({colab_url(path.name)})\n\n**Learning goals**\n- testing"
    cells = [nbformat.v4.new_markdown_cell(head), nbformat.v4.new_code_cell(COLAB_INSTALL_CELL)]
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells += [nbformat.v4.new_code_cell(src) for src in body]
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path
