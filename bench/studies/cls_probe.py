"""Issue #7: does a pretrained VideoBERT's alignment head see its input at all?

Loads a pretraining checkpoint (a ``VideoBert.from_pretrained`` folder) and
encodes the held-out alignment pairs of a data folder
(``evaluate.alignment_examples``). It prints:

- the spread over examples of ``[CLS]``'s final hidden state against that of the
  other positions;
- the size and spread of the pooled output;
- the spread of the alignment logit difference.

A head whose ``[CLS]`` (or pooled) state barely varies gives the same answer for
every pair, and its training loss sits at ln 2.

    python -m bench.studies.cls_probe data/tinycook-cpu-s0 data/tinycook-cpu-s0/derived/pretrain/text_video-100pct/checkpoints/step-00000300

Found on 2026-11-26 (CPU, cpu-s0, fresh pairs, 1,500 steps, ``[CLS]`` pooling):
- ``[CLS]`` std 0.003 against 0.39 for the other positions;
- pooled output about 0.02 in size;
- logit-difference std 0.0004, so the head answered the same for every pair;
- the training alignment loss stayed at 0.693 throughout.
"""

from __future__ import annotations

import json
import sys

import torch

from bench.studies._common import open_folder
from vbert_lab import evaluate
from vbert_lab.model import VideoBert
from vbert_lab.sequences import Collator
from vbert_lab.text import load_wordpiece


def probe(data_dir: str, checkpoint: str, n: int = 128) -> dict:
    run = open_folder(data_dir)
    model = VideoBert.from_pretrained(checkpoint).eval()
    pairs = evaluate.alignment_examples(model.config, evaluate.heldout_segments(run), seed=0, tokenizer=load_wordpiece())[:n]
    batch = Collator(model.config, mask=False)(pairs)
    batch.pop("alignment_labels")
    with torch.no_grad():
        hidden = model.encode(**batch)
        pooled = model.pooler(hidden, batch["attention_mask"])
        logits = model.alignment_head(pooled)
    real = batch["attention_mask"].bool()
    return {"pooling": model.config.pooling, "pairs": len(pairs),
            "cls_std": round(float(hidden[:, 0].std(0).mean()), 4),
            "token_std": round(float(hidden[real].std(0).mean()), 4),
            "pooled_abs": round(float(pooled.abs().mean()), 4), "pooled_std": round(float(pooled.std(0).mean()), 4),
            "logit_diff_std": round(float((logits[:, 1] - logits[:, 0]).std()), 4)}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
