"""Zero-shot with contextual calibration: does dividing out the template's prior over labels help?

For the course's pretrained VideoBERT of a TinyCook folder (``derived/pretrain/text_video-100pct``): the
zero-shot template's verb and noun scores on the held-out steps (:func:`vbert_lab.evaluate.zero_shot_scores`,
the cross-modal row), raw and *calibrated*: each label's log-probability minus its log mean probability over
K training steps' videos (Zhao et al. 2021's contextual calibration, with the model's marginal over videos as
the content-free input), top-1 and top-5. Rows are appended to ``$OUT/zero_shot_calibration.json``.

    OUT=build/studies python -m bench.studies.zero_shot_calibration data/tinycook-cpu-s0 [K]

Results of 2026-11-27 (2-core CPU): ``zero_shot_calibration_cpu.json``.
"""

from __future__ import annotations

import math
import os
import random
import sys
from pathlib import Path

import torch

from bench.studies._common import append_row, course_model
from vbert_lab import evaluate
from vbert_lab.tinycook import INGREDIENTS, VERBS


def main(data_dir: str, k: int = 128) -> dict:
    run, tokenizer, model, heldout, train_steps = course_model(data_dir)
    candidates = [evaluate.label_token_ids(tokenizer, VERBS), evaluate.label_token_ids(tokenizer, INGREDIENTS)]
    scores = evaluate.zero_shot_scores(model, tokenizer, candidates, visual=[s.visual for s in heldout])
    refs = [s.visual for s in random.Random(run.seed).sample(train_steps, min(k, len(train_steps)))]
    ref_scores = evaluate.zero_shot_scores(model, tokenizer, candidates, visual=refs)
    row = {"data": Path(data_dir).name, "seed": run.seed, "steps": len(heldout), "k": len(refs)}
    for what, labels, s, r in (("verb", VERBS, scores[0], ref_scores[0]), ("noun", INGREDIENTS, scores[1], ref_scores[1])):
        targets = [labels.index(getattr(seg, what)) for seg in heldout]
        log_p = torch.log_softmax(s, -1)
        marginal = torch.logsumexp(torch.log_softmax(r, -1), 0) - math.log(len(refs))  # (n_labels,)
        for name, x in (("raw", log_p), ("calibrated", log_p - marginal)):
            for top in (1, 5):
                row[f"{what}_top{top}_{name}"] = round(evaluate.topk_accuracy(x, targets, top), 4)
    print(row, flush=True)
    append_row(Path(os.environ.get("OUT", "build/studies")) / "zero_shot_calibration.json", row)
    return row


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 128)
