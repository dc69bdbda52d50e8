"""Seconds per notebook in the smoke profile (no peer: the course's own budget, < 2 min each)."""

from __future__ import annotations

import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(quick: bool = False, device: str = "cpu") -> dict:
    from vbert_lab.course import run_course

    with tempfile.TemporaryDirectory(prefix="bench-course-") as tmp:
        summary = run_course(
            profile="smoke",
            device=device,
            seed=0,
            out=Path(tmp) / "out",
            data_dir=Path(tmp) / "data",
            notebooks_dir=REPO / "notebooks",
            only=["00"] if quick else None,
            echo=lambda *_: None,
        )
    return {f"course.{name}": row["seconds"] for name, row in summary["notebooks"].items()}
