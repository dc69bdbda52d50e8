"""Issue #7: held-out alignment read from the masked-token head (Bayes' rule), no alignment head.

For the course's pretrained VideoBERT of a TinyCook folder (``derived/pretrain/text_video-100pct``, as
notebook 07 leaves it): :func:`vbert_lab.evaluate.mlm_alignment_scores` on notebook 07's held-out pairs
(``alignment_examples(seed=run.seed)``), with ``K`` reference videos drawn from the training steps
(``random.Random(draw)``; ``K = all``: every training step, no draw). Per row: accuracy at 0 (the rule the
notebook uses), the ROC AUC, the accuracy at the best threshold (an upper bound: chosen on the same pairs),
the seconds it took; and the alignment head's accuracy and AUC on the same pairs. Rows are appended to
``$OUT/mlm_alignment.json``.

    OUT=build/studies python -m bench.studies.mlm_alignment data/tinycook-cpu-s0 [K ...]

Results of 2026-11-27 (2-core CPU, the course's 400-step anchored pretraining): ``mlm_alignment_cpu.json``.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.studies._common import append_row, course_model
from vbert_lab import evaluate, pretrain


def main(data_dir: str, ks: list[str]) -> list[dict]:
    out = Path(os.environ.get("OUT", "build/studies")) / "mlm_alignment.json"
    run, tokenizer, model, heldout, train_steps = course_model(data_dir)
    pairs = evaluate.alignment_examples(model.config, heldout, seed=run.seed, tokenizer=tokenizer)
    word_ids = pretrain.salient_token_ids(pretrain.default_settings(run))
    head, labels = evaluate.alignment_scores(model, pairs)
    base = {"data": Path(data_dir).name, "seed": run.seed, "pairs": len(pairs), "train_steps": len(train_steps),
            "head_accuracy": evaluate.score_accuracy(head, labels), "head_auc": float(roc_auc_score(labels, head))}
    rows = []
    for k in ks:
        draws = [None] if k == "all" else [0, 1, 2]
        for draw in draws:
            refs = [s.visual for s in (train_steps if draw is None else random.Random(draw).sample(train_steps, int(k)))]
            t0 = time.perf_counter()
            scores, labels = evaluate.mlm_alignment_scores(model, pairs, word_ids, refs)
            seconds = time.perf_counter() - t0
            s, y = scores.numpy(), labels.numpy()
            best = max(float(((s > t) == y).mean()) for t in np.concatenate([[-np.inf], np.unique(s)]))
            row = {**base, "k": len(refs), "draw": draw, "accuracy": evaluate.score_accuracy(scores, labels),
                   "auc": float(roc_auc_score(y, s)), "best_threshold_accuracy": best,
                   "median_score": float(np.median(s)), "seconds": round(seconds, 1)}
            print(row, flush=True)
            rows = append_row(out, row)
    return rows


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["32", "64", "128", "all"])
