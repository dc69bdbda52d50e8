import json
import math

import numpy as np
import pytest
import torch

from vbert_lab import report


def test_record_writes_metrics_file(tmp_path, monkeypatch):
    target = tmp_path / "m" / "metrics.json"
    monkeypatch.setenv(report.METRICS_ENV, str(target))
    report.record("features.dim", 512, quiet=True)
    report.record("zero_shot.random.verb_top1", np.float32(0.25), quiet=True)
    report.record("alignment.accuracy", torch.tensor(0.75), quiet=True)
    report.record("features.dim", 1024, quiet=True)  # a later value replaces an earlier one
    data = json.loads(target.read_text())
    assert data == {"features.dim": 1024, "zero_shot.random.verb_top1": 0.25, "alignment.accuracy": 0.75}
    assert report.recorded()["features.dim"] == 1024


def test_record_without_runner_keeps_in_memory(monkeypatch, capsys):
    monkeypatch.delenv(report.METRICS_ENV, raising=False)
    assert report.record("demo.value", 3) == 3
    assert "demo.value = 3" in capsys.readouterr().out
    assert report.recorded()["demo.value"] == 3


@pytest.mark.parametrize("key", ["", "no spaces allowed", ".leading", "trailing.", 5])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="dotted name"):
        report.record(key, 1, quiet=True)


@pytest.mark.parametrize("value", [math.nan, float("inf"), np.float64("nan")])
def test_nan_is_refused(value):
    with pytest.raises(ValueError, match="NaN or inf"):
        report.record("x.y", value, quiet=True)


def test_lists_and_dicts_of_numbers(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    monkeypatch.setenv(report.METRICS_ENV, str(target))
    report.record("zero_shot.scaling", [{"fraction": 0.1, "verb_top1": np.float64(0.2)}], quiet=True)
    assert json.loads(target.read_text())["zero_shot.scaling"] == [{"fraction": 0.1, "verb_top1": 0.2}]


def test_unserialisable_value_is_refused():
    with pytest.raises(TypeError, match="cannot record"):
        report.record("x.y", object(), quiet=True)


def test_corrupt_metrics_file_is_named(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("{not json")
    monkeypatch.setenv(report.METRICS_ENV, str(target))
    with pytest.raises(ValueError, match="metrics.json"):
        report.record("x.y", 1, quiet=True)
