import random

import numpy as np
import pytest
import torch

import vbert_lab
from vbert_lab.profiles import PROFILE_NAMES, get_profile, resolve_device
from vbert_lab.session import default_data_root


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (get_profile(n) for n in PROFILE_NAMES)
    assert smoke.tinycook_videos < cpu.tinycook_videos <= gpu.tinycook_videos


def test_empty_profile_follows_the_machine():
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert get_profile("").name == expected


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        get_profile("laptop")


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("") == "cpu"
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu-please")


def test_setup_seeds_everything_and_places_data(tmp_path):
    run = vbert_lab.setup("smoke", "cpu", tmp_path / "tc", 7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    vbert_lab.setup("smoke", "cpu", tmp_path / "tc", 7)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    assert run.data_dir == (tmp_path / "tc").resolve()
    assert run.stage_dir("features").is_dir() and run.stage_dir("features").parent == run.derived_dir


def test_default_data_dir_is_beside_the_notebooks(tmp_path, monkeypatch):
    monkeypatch.delenv("VBERT_LAB_DATA", raising=False)
    assert default_data_root(tmp_path / "notebooks") == tmp_path / "data"
    monkeypatch.setenv("VBERT_LAB_DATA", str(tmp_path / "elsewhere"))
    assert default_data_root(tmp_path / "notebooks") == tmp_path / "elsewhere"
    run = vbert_lab.setup("smoke", "cpu", "", 3)
    assert run.data_dir == (tmp_path / "elsewhere" / "tinycook-smoke-s3").resolve()
