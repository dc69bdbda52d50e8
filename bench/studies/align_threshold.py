"""Issue #7: is the alignment head's miss a ranking problem or a threshold problem?

For each pretrained checkpoint: the head's score ``logit[aligned] - logit[not]``
on the held-out alignment pairs (:func:`vbert_lab.evaluate.alignment_examples`,
``seed=0`` as in ``pretrain_sweep``), and from it the accuracy at threshold 0
(what the course reports), at the best threshold (an upper bound: the threshold
is chosen on the same pairs), the ROC AUC and the median score. Rows go to
``$OUT/align_threshold.json``.

    OUT=build/studies python -m bench.studies.align_threshold data/tinycook-cpu-s0 CHECKPOINT [CHECKPOINT ...]

A checkpoint is a :meth:`VideoBert.from_pretrained` folder (a run's
``checkpoints/step-N``). Results of 2026-11-27 (recipe 4, 2-core CPU):
``align_threshold_cpu_r4.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.studies._common import open_folder, use_saved_stages
from vbert_lab import evaluate
from vbert_lab.model import VideoBert
from vbert_lab.text import load_wordpiece


def main(data_dir: str, checkpoints: list[str]) -> list[dict]:
    out = Path(os.environ.get("OUT", "build/studies"))
    out.mkdir(parents=True, exist_ok=True)
    use_saved_stages()
    run = open_folder(data_dir, "cpu")
    heldout = evaluate.heldout_segments(run)
    rows = []
    for checkpoint in checkpoints:
        model = VideoBert.from_pretrained(checkpoint)
        s, y = (t.numpy() for t in evaluate.alignment_scores(
            model, evaluate.alignment_examples(model.config, heldout, seed=0, tokenizer=load_wordpiece())))
        best = max(float(((s > t) == y).mean()) for t in np.concatenate([[-np.inf], s]))
        row = dict(data=Path(data_dir).name, checkpoint=str(checkpoint), pairs=len(y), acc_at_0=round(float(((s > 0) == y).mean()), 3),
                   acc_best_threshold=round(best, 3), auc=round(float(roc_auc_score(y, s)), 3), median_score=round(float(np.median(s)), 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "align_threshold.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m bench.studies.align_threshold DATA_DIR CHECKPOINT [CHECKPOINT ...]")
    main(sys.argv[1], sys.argv[2:])
