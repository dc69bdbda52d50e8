"""vbert_lab.pipeline: the stages notebooks 05-09 call (codebooks, token files, pretraining examples)."""

from __future__ import annotations

import json

import pytest
import torch

from vbert_lab import pipeline
from vbert_lab.kmeans import HierarchicalKMeans
from vbert_lab.profiles import Profile
from vbert_lab.sequences import Collator, load_video_tokens
from vbert_lab.session import Session
from vbert_lab.text import load_wordpiece, sentences_from_captions
from vbert_lab.tinycook import load_captions

TINY = Profile(name="tiny", tinycook_videos=6, frame_size=64, extractor_epochs=1, extractor_videos=2,
               kmeans_k=3, kmeans_depth=2, audio_kmeans_k=2, audio_kmeans_depth=2)


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Session:
    """A six-video TinyCook at 64 px (4 training, 1 validation, 1 testing) with tiny codebooks."""
    return Session(profile=TINY, device="cpu", seed=0, data_dir=tmp_path_factory.mktemp("pipeline") / "tc")


@pytest.fixture(scope="session")
def tokens_dir(run):
    return pipeline.ensure_tokens(run)


def test_codebook_is_fit_on_training_videos_only_and_reloaded(run):
    X, rows = pipeline.clip_features(run, "visual")
    subsets = pipeline.video_subsets(run)
    assert set(subsets.values()) == {"training", "validation", "testing"}
    train = torch.tensor([subsets[r["video"]] == "training" for r in rows])
    assert 0 < int(train.sum()) < len(rows)

    km = pipeline.ensure_codebook(run, "visual")
    assert (km.k, km.depth, km.dim) == (3, 2, X.shape[1])
    expected = HierarchicalKMeans(k=3, depth=2, seed=run.seed).fit(X[train])  # the same fit, training clips only
    torch.testing.assert_close(km.leaf_centroids, expected.leaf_centroids)

    folder = run.stage_dir("codebook") / "visual"
    fit = json.loads((folder / "codebook.json").read_text())["fit"]
    assert fit["n_clips"] == int(train.sum()) and fit["k"] == 3 and fit["depth"] == 2
    stamp = (folder / "codebook.safetensors").stat().st_mtime_ns
    again = pipeline.ensure_codebook(run, "visual")  # reloaded, not refit
    assert (folder / "codebook.safetensors").stat().st_mtime_ns == stamp
    torch.testing.assert_close(again.leaf_centroids, km.leaf_centroids)

    audio = pipeline.ensure_codebook(run, "audio")
    assert (audio.k, audio.depth, audio.dim) == (2, 2, pipeline.clip_features(run, "audio")[0].shape[1])
    with pytest.raises(ValueError, match="modality"):
        pipeline.ensure_codebook(run, "smell")


def test_stale_codebook_is_refit(run, tmp_path):
    folder = run.stage_dir("codebook") / "visual"
    pipeline.ensure_codebook(run, "visual")
    meta = json.loads((folder / "codebook.json").read_text())
    meta["fit"]["features"] = "from-other-features"
    (folder / "codebook.json").write_text(json.dumps(meta))
    km = pipeline.ensure_codebook(run, "visual")
    assert json.loads((folder / "codebook.json").read_text())["fit"]["features"] != "from-other-features"
    assert km.n_leaves == 9


def test_token_files_hold_every_video_tokens_and_aligned_sentences(run, tokens_dir):
    index = json.loads((tokens_dir / "tokens.json").read_text())
    assert index["videos"] == pipeline.video_subsets(run)
    X, rows = pipeline.clip_features(run, "visual")
    A, _ = pipeline.clip_features(run, "audio")
    visual = pipeline.ensure_codebook(run, "visual").predict(X).tolist()
    audio = pipeline.ensure_codebook(run, "audio").predict(A).tolist()
    wordpiece = load_wordpiece()
    captions = load_captions(run.tinycook())
    for vid in index["videos"]:
        vt = load_video_tokens(tokens_dir / f"{vid}.tokens.json")
        mine = [i for i, r in enumerate(rows) if r["video"] == vid]
        assert vt.visual == [visual[i] for i in mine] and vt.audio == [audio[i] for i in mine]
        sentences = sentences_from_captions(captions[vid])
        assert [s["text"] for s in vt.sentences] == [s.text for s in sentences]
        for s in vt.sentences:
            assert s["ids"] == wordpiece.encode(s["text"])
            assert s["first_clip"] * 1.5 <= s["start"] + 1e-6 and (s["last_clip"] * 1.5 >= s["end"] - 1e-6 or s["last_clip"] == vt.n_clips)

    stamp = (tokens_dir / "tokens.json").stat().st_mtime_ns
    assert pipeline.ensure_tokens(run) == tokens_dir and (tokens_dir / "tokens.json").stat().st_mtime_ns == stamp
    assert [v.video_id for v in pipeline.load_tokens(run, "validation")] == [v for v, s in index["videos"].items() if s == "validation"]


def test_model_config_joins_minilm_and_the_codebooks(run):
    cfg = pipeline.model_config(run)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers) == (30522, 384, 6)
    assert (cfg.n_visual_tokens, cfg.n_audio_tokens, cfg.type_vocab_size) == (9, 4, 3)
    load_wordpiece().check_config(cfg)
    assert pipeline.model_config(run, audio=False, num_layers=2).n_audio_tokens == 0


def test_pretraining_examples_three_regimes_with_noise_and_pairs(run, tokens_dir):
    cfg = pipeline.model_config(run)
    ex = pipeline.pretraining_examples(run, config=cfg, seed=1)
    assert set(ex) == set(pipeline.REGIMES) and all(ex[r] for r in pipeline.REGIMES)
    training = {v.video_id: v for v in pipeline.load_tokens(run, "training")}
    for e in (x for r in ex.values() for x in r):
        assert e["video_id"] in training  # never a held-out video
    jn = cfg.special_token_id("[>]")
    assert all(jn not in e["input_ids"].tolist() for e in ex["text"])
    assert all(e["input_ids"][1] == jn for e in ex["video"])
    labels = [e["alignment_label"] for e in ex["text_video"]]
    assert set(labels) == {0, 1}
    for e in ex["text_video"]:  # aligned pairs keep their own video's tokens (subsampled)
        ids = e["input_ids"].tolist()
        vis = [i - cfg.visual_offset for i in ids if cfg.visual_offset <= i < cfg.audio_offset]
        assert vis and len(vis) <= len(training[e["video_id"]].visual)
        if e["alignment_label"] == 1:
            assert set(vis) <= set(training[e["video_id"]].visual)
    again = pipeline.pretraining_examples(run, config=cfg, seed=1)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again["text_video"], ex["text_video"]))

    batch = Collator(cfg, seed=0)(ex["text_video"][:4])
    assert batch["input_ids"].shape == batch["mlm_labels"].shape == batch["attention_mask"].shape
    assert batch["alignment_labels"].tolist() == labels[:4]
    no_audio = pipeline.pretraining_examples(run, config=pipeline.model_config(run, audio=False))
    assert all((e["token_type_ids"] != 2).all() for r in no_audio.values() for e in r)
