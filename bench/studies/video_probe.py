"""Issue #7: does a pretrained VideoBERT read the video when it fills in a word?

Each held-out step's clean caption (``evaluate.heldout_segments``) has its
verb (then its noun) replaced by ``[MASK]``; the model ranks the label words at
that position with three videos after ``[>]``: the step's own visual tokens,
those of a step of another video with a different label, and none. A model
that reads the video scores higher with its own tokens than with the others;
one that guesses from the rest of the sentence scores the same three times.

    python -m bench.studies.video_probe data/tinycook-cpu-s0 data/tinycook-cpu-s0/derived/pretrain/text_video-100pct/checkpoints/step-00000300

Found on 2026-11-27 (CPU, cpu-s0, 1,500 steps, the defaults before salient-word
masking): verb top-1 0.38 / 0.38 / 0.37 (own / other / none): the masked verb
was guessed from the ingredient beside it, never from the video. With today's
defaults (salient-word masking, 300 steps): verb 0.305 / 0.107 / 0.152, so the
model reads the video for the verb; noun 0.066 / 0.071 / 0.066, not for the noun.
"""

from __future__ import annotations

import json
import random
import sys

import torch

from bench.studies._common import open_folder
from vbert_lab import evaluate
from vbert_lab.model import VideoBert
from vbert_lab.sequences import Collator, build_sequence
from vbert_lab.text import load_wordpiece
from vbert_lab.tinycook import INGREDIENTS, VERBS


@torch.no_grad()
def probe(data_dir: str, checkpoint: str) -> dict:
    run = open_folder(data_dir)
    model = VideoBert.from_pretrained(checkpoint).eval()
    cfg, tokenizer = model.config, load_wordpiece()
    held = [s for s in evaluate.heldout_segments(run) if s.caption]
    out = {"checkpoint": checkpoint}
    for kind, labels in (("verb", VERBS), ("noun", INGREDIENTS)):
        candidates = evaluate.label_token_ids(tokenizer, labels)
        rng = random.Random(0)
        for video in ("own", "other", "none"):
            rows, targets = [], []
            for s in held:
                words, target = tokenizer.encode(s.caption), candidates[labels.index(getattr(s, kind))]
                if target not in words:
                    continue
                if video == "own":
                    visual = s.visual
                elif video == "other":
                    visual = rng.choice([o for o in held if o.video_id != s.video_id and getattr(o, kind) != getattr(s, kind)]).visual
                else:
                    visual = []
                masked = [cfg.mask_token_id if w == target else w for w in words]
                rows.append(build_sequence(cfg, masked, visual))
                targets.append((1 + masked.index(cfg.mask_token_id), candidates.index(target)))  # +1: [CLS]
            batch = Collator(cfg, mask=False)(rows)
            hidden = model.encode(**batch)
            where = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
            for r, (position, _) in enumerate(targets):
                where[r, position] = True
            scores = model.masked_logits(hidden, where)[:, candidates]  # (N, n_labels), rows in order
            hits = scores.argmax(1) == torch.tensor([c for _, c in targets])
            out[f"{kind}_top1.{video}"] = round(float(hits.float().mean()), 3)
        out[f"{kind}_captions"] = len(targets)
    return out


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
