"""vbert_lab.corpus: a prepared real corpus runs through features, tokens and pretraining without TinyCook's labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vbert_lab import corpus, features, pipeline, pretrain
from vbert_lab.profiles import Profile
from vbert_lab.session import Session
from vbert_lab.tinycook import ensure_dataset
from vbert_lab.video import iter_clips

TINY = Profile(name="tiny", tinycook_videos=6, frame_size=64, extractor_epochs=1, extractor_videos=2,
               kmeans_k=3, kmeans_depth=2, audio_kmeans_k=2, audio_kmeans_depth=2,
               pretrain_layers=1, pretrain_steps=3, pretrain_batch=4, pretrain_max_len=32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """TinyCook's videos, annotations and narration as a real corpus would come: no labels.json, no tinycook.json."""
    world = ensure_dataset(tmp_path_factory.mktemp("world") / "tc", videos=6, seed=0, size=64)
    folder = corpus.from_tinycook(world, tmp_path_factory.mktemp("corpus") / "my corpus", name="tiny-real")
    assert all((folder / "videos" / f"{v}.mp4").is_symlink() for v in json.loads((world / "annotations.json").read_text())["database"])
    return folder


def test_a_prepared_corpus_runs_to_pretraining_and_nothing_is_generated(prepared):
    run = Session(profile=TINY, device="cpu", seed=0, data_dir=prepared)
    assert run.corpus == {"name": "tiny-real", "extractor": "tinycook3d", "weights": "random"}
    assert run.tinycook() == prepared
    model = features.ensure_extractor(run)
    assert isinstance(model, features.TinyCook3D) and not model.meta  # loaded as named, never trained
    folder = pipeline.ensure_tokens(run)
    index = json.loads((folder / "tokens.json").read_text())
    assert len(index["videos"]) == 6
    done = pretrain.ensure_pretrained(run, "text_video", progress=False)
    assert done.trained and done.checkpoint.is_dir()
    assert not (prepared / "labels.json").exists() and not (prepared / "tinycook.json").exists()
    assert not (prepared / "derived" / "extractor").exists()  # no extractor trained on labels it does not have
    # the stored features are the named extractor's
    feats, rows = features.load_features(run.stage_dir("features"))
    reference = features.load_extractor("tinycook3d", weights="random")
    first = rows[0]["video"]
    clips = [c.frames for c in iter_clips(prepared / "videos" / f"{first}.mp4", size=64)][:2]
    torch.testing.assert_close(feats[:2], reference.embed(torch.from_numpy(np.stack(clips))),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("payload, message", [
    ('{"extractor": "resnet"}', "extractor 'resnet' is not one of tinycook3d, s3d"),
    ('{"extractor": "s3d", "weight": "x.pth"}', r"unknown key\(s\) \['weight'\]"),
    ("[1, 2]", "it should be an object"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_corpus_file_names_itself_and_what_is_wrong(tmp_path, payload, message):
    for name in ("annotations.json", "captions.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "videos").mkdir()
    (tmp_path / "corpus.json").write_text(payload)
    with pytest.raises(ValueError, match=message) as err:
        corpus.read_corpus(tmp_path)
    assert str(tmp_path / "corpus.json") in str(err.value)


def test_a_corpus_without_its_narration_says_what_is_missing(tmp_path):
    (tmp_path / "annotations.json").write_text("{}")
    (tmp_path / "videos").mkdir()
    with pytest.raises(corpus.CorpusError, match=r"missing: captions.json\. Run data_scripts/youcook2.py prepare"):
        corpus.write_corpus(tmp_path, "half")
    assert corpus.read_corpus(tmp_path / "elsewhere") is None  # no corpus.json: a TinyCook folder


def test_relative_weights_are_relative_to_the_corpus_folder(tmp_path):
    for name in ("annotations.json", "captions.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "videos").mkdir()
    corpus.write_corpus(tmp_path, "c", extractor="tinycook3d", weights="weights/x.safetensors")
    assert corpus.read_corpus(tmp_path)["weights"] == str((tmp_path / "weights" / "x.safetensors").resolve())
