"""vbert_lab.tinykinetics: the extractor's own action set, disjoint in classes from TinyCook, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from vbert_lab import tinycook, tinykinetics


def test_its_classes_are_none_of_the_worlds_labels():
    world = {w for names in tinycook.LABEL_KINDS.values() for w in names}
    ours = {w for names in tinykinetics.TASKS.values() for w in names}
    assert not world & ours, world & ours
    assert len(tinykinetics.MOTIONS) == 16 and len(set(ours)) == sum(len(v) for v in tinykinetics.TASKS.values())


def test_clips_are_deterministic_whatever_the_workers_and_motions_are_balanced():
    a = tinykinetics.make_clips(40, seed=3, frame_size=32, workers=1)
    b = tinykinetics.make_clips(40, seed=3, frame_size=32, workers=2)
    assert a.frames.shape == (40, tinykinetics.FRAMES, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in tinykinetics.TASKS)
    assert np.bincount(a.labels["motion"], minlength=16).min() >= 2
    c = tinykinetics.make_clips(8, seed=4, frame_size=32, workers=1)
    assert not np.array_equal(a.frames[:8], c.frames)


def test_motions_move_and_still_clips_do_not():
    clips = tinykinetics.make_clips(32, seed=0, frame_size=32, workers=1)
    change = np.abs(np.diff(clips.frames.astype(np.float32), axis=1)).mean(axis=(1, 2, 3, 4))  # (N,)
    still = change[clips.labels["motion"] == tinykinetics.MOTIONS.index("still")]
    moving = change[clips.labels["motion"] != tinykinetics.MOTIONS.index("still")]
    assert still.max() < np.median(moving), (still, np.median(moving))  # only the sensor noise changes


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="clips=0"):
        tinykinetics.make_clips(0)
    with pytest.raises(ValueError, match="frame_size=4"):
        tinykinetics.make_clips(1, frame_size=4)
