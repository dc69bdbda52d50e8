"""Issue #7: how much do a step's tokens say about its verb, its noun and its caption, before any transformer?

A naive-Bayes classifier over bags of tokens, fit on the training videos'
labelled steps (``evaluate.heldout_segments(run, ("training",))``: the clips
whose middle lies in the step) and scored on the held-out (validation and
testing) steps, for the visual and the audio tokens separately:

- ``<modality>.verb_top1`` / ``.noun_top1``: held-out accuracy;
- ``<modality>.pairwise_alignment``: for each held-out step, the caption's
  verb and noun score higher under its own tokens than under those of a step
  of another video that differs in verb and noun (the negatives of
  ``evaluate.alignment_examples``, same seed). A ranking, so chance is 0.5;
  the model's alignment accuracy is a harder, per-pair decision;
- ``features.verb_top1`` / ``.noun_top1``: a logistic regression on the
  step's mean clip feature (the extractor's output, before k-means): the
  ceiling the tokens inherit.

It answers whether the tokens carry what the paper's claims need, separately
from whether pretraining learns it. Rows go to ``$OUT/token_bayes.json``.

    OVR='{"tinycook_videos": 480, "extractor_epochs": 64}' python -m bench.studies.token_bayes data/exp480-s0

``OVR`` (JSON) overrides fields of the ``cpu`` profile, for folders made with
other settings; the folder's derived stages must exist (they are read, never
rebuilt). Results of 2026-11-26 on the 2-core CPU machine: ``token_bayes_cpu.json``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.studies._common import open_folder
from vbert_lab import evaluate

SIZES = {"visual": lambda p: p.kmeans_k ** p.kmeans_depth, "audio": lambda p: p.audio_kmeans_k ** p.audio_kmeans_depth}


def _fit(train, kind: str, modality: str, size: int, alpha: float = 0.5):
    labels = sorted({getattr(s, kind) for s in train})
    counts = np.full((len(labels), size), alpha)
    prior = np.ones(len(labels))
    for s in train:
        c = labels.index(getattr(s, kind))
        prior[c] += 1
        for t in getattr(s, modality) or []:
            counts[c, t] += 1
    return labels, np.log(counts / counts.sum(1, keepdims=True)), np.log(prior / prior.sum())


def _log_posterior(model, tokens) -> np.ndarray:
    labels, log_like, log_prior = model
    scores = log_prior + log_like[:, list(tokens or [])].sum(1)
    return scores - np.logaddexp.reduce(scores)


def study(data_dir: str, overrides: dict) -> dict:
    run = open_folder(data_dir)
    run.profile = replace(run.profile, **overrides)
    train, held = evaluate.heldout_segments(run, ("training",)), evaluate.heldout_segments(run)
    row = {"data": Path(data_dir).name, "overrides": overrides, "train_steps": len(train), "heldout_steps": len(held)}
    for modality, size in SIZES.items():
        models = {kind: _fit(train, kind, modality, size(run.profile)) for kind in ("verb", "noun")}
        for kind, model in models.items():
            hits = [model[0][int(np.argmax(_log_posterior(model, getattr(s, modality))))] == getattr(s, kind) for s in held]
            row[f"{modality}.{kind}_top1"] = round(float(np.mean(hits)), 3)
        rng, wins, pairs = random.Random(0), 0, 0
        for s in held:  # as evaluate.alignment_examples draws its negatives
            others = [o for o in held if o.video_id != s.video_id and o.verb != s.verb and o.noun != s.noun]
            if not others:
                continue
            neg = rng.choice(others)

            def score(seg, s=s):
                return sum(_log_posterior(models[k], getattr(seg, modality))[models[k][0].index(getattr(s, k))]
                           for k in ("verb", "noun"))
            wins += score(s) > score(neg)
            pairs += 1
        row[f"{modality}.pairwise_alignment"] = round(wins / pairs, 3)
    row.update(_feature_probe(run, train, held))
    return row


def _feature_probe(run, train, held) -> dict:
    """Logistic regression on each step's mean clip feature: what the extractor kept, before any k-means."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vbert_lab import pipeline

    features, meta = pipeline.clip_features(run)
    rows_of = {}
    for i, m in enumerate(meta):  # a clip belongs to a step when its middle does (as in evaluate.heldout_segments)
        rows_of.setdefault(m["video"], []).append((i, (m["start_s"] + m["end_s"]) / 2))

    def mean_feature(s):
        rows = [i for i, mid in rows_of.get(s.video_id, []) if s.start <= mid < s.end]
        return features[rows].mean(0).numpy() if rows else None

    data = {}
    for name, steps in (("train", train), ("held", held)):
        pairs = [(mean_feature(s), s) for s in steps]
        data[name] = [(f, s) for f, s in pairs if f is not None]
    scale = StandardScaler().fit([f for f, _ in data["train"]])
    out = {}
    for kind in ("verb", "noun"):
        clf = LogisticRegression(max_iter=2000, C=0.5).fit(scale.transform([f for f, _ in data["train"]]),
                                                           [getattr(s, kind) for _, s in data["train"]])
        out[f"features.{kind}_top1"] = round(float(clf.score(scale.transform([f for f, _ in data["held"]]),
                                                             [getattr(s, kind) for _, s in data["held"]])), 3)
    return out


def main(data_dirs: list[str]) -> list[dict]:
    out = Path(os.environ.get("OUT", "build/studies"))
    out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(os.environ.get("OVR", "{}"))
    rows = []
    for data_dir in data_dirs:
        rows.append(study(data_dir, overrides))
        print(json.dumps(rows[-1]), flush=True)
    (out / "token_bayes.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
