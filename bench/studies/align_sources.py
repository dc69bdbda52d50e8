"""Issue #7: is held-out alignment out of reach because of the model, or because of the narration it learns from?

Held-out alignment (``evaluate.alignment_examples``) pairs a step's clean
caption with its own clips or with another video's. Pretraining can only pair
*narration* sentences with the clips under them. This study trains the
alignment head alone (MiniLM cut to the profile's layers, centroid-initialised
visual tokens, as ``pretrain.build_model`` makes it; no masking, no stride
noise; AdamW at the profile's learning rate; batches of 32, half of them
negatives from another video, cut to the positive's number of tokens) on
training-video pairs whose text and clips come from:

- ``caption+step``: the step's caption and the clips inside the step (what
  the held-out pairs are; labels a pretraining corpus does not have);
- ``caption+sentence``: the caption, with the clips of the narration sentence
  that overlaps the step most;
- ``sentence+step``: that sentence's words, with the step's clips;
- ``narration``: every narration sentence with its own clips (what
  pretraining sees);
- ``narration-cooking``: the narration sentences that hold a cooking word
  (TinyCook's verbs and ingredients, ``pretrain.salient_token_ids``).

and reports held-out alignment accuracy every ``EVERY`` steps. ``LOSS=contrastive`` trains with 8
sentences against 8 videos per step instead (see ``train_alignment``); ``SOURCES`` (comma-separated)
picks sources and skips the co-occurrence rows. Beside them,
without a network: ``cooccurrence-narration`` and ``cooccurrence-caption``
score a held-out pair by how often its caption's cooking words came with its
visual tokens in the training pairs (a PMI table, add-half smoothing);
accuracy at score 0 and the pairwise ranking of positive over negative.

    STEPS=600 DEVICE=cuda OUT=build/studies python -m bench.studies.align_sources data/tinycook-cpu-s0

Rows go to ``$OUT/align_sources.json``. Results of 2026-11-27 on an H200
(600 steps, seeds 0 and 1): ``align_sources_h200.json``; on the 2-core CPU with ``LOSS=contrastive``
(narration, 150 steps): ``align_sources_cpu_contrastive.json``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.studies._common import open_folder, use_saved_stages
from vbert_lab import evaluate, pipeline, pretrain
from vbert_lab import sequences as S
from vbert_lab.model import contrastive_alignment_loss
from vbert_lab.text import load_wordpiece


def _overlap(a0, a1, b0, b1) -> float:
    return min(a1, b1) - max(a0, b0)


def sources(run, tokenizer, cooking: set[int]) -> dict[str, list[S.TokenSegment]]:
    """Training pairs by source (see the module's docstring)."""
    videos = {v.video_id: v for v in pipeline.load_tokens(run, "training")}
    narration = [seg for v in videos.values() for seg in S.segments_of(v) if seg.text and seg.visual]
    out = {"caption+step": [], "caption+sentence": [], "sentence+step": [], "narration": narration,
           "narration-cooking": [seg for seg in narration if set(seg.text) & cooking]}
    for step in evaluate.heldout_segments(run, ("training",)):
        if not step.caption:
            continue
        caption = tokenizer.encode(step.caption)
        out["caption+step"].append(S.TokenSegment(step.video_id, caption, step.visual))
        v = videos[step.video_id]
        best = max(v.sentences, key=lambda s: _overlap(s["start"], s["end"], step.start, step.end))
        if _overlap(best["start"], best["end"], step.start, step.end) > 0:
            out["caption+sentence"].append(S.TokenSegment(step.video_id, caption, v.visual[best["first_clip"]: best["last_clip"] + 1]))
            out["sentence+step"].append(S.TokenSegment(step.video_id, list(best["ids"]), step.visual))
    return out


def _binary_batch(model, pairs, rng) -> list[dict]:
    """32 pairs, half of them negatives from another video (cut to the positive's number of tokens)."""
    rows = []
    for _ in range(32):
        own, label = pairs[rng.randrange(len(pairs))], 1
        if rng.random() < 0.5:
            other = own
            while other.video_id == own.video_id:
                other = pairs[rng.randrange(len(pairs))]
            own, label = S.misaligned_segment(own, other, rng.randrange), 0
        rows.append(dict(S.build_sequence(model.config, own.text, own.visual, None, 64), alignment_label=label))
    return rows


def _square_batch(model, pairs, rng, n: int = 8) -> list[dict]:
    """``n`` sentences of ``n`` different videos, each with every one's tokens: ``n * n`` pairs, row-major."""
    chosen = []
    while len(chosen) < n:
        seg = pairs[rng.randrange(len(pairs))]
        if all(seg.video_id != c.video_id for c in chosen):
            chosen.append(seg)
    rows = []
    for i, own in enumerate(chosen):
        for j, other in enumerate(chosen):
            shown = other if i == j else S.misaligned_segment(own, other, rng.randrange)
            rows.append(dict(S.build_sequence(model.config, own.text, shown.visual, None, 64), alignment_label=int(i == j)))
    return rows


def train_alignment(run, settings, pairs, heldout_examples, steps: int, every: int, seed: int = 0,
                    loss_kind: str = "binary") -> list[dict]:
    """The alignment head alone. ``loss_kind``: ``"binary"``, the course's cross-entropy on aligned / not
    aligned; ``"contrastive"``, 8 sentences x their 8 videos per step (64 pairs, every sentence against every
    video, the others cut to its number of tokens), the head's score ``logit[aligned] - logit[not]`` ranked
    both ways (InfoNCE over the rows and the columns), plus the binary loss with the 8 positives weighted
    as the 56 negatives (so the score's sign still says aligned or not)."""
    import torch.nn.functional as F

    model = pretrain.build_model(run, settings).to(run.device)
    collate = S.Collator(model.config, mask=False)
    opt = torch.optim.AdamW(model.parameters(), lr=run.profile.pretrain_lr, weight_decay=0.01)
    rng, losses, curve = random.Random(seed), [], []
    for step in range(1, steps + 1):
        rows = _binary_batch(model, pairs, rng) if loss_kind == "binary" else _square_batch(model, pairs, rng)
        batch = {k: v.to(run.device) for k, v in collate(rows).items()}
        labels = batch.pop("alignment_labels")
        model.train()
        logits = model(**batch).alignment_logits
        if loss_kind == "binary":
            loss = F.cross_entropy(logits, labels)
        else:  # one group: every row of the batch (the loss the course's pretraining uses, model.py)
            loss = sum(contrastive_alignment_loss(logits, labels, torch.zeros_like(labels)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            curve.append({"step": step, "train_loss": round(float(np.mean(losses[-every:])), 3),
                          "heldout": round(evaluate.alignment_accuracy(model, heldout_examples), 3)})
    return curve


def cooccurrence(pairs, heldout_examples, config, cooking: set[int], n_visual: int) -> dict:
    counts = np.full((max(cooking) + 1, n_visual), 0.5)
    for seg in pairs:
        for w in set(seg.text) & cooking:
            np.add.at(counts[w], list(seg.visual), 1)
    background = counts.sum(0) / counts.sum()
    pmi = np.log(counts / counts.sum(1, keepdims=True)) - np.log(background)
    jn = config.special_token_id("[>]")
    scores, labels = [], []
    for ex in heldout_examples:
        ids = ex["input_ids"].tolist()
        j = ids.index(jn)
        words, visual = set(ids[1:j]) & cooking, [i - config.visual_offset for i in ids[j + 1: -1]]
        scores.append(sum(pmi[w, t] for w in words for t in visual) / max(1, len(visual)))
        labels.append(int(ex["alignment_label"]))
    s, y = np.asarray(scores), np.asarray(labels)
    pos, neg = s[y == 1], s[y == 0]  # alignment_examples: each positive followed by its negative
    return {"heldout_at_0": round(float(((s > 0) == (y == 1)).mean()), 3), "pairwise": round(float((pos > neg).mean()), 3)}


def main(data_dirs: list[str]) -> list[dict]:
    out = Path(os.environ.get("OUT", "build/studies"))
    out.mkdir(parents=True, exist_ok=True)
    steps, every = int(os.environ.get("STEPS", "600")), int(os.environ.get("EVERY", "50"))
    only = [n for n in os.environ.get("SOURCES", "").split(",") if n]
    loss_kind = os.environ.get("LOSS", "binary")
    if loss_kind not in ("binary", "contrastive"):
        raise SystemExit(f"LOSS={loss_kind!r}: choose binary or contrastive")
    use_saved_stages()
    tokenizer = load_wordpiece()
    rows = []
    for data_dir in data_dirs:
        run = open_folder(data_dir, os.environ.get("DEVICE", "cuda"))
        settings = pretrain.default_settings(run)
        cooking = set(pretrain.salient_token_ids(settings))
        heldout = evaluate.alignment_examples(pipeline.model_config(run), evaluate.heldout_segments(run), seed=0, tokenizer=tokenizer)
        by_source = sources(run, tokenizer, cooking)
        n_visual = pipeline.model_config(run).n_visual_tokens
        for name in ("narration", "caption") if not only else ():
            pairs = by_source["narration" if name == "narration" else "caption+step"]
            row = {"data": Path(data_dir).name, "source": f"cooccurrence-{name}", "pairs": len(pairs),
                   **cooccurrence(pairs, heldout, pipeline.model_config(run), cooking, n_visual)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        for name, pairs in by_source.items():
            if only and name not in only:
                continue
            started = time.time()
            curve = train_alignment(run, settings, pairs, heldout, steps, every, loss_kind=loss_kind)
            row = {"data": Path(data_dir).name, "source": name, "loss": loss_kind, "pairs": len(pairs), "steps": steps,
                   "seconds": round(time.time() - started, 1), "device": run.device,
                   "heldout_last": curve[-1]["heldout"], "heldout_best": max(c["heldout"] for c in curve), "curve": curve}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            (out / "align_sources.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "align_sources.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:] or ["data/tinycook-cpu-s0"])
