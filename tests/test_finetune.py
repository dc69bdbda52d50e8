"""vbert_lab.finetune: examples from the hidden labels, label fractions, the three modes, cached runs."""

from __future__ import annotations

import json

import pytest
import torch

from vbert_lab import finetune as ft
from vbert_lab import pipeline, pretrain
from vbert_lab.profiles import Profile
from vbert_lab.session import Session
from vbert_lab.tinycook import LABEL_KINDS, load_labels
from vbert_lab.train import read_metrics

TINY = Profile(name="tiny", tinycook_videos=6, frame_size=64, extractor_epochs=1, extractor_videos=2,
               kmeans_k=3, kmeans_depth=2, audio_kmeans_k=2, audio_kmeans_depth=2,
               pretrain_layers=1, pretrain_steps=2, pretrain_batch=4, pretrain_max_len=32,
               finetune_steps=4, finetune_probe_steps=6, finetune_batch=4, finetune_seeds=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Session:
    """A six-video TinyCook at 64 px with tiny codebooks and a one-layer MiniLM pretrained for two steps."""
    return Session(profile=TINY, device="cpu", seed=0, data_dir=tmp_path_factory.mktemp("finetune") / "tc")


@pytest.mark.parametrize("task", sorted(ft.TASKS))
def test_examples_carry_the_hidden_labels_and_no_text(run, task):
    cfg = pipeline.model_config(run)
    labels = {(l.video_id, round(l.start, 3)): l for l in load_labels(run.tinycook()) if l.subset == "training"}
    examples = ft.classification_examples(run, task, "training", config=cfg)
    assert len(examples) == len(labels)  # one example per labelled step
    classes = ft.task_classes(task)
    assert classes == tuple(LABEL_KINDS[ft.TASKS[task]])
    joiner = cfg.special_token_id("[>]")
    for ex in examples:
        truth = getattr(labels[(ex["video_id"], round(ex["start"], 3))], ft.TASKS[task])
        assert ex["label_name"] == truth and classes[ex["label"]] == truth
        ids = ex["input_ids"].tolist()
        assert ids[0] == cfg.cls_token_id and ids[-1] == cfg.sep_token_id and ids.count(joiner) == 2
        body = [i for i in ids[1:-1] if i != joiner]
        assert all(i >= cfg.visual_offset for i in body)  # visual and audio tokens only: no narration words
        n_visual = sum(cfg.visual_offset <= i < cfg.audio_offset for i in body)
        assert n_visual >= 1 and n_visual == len(body) - n_visual  # one audio token per clip
    silent = ft.classification_examples(run, task, "training", audio=False, config=cfg)
    assert [e["label"] for e in silent] == [e["label"] for e in examples]
    assert all(max(e["input_ids"][1:-1].tolist()) < cfg.audio_offset for e in silent)


def test_a_wrong_task_mode_or_subset_says_what_to_choose(run):
    with pytest.raises(ValueError, match=r"unknown task 'verb'.*action"):
        ft.classification_examples(run, "verb", "training")
    with pytest.raises(ValueError, match=r"unknown mode 'linear'.*frozen"):
        ft.ensure_finetuned(run, "action", mode="linear")
    with pytest.raises(ValueError, match="subset='train'"):
        ft.classification_examples(run, "scene", "train")
    with pytest.raises(ValueError, match="fraction=0"):
        ft.FineTuneSettings(fraction=0)


def test_label_fractions_are_nested_stratified_and_seeded():
    examples = [{"label": i % 5, "id": i} for i in range(200)]  # 40 per class
    ids = {f: [e["id"] for e in ft.label_subset(examples, f, seed=3)] for f in (0.05, 0.1, 0.25, 1.0)}
    assert len(ids[1.0]) == 200 and len(ids[0.1]) == 20 and len(ids[0.05]) == 10
    assert set(ids[0.05]) <= set(ids[0.1]) <= set(ids[0.25]) <= set(ids[1.0])
    assert sorted({i % 5 for i in ids[0.05]}) == [0, 1, 2, 3, 4]  # every class, two each
    assert ids[0.1] == [e["id"] for e in ft.label_subset(examples, 0.1, seed=3)]
    assert ids[0.1] != [e["id"] for e in ft.label_subset(examples, 0.1, seed=4)]
    rare = examples + [{"label": 9, "id": 999}]
    assert 999 in [e["id"] for e in ft.label_subset(rare, 0.05, seed=0)]  # a rare class keeps one example


def test_confusion_matrix_and_class_accuracy():
    m = ft.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    result = {"targets": [0, 0, 1, 2, 2, 2], "predictions": [0, 1, 1, 2, 0, 2]}
    assert ft.class_accuracy(result, [2]) == pytest.approx(2 / 3)
    assert ft.class_accuracy(result, [0, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no examples"):
        ft.class_accuracy(result, [7])
    assert ft.summarise([0.5, 0.7])["std"] == pytest.approx(0.1414213, rel=1e-5)


def test_folded_linear_probe_predicts_what_the_probe_predicts():
    torch.manual_seed(0)
    feats = torch.randn(50, 8) * torch.linspace(1e-3, 3, 8) + 0.5  # one direction barely varies, as a pooled [CLS]
    head = torch.nn.Linear(8, 3)
    probe = ft.LinearProbe(head, feats.mean(0), feats.std(0))
    with torch.no_grad():
        head.weight.normal_()
    before = probe(feats)["logits"]
    probe.fold()
    torch.testing.assert_close(head(feats), before, rtol=1e-4, atol=1e-3)


def test_scratch_has_the_pretrained_architecture_and_its_own_weights(run):
    scratch, base = ft.build_classifier(run, "mood", "scratch", seed=0)
    tuned, pre_ckpt = ft.build_classifier(run, "mood", "finetuned", seed=0)
    assert base is None and pre_ckpt is not None
    assert scratch.config.to_dict() == tuned.config.to_dict() and scratch.config.num_labels == len(LABEL_KINDS["mood"])
    pre = pretrain.ensure_pretrained(run, "text_video", progress=False).model
    torch.testing.assert_close(tuned.blocks[0].mlp.up.weight, pre.blocks[0].mlp.up.weight)
    assert not torch.allclose(scratch.blocks[0].mlp.up.weight, pre.blocks[0].mlp.up.weight)
    again, _ = ft.build_classifier(run, "mood", "scratch", seed=0)
    torch.testing.assert_close(again.classifier.weight, scratch.classifier.weight)  # seeded


def test_frozen_mode_trains_the_head_only(run):
    pre = pretrain.ensure_pretrained(run, "text_video", progress=False).model
    probe = ft.ensure_finetuned(run, "scene", "frozen", progress=False)
    assert probe.trained and probe.checkpoint.name == ft.HEAD_FILE and probe.base_checkpoint is not None
    trained = probe.model.state_dict()
    for name, value in pre.state_dict().items():
        torch.testing.assert_close(trained[name], value, msg=name)  # the encoder is untouched
    assert not torch.allclose(trained["classifier.weight"], torch.zeros_like(trained["classifier.weight"]))
    # the model with the folded head predicts exactly what the probe reported
    test = ft.classification_examples(run, "scene", "testing")
    again = ft.evaluate_classifier(probe.model, test)
    assert again["predictions"] == probe.metrics["test"]["predictions"]
    assert sum(map(sum, again["confusion"])) == len(test) and again["accuracy"] == probe.accuracy


def _training_loss(model, examples) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**ft.ClassificationCollator(model.config)(examples)).losses["classification"])


def test_training_reduces_the_loss_on_a_tiny_set(run, tmp_path):
    settings = ft.default_settings(run, "scene", "scratch", steps=20, lr=2e-3, eval_every=10, seed=1)
    untrained, _ = ft.build_classifier(run, "scene", "scratch", seed=1)  # the run starts from these very weights
    model, metrics, base = ft.finetune(run, settings, tmp_path / "scratch")
    examples = ft.classification_examples(run, "scene", "training")
    before, after = _training_loss(untrained, examples), _training_loss(model, examples)
    assert after < 0.8 * before, (before, after, metrics["selected_step"])
    records = read_metrics(tmp_path / "scratch" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 21)) and base is None
    assert all(set(r["losses"]) == {"classification"} for r in records)
    assert [r["step"] for r in read_metrics(tmp_path / "scratch" / "metrics.jsonl", "eval")] == [10, 20]
    assert metrics["selected_step"] in (10, 20) and 0 <= metrics["test"]["accuracy"] <= 1
    assert metrics["n_train"] == len(examples) and not model.training


