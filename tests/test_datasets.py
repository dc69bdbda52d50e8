"""The YouCook2 / HowTo100M / UCF101 / HMDB51 readers, on TinyCook files and on real-format fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vbert_lab import datasets as ds
from vbert_lab import tinycook as tc

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tinycook_dir(tmp_path_factory) -> Path:
    return tc.ensure_dataset(tmp_path_factory.mktemp("tc") / "tinycook", videos=3, seed=0, size=32, workers=1)


def test_youcook2_reader_parses_tinycook(tinycook_dir):
    segments = ds.read_youcook2_annotations(tinycook_dir / "annotations.json")
    labels = tc.load_labels(tinycook_dir)
    assert [(s.video_id, s.segment_id, s.start, s.end) for s in segments] == \
           [(r.video_id, r.segment_id, r.start, r.end) for r in labels]
    assert all(s.sentence and s.recipe_type in tc.RECIPE_TYPES and s.duration >= s.end for s in segments)
    # A folder works too: TinyCook's annotations.json is found in it.
    assert ds.read_youcook2_annotations(tinycook_dir) == segments


def test_youcook2_reader_parses_the_real_files():
    segments = ds.read_youcook2_annotations(FIXTURES / "youcook2")  # trainval and test files together
    by_video = {s.video_id for s in segments}
    assert by_video == {"GLd3aX16zBg", "xHr8X2Wpmno", "3eJ9h0Ac8fw"}
    first = next(s for s in segments if s.video_id == "GLd3aX16zBg" and s.segment_id == 1)
    assert (first.start, first.end, first.subset, first.recipe_type) == (114.0, 127.0, "training", "113")
    assert first.sentence == "place a slice of cheese on the bread"
    test_only = [s for s in segments if s.subset == "testing"]
    assert len(test_only) == 2 and all(s.sentence is None for s in test_only)
    assert [s.video_id for s in ds.read_youcook2_annotations(FIXTURES / "youcook2", subset="validation")] == \
           ["xHr8X2Wpmno"] * 2
    assert ds.read_youcook2_recipe_types(FIXTURES / "youcook2" / "label_foodtype.csv")["113"] == "grilled cheese"


def test_howto100m_reader_parses_tinycook(tinycook_dir):
    captions = ds.read_howto100m_captions(tinycook_dir / "captions.json")
    raw = tc.load_captions(tinycook_dir)
    assert sorted(captions) == sorted(raw)
    for vid, lines in captions.items():
        assert [c.text for c in lines] == raw[vid]["text"]
        assert all(c.start < c.end and ds.normalise_caption(c.text) == c.text for c in lines)


def test_howto100m_reader_parses_the_real_layouts():
    captions = ds.read_howto100m_captions(FIXTURES / "howto100m" / "caption.json")
    assert sorted(captions) == ["-0Bz8ABBtR0", "zzN1Bvdk01w"]
    second = captions["-0Bz8ABBtR0"][1]
    assert (second.start, second.end) == (5.88, 9.1)
    assert ds.normalise_caption(second.text) == "you how to make a simple salad"
    only = ds.read_howto100m_captions(FIXTURES / "howto100m" / "caption.json", video_ids=["zzN1Bvdk01w"])
    assert list(only) == ["zzN1Bvdk01w"]
    from_csv = ds.read_howto100m_captions(FIXTURES / "howto100m" / "captions_csv")
    assert [c.text for c in from_csv["-0Bz8ABBtR0"]] == ["hey guys today", "we cut, then we stir"]
    assert [c.text for c in ds.captions_between(captions["-0Bz8ABBtR0"], 6.0, 10.0)] == \
           [captions["-0Bz8ABBtR0"][1].text, "first we cut the tomatoes"]


def test_howto100m_metadata_and_task_names():
    videos = ds.read_howto100m_videos(FIXTURES / "howto100m" / "HowTo100M_v1.csv", FIXTURES / "howto100m" / "task_ids.csv")
    assert [v.video_id for v in videos if v.task_name == "Make Tomato Salad"] == ["-0Bz8ABBtR0", "zzN1Bvdk01w"]
    assert videos[2].category_1.startswith("Cars") and videos[2].rank == 1


def test_action_splits():
    ucf = ds.read_ucf101_split(FIXTURES / "ucf101" / "ucfTrainTestlist", 1)
    assert [(c.label, c.label_index, c.split) for c in ucf] == [
        ("ApplyEyeMakeup", 0, "train"), ("ApplyLipstick", 1, "train"), ("Archery", 2, "train"),
        ("ApplyEyeMakeup", 0, "test"), ("Archery", 2, "test")]
    hmdb = ds.read_hmdb51_split(FIXTURES / "hmdb51" / "testTrainMulti_7030_splits", 1)
    assert [(c.label, c.label_index, c.split) for c in hmdb] == [
        ("brush_hair", 0, "train"), ("brush_hair", 0, "test"), ("cartwheel", 1, "test"), ("cartwheel", 1, "train")]
    assert hmdb[0].path == "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"


def test_bad_files_give_errors_that_name_them(tmp_path):
    broken = tmp_path / "annotations.json"
    broken.write_text('{"database": {"v": {"annotations": [{"segment": [5]}]}}}')
    with pytest.raises(ds.AnnotationError, match=r"annotations\.json.*'v'.*segment"):
        ds.read_youcook2_annotations(broken)
    truncated = tmp_path / "caption.json"
    truncated.write_text('{"v": {"start": [1')
    with pytest.raises(ds.AnnotationError, match="caption.json.*truncated"):
        ds.read_howto100m_captions(truncated)
    uneven = tmp_path / "uneven.json"
    uneven.write_text(json.dumps({"v": {"start": [1, 2], "end": [2], "text": ["a", "b"]}}))
    with pytest.raises(ds.AnnotationError, match="different lengths"):
        ds.read_howto100m_captions(uneven)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ds.read_youcook2_annotations(tmp_path / "missing.json")
