"""Issue #7: can the alignment label of a pretraining pair be read off its lengths alone?

The text-video regime shows a sentence with its own video tokens (label 1)
or with another video's (label 0). If a negative keeps the other segment's
number of tokens, the count of video tokens beside the count of words (a
long sentence comes with a long segment) tells the two apart without reading
either, and an alignment head can learn that instead of the video. This
study draws batches the way pretraining does (``pretrain_loaders``, the
profile's settings) and fits a gradient-boosted classifier on four numbers
per labelled row: words, video tokens, ``[MASK]`` tokens and the sequence
length. Five-fold cross-validated accuracy, for negatives

- ``as_drawn``: the other segment's tokens as they are (the recipe before
  2026-11-27);
- ``matched``: cut or repeated to the sentence's own number of tokens
  (``sequences.misaligned_segment``, the recipe since).

Chance is the share of the larger class (``majority``). Rows go to
``$OUT/pair_lengths.json``; the folder's derived stages are read, never rebuilt.

    python -m bench.studies.pair_lengths data/tinycook-cpu-s0 [data/tinycook-cpu-s1 ...]

Results of 2026-11-27 on the 2-core CPU machine: ``pair_lengths_cpu.json``.
"""

from __future__ import annotations

import json
import os
import sys
from itertools import islice
from pathlib import Path

import numpy as np

from bench.studies._common import open_folder, use_saved_stages
from vbert_lab import pretrain, sequences


def _rows(run, batches: int) -> tuple[np.ndarray, np.ndarray]:
    settings = pretrain.default_settings(run)
    config = pretrain.build_model(run, settings).config
    loader = pretrain.pretrain_loaders(run, config, settings)["text_video"]

    def endless():  # epoch after epoch, as training meets them (each epoch draws its pairs afresh)
        epoch = 0
        while True:
            yield from loader.iter_from(epoch)
            epoch += 1

    X, y = [], []
    for batch in islice(endless(), batches):
        ids, labels = batch["input_ids"], batch["alignment_labels"]
        video = (ids >= config.visual_offset) & (ids < config.audio_offset)
        for r in range(len(labels)):
            if labels[r] < 0:
                continue
            length = int(batch["attention_mask"][r].sum())
            n_video, n_mask = int(video[r].sum()), int((ids[r] == config.mask_token_id).sum())
            X.append([length - n_video - n_mask, n_video, n_mask, length])
            y.append(int(labels[r]))
    return np.asarray(X, float), np.asarray(y)


def study(data_dir: str, batches: int = 60) -> list[dict]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import cross_val_score

    run = open_folder(data_dir)
    matched = sequences.misaligned_segment
    out = []
    for name, fn in (("as_drawn", lambda own, other, randrange: sequences.TokenSegment(
            own.video_id, own.text, list(other.visual), other.audio)), ("matched", matched)):
        calls = []

        def counted(own, other, randrange, fn=fn):
            calls.append(1)
            return fn(own, other, randrange)

        sequences.misaligned_segment = counted  # the collator looks it up when it draws a batch
        try:
            X, y = _rows(run, batches)
        finally:
            sequences.misaligned_segment = matched
        if not calls:  # the collator no longer looks it up at call time: this row would not measure what it says
            raise SystemExit("pretrain._PairCollator did not call sequences.misaligned_segment; update this study")
        acc = cross_val_score(GradientBoostingClassifier(random_state=0), X, y, cv=5)
        out.append({"data": Path(data_dir).name, "negatives": name, "rows": int(len(y)),
                    "majority": round(float(max(y.mean(), 1 - y.mean())), 3),
                    "accuracy_from_lengths": round(float(acc.mean()), 3), "spread": round(float(acc.std()), 3)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str]) -> None:
    use_saved_stages()
    rows = [row for data_dir in argv for row in study(data_dir)]
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "pair_lengths.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["data/tinycook-cpu-s0"])