def test_ensure_finetuned_trains_once_then_reuses(run):
    first = ft.ensure_finetuned(run, "mood", "finetuned", fraction=0.5, seed=2)
    assert first.trained and first.out_dir.name == "mood-finetuned-050pct-audio-s2"
    assert (first.checkpoint / "config.json").is_file() and not (first.out_dir / "checkpoints").exists()
    saved = json.loads((first.out_dir / ft.RESULT_FILE).read_text())
    assert saved["test"]["accuracy"] == first.accuracy and saved["n_train"] == first.metrics["n_train"]
    again = ft.ensure_finetuned(run, "mood", "finetuned", fraction=0.5, seed=2)
    assert not again.trained and again.metrics == first.metrics
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    light = ft.ensure_finetuned(run, "mood", "finetuned", fraction=0.5, seed=2, load_model=False)
    assert light.model is None and not light.trained
    other = ft.ensure_finetuned(run, "mood", "finetuned", fraction=0.5, seed=2,
                                settings=ft.default_settings(run, "mood", "finetuned", 0.5, seed=2, steps=3))
    assert other.trained and other.metrics["steps"] == 3
    unkept = ft.ensure_finetuned(run, "mood", "scratch", audio=False, keep_model=False)
    assert unkept.checkpoint is None and unkept.model is not None and unkept.out_dir.name.endswith("-noaudio-s0")
    assert not (unkept.out_dir / ft.MODEL_DIR).exists()


def test_sweep_tables_the_mean_and_spread_over_seeds(run):
    runs = ft.sweep(run, ["scene"], ["scratch", "frozen"], [1.0], seeds=[0, 1], progress=False)
    assert [(r.settings.mode, r.settings.seed) for r in runs] == [("scratch", 0), ("scratch", 1), ("frozen", 0), ("frozen", 1)]
    assert all(r.model is None for r in runs)  # metrics only
    assert not any((r.out_dir / ft.MODEL_DIR).exists() for r in runs[:2])  # no weights kept from scratch
    assert (runs[2].out_dir / ft.HEAD_FILE).is_file() and not (runs[3].out_dir / ft.HEAD_FILE).exists()  # run.seed's head
    table = ft.accuracy_table(runs)
    cell = table["scene"]["frozen"][1.0]
    assert cell["n"] == 2 and cell["values"] == [runs[2].accuracy, runs[3].accuracy]
    assert cell["mean"] == pytest.approx((runs[2].accuracy + runs[3].accuracy) / 2)
