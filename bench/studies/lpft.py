"""Issue #8: linear probing, then fine-tuning (LP-FT; Kumar et al., 2022, "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution") for the action task at 10 % of the labels, over 3 seeds.

A fresh classifier's first gradients flow back into the pretrained encoder while the classifier is still
random; LP-FT first trains the classifier on the frozen features (the course's ``frozen`` mode), then fine-tunes
everything from there. Does that keep more of what pretraining gave?

    OUT=build/studies python -m bench.studies.lpft /tmp/s0 '{"steps": 80}'

As ``finetune_steps``, give it a *copy* of a course folder (the JSON files, ``derived/{codebook,tokens}`` and
``derived/pretrain/text_video-100pct``); the frozen probes are written into it (and reused), the LP-FT runs into a
temporary folder. One JSON row per call, appended to ``$OUT/lpft.json``. Results of 2026-11-27 (2-core CPU, copies
of tinycook-cpu-s0 and -s1 with the course's default pretraining): ``lpft_cpu.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from bench.studies._common import append_row, open_folder, use_saved_stages
from vbert_lab import finetune


def main(data_dir: str, overrides: dict, fraction: float = 0.1) -> dict:
    use_saved_stages()
    run = open_folder(data_dir, os.environ.get("DEVICE", "cpu"))
    build = finetune.build_classifier
    row = {"data": Path(data_dir).name, "overrides": overrides, "fraction": fraction, "lpft": [], "probe": []}
    for seed in finetune.seeds_of(run, 3):
        probe = finetune.ensure_finetuned(run, "action", "frozen", fraction, True, seed, keep_model=True)
        head = {k: v.detach().clone().cpu() for k, v in probe.model.classifier.state_dict().items()}

        def from_probe(run_, task, mode, seed_=0, reinit_layers=0, pooling=None):
            model, base = build(run_, task, mode, seed_, reinit_layers, pooling)
            model.classifier.load_state_dict(head)  # the probe's classifier, its standardisation folded in
            return model, base

        finetune.build_classifier = from_probe
        try:
            settings = finetune.default_settings(run, "action", "finetuned", fraction, True, seed, **overrides)
            with tempfile.TemporaryDirectory() as tmp:
                _, metrics, _ = finetune.finetune(run, settings, tmp)
        finally:
            finetune.build_classifier = build
        row["probe"].append(round(probe.accuracy, 3))
        row["lpft"].append(round(metrics["test"]["accuracy"], 3))
        print(seed, row["probe"][-1], row["lpft"][-1], flush=True)
    row["probe_mean"] = round(sum(row["probe"]) / len(row["probe"]), 3)
    row["lpft_mean"] = round(sum(row["lpft"]) / len(row["lpft"]), 3)
    append_row(Path(os.environ.get("OUT", "build/studies")) / "lpft.json", row)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
