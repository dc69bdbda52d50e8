"""Issue #7: which pretraining settings make the paper's cross-modal claims appear on TinyCook?

For each data folder (a TinyCook run whose ``derived/codebook`` and
``derived/tokens`` exist) and each setting: pretrain VideoBERT (text-video
regimes) and, once per (steps, lr), the text-only language prior; then
measure held-out alignment accuracy and zero-shot verb/noun top-1/top-5 of
both. Rows go to ``$OUT/pretrain_sweep.json`` as they finish.

    OUT=build/studies python -m bench.studies.pretrain_sweep data/tinycook-cpu-s0 data/tinycook-cpu-s1

The folders need only the JSON files and ``derived/{codebook,tokens}`` (no
videos): the codebook and token stages are read as they are, so the study can
run on a machine the videos were not copied to. ``DEVICE`` (default cuda),
``SCALE`` (multiplies every step count, for a smoke run) and ``BUDGET``
(seconds; later settings are skipped once it is spent) are read from the
environment, as are ``PRIOR=0`` (no text-only prior: its fields are null) and ``ROWS`` (comma-separated setting names, run in that order;
default all). Results of 2026-11-26 on an H100 (the settings before salient
masking): ``pretrain_sweep_h100.json``; of 2026-11-27 on an H200 (the
``salient*`` rows, two device runs): ``pretrain_sweep_h200_salient.json``; of 2026-11-27 on the 2-core CPU with the
max-pooling extractor (``salient600``, ``salient600-b16``, seed 0): ``pretrain_sweep_cpu_maxpool.json``; of
2026-11-27 on an H200 with recipe 3 (the ``r3-*`` rows): ``pretrain_sweep_h200_r3.json``; of 2026-11-27 on the
2-core CPU with recipe 4, the contrastive alignment loss (the ``r4-*`` rows, ``DEVICE=cpu PRIOR=0``):
``pretrain_sweep_cpu_r4.json``; of 2026-11-27 on an H200, the ``r5-*`` rows over three training seeds
(``TRAIN_SEED`` 0, 1, 2: added to the run's seed for the batches' draws), eight processes side by side on the one
GPU, each ``OMP_NUM_THREADS=2 TRAIN_SEED=t ROWS=... PRIOR=0 BUDGET=330`` with its own ``OUT``:
``pretrain_sweep_h200_r5.json``. Each row also reports ``align_auc``, the ROC AUC of the
alignment head's score on the held-out pairs. The ``r6-*`` rows (visual rows anchored to the cooking words,
``PretrainSettings.word_anchor``): ``pretrain_sweep_h200_r6.json`` (H200, three training seeds) and
``pretrain_sweep_cpu_r6.json`` (2-core CPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from bench.studies._common import open_folder, use_saved_stages
from vbert_lab import evaluate, pretrain
from vbert_lab.text import load_wordpiece

TV8 = {"text": 1.0, "video": 1.0, "text_video": 8.0}
TV16 = {"text": 1.0, "video": 1.0, "text_video": 16.0}
# the defaults before salient-word masking (2026-11-27): the paper's [CLS], every masked token predicted
BEFORE = {"pooling": "cls", "salient_rate": 0.0, "mask_negatives": True, "regime_weights": {"text": 1.0, "video": 1.0, "text_video": 4.0}}
# (name, steps, settings): lr, num_layers, loss_weights and the PretrainSettings fields, over today's defaults;
# the rows before recipe 4 over the binary alignment loss of their day (BINARY, applied below)
BINARY = {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32}
# recipe 4's contrastive settings as the r4-n8b24-um-sr1-cw05 row ran them
C = {"alignment_loss": "contrastive", "batch_size": 24, "alignment_group": 8, "salient_rate": 1.0, "mask_groups": False,
     "loss_weights": {"alignment_contrastive": 0.5}}
SETTINGS = [
    ("salient300", 300, {}),
    ("salient300-lr1e-3", 300, {"lr": 1e-3}),
    ("salient300-aw5", 300, {"loss_weights": {"alignment": 5.0}}),
    ("salient300-L6", 300, {"num_layers": 6}),
    ("salient300-sr025", 300, {"salient_rate": 0.25}),
    ("salient600", 600, {}),
    ("salient600-b16", 600, {"batch_size": 16}),  # the cpu profile's compute (300 x 32 examples) in twice the steps
    ("salient1000", 1000, {}),
    ("salient1000-aw10", 1000, {"loss_weights": {"alignment": 10.0}}),
    ("salient3000", 3000, {}),
    ("salient3000-aw5", 3000, {"loss_weights": {"alignment": 5.0}}),
    # recipe 3 (2026-11-27): negatives with as many video tokens as the sentence's own, the new rows seeded;
    # the same defaults as salient*, so these rows differ from those only by the recipe
    ("r3-300", 300, {}),
    ("r3-3000", 3000, {}),
    ("r3-10000", 10000, {}),
    ("r3-3000-sr0", 3000, {"salient_rate": 0.0}),  # every text-video example teaches alignment
    # recipe 4 (2026-11-27): the contrastive alignment loss (model.contrastive_alignment_loss). Every setting spelt
    # out, as these rows ran (the defaults moved after them). n: alignment_group, b: batch_size; um: the groups'
    # rows shown whole (mask_groups=False); sr1: salient_rate=1; cw05: the contrastive loss at weight 0.5 (the
    # sweep passes loss_weights={} otherwise: weight 1); gs: group_salient. r4-n8b24-um-sr1-cw05 is today's default.
    ("r4-binary", 300, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32}),  # recipe 3's draws
    ("r4-n6b24", 300, {"batch_size": 24, "alignment_group": 6, "salient_rate": 0.5, "mask_groups": True}),
    ("r4-n6b24-um", 300, {"batch_size": 24, "alignment_group": 6, "salient_rate": 0.5, "mask_groups": False}),
    ("r4-n8b16-um", 300, {"batch_size": 16, "alignment_group": 8, "salient_rate": 0.5, "mask_groups": False}),
    ("r4-n6b24-um-sr1", 300, {"batch_size": 24, "alignment_group": 6, "salient_rate": 1.0, "mask_groups": False}),
    ("r4-n6b24-um-sr1-cw05", 300, {"batch_size": 24, "alignment_group": 6, "salient_rate": 1.0, "mask_groups": False,
                                   "loss_weights": {"alignment_contrastive": 0.5}}),
    ("r4-n8b24-um-sr1-cw05", 300, {"batch_size": 24, "alignment_group": 8, "salient_rate": 1.0, "mask_groups": False,
                                   "loss_weights": {"alignment_contrastive": 0.5}}),
    ("r4-n8b24-um-sr1-cw05-gs", 300, {"batch_size": 24, "alignment_group": 8, "salient_rate": 1.0, "mask_groups": False,
                                      "group_salient": True, "loss_weights": {"alignment_contrastive": 0.5}}),
    # recipe 4 on a device, several training seeds (TRAIN_SEED): what moves held-out alignment towards 0.8 without
    # costing the zero-shot rows? C: today's contrastive settings (n8 b24 sr1 cw05 um), varied one knob at a time
    ("r5-C", 300, C),
    ("r5-C-cw1", 300, {**C, "loss_weights": {"alignment_contrastive": 1.0}}),
    ("r5-C-cw2", 300, {**C, "loss_weights": {"alignment_contrastive": 2.0}}),
    ("r5-C-cw1-aw0", 300, {**C, "loss_weights": {"alignment_contrastive": 1.0, "alignment": 0.0}}),  # InfoNCE alone
    ("r5-C-n6", 300, {**C, "alignment_group": 6}),
    ("r5-C-n4b16", 300, {**C, "alignment_group": 4, "batch_size": 16}),
    ("r5-C-b32", 300, {**C, "batch_size": 32}),
    ("r5-C-sr075", 300, {**C, "salient_rate": 0.75}),
    ("r5-C-lr1e-3", 300, {**C, "lr": 1e-3}),
    ("r5-C-tv24", 300, {**C, "regime_weights": {"text": 1.0, "video": 1.0, "text_video": 24.0}}),
    ("r5-C-pt03", 300, {**C, "pair_text_rate": 0.3}),
    ("r5-C-600", 600, C),
    ("r5-C-1000", 1000, C),
    ("r5-C-3000", 3000, C),
    ("r5-binary", 300, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32}),
    # visual rows anchored to the cooking words they co-occur with (PretrainSettings.word_anchor), binary and C
    ("r6-wa05", 300, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32, "word_anchor": 0.5}),
    ("r6-wa025", 300, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32, "word_anchor": 0.25}),
    ("r6-wa1", 300, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32, "word_anchor": 1.0}),
    ("r6-C-wa05", 300, {**C, "word_anchor": 0.5}),
    ("r6-C-wa1", 300, {**C, "word_anchor": 1.0}),
    ("r6-C-wa1-600", 600, {**C, "word_anchor": 1.0}),
    ("r6-wa05-400", 400, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32, "word_anchor": 0.5}),
    ("r6-wa1-600", 600, {"alignment_loss": "binary", "salient_rate": 0.5, "batch_size": 32, "word_anchor": 1.0}),
    # recipe 4's contrastive settings over today's defaults (word_anchor 0.5, the cpu profile's 400 steps)
    ("r6-C-wa05-400", 400, {**C, "word_anchor": 0.5}),
] + [(name, steps, {**BEFORE, **kw}) for name, steps, kw in [
    ("base300", 300, {}),
    ("mean300", 300, {"pooling": "mean"}),
    ("mean1000", 1000, {"pooling": "mean"}),
    ("cls1000", 1000, {}),
    ("mean300-lr1e-3", 300, {"pooling": "mean", "lr": 1e-3}),
    ("mean1000-tv8", 1000, {"pooling": "mean", "regime_weights": TV8}),
    ("mean1000-pt015", 1000, {"pooling": "mean", "pair_text_rate": 0.15}),
    ("mean3000", 3000, {"pooling": "mean"}),
    ("tv8-lr1e-3-300", 300, {"pooling": "mean", "lr": 1e-3, "regime_weights": TV8}),
    ("tv8-lr2e-3-300", 300, {"pooling": "mean", "lr": 2e-3, "regime_weights": TV8}),
    ("tv16-lr1e-3-300", 300, {"pooling": "mean", "lr": 1e-3, "regime_weights": TV16}),
    ("tv8-lr1e-3-300-cls", 300, {"lr": 1e-3, "regime_weights": TV8}),
    ("tv8-lr1e-3-300-pt03", 300, {"pooling": "mean", "lr": 1e-3, "regime_weights": TV8, "pair_text_rate": 0.3}),
    ("tv8-lr1e-3-600", 600, {"pooling": "mean", "lr": 1e-3, "regime_weights": TV8}),
    ("tv8-1000", 1000, {"pooling": "mean", "regime_weights": TV8}),
]]
SETTINGS = [(name, steps, kw if name.startswith(("r4-", "r5-", "r6-")) else {**BINARY, **kw}) for name, steps, kw in SETTINGS]
# every row before r6 ran with the centroid rows alone (word_anchor became 0.5 by default after them)
SETTINGS = [(name, steps, kw if name.startswith("r6-") else {"word_anchor": 0.0, **kw}) for name, steps, kw in SETTINGS]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main(data_dirs: list[str]) -> list[dict]:
    out = Path(os.environ.get("OUT", "build/studies"))
    out.mkdir(parents=True, exist_ok=True)
    device, scale = os.environ.get("DEVICE", "cuda"), float(os.environ.get("SCALE", "1"))
    budget, t0 = float(os.environ.get("BUDGET", "inf")), time.time()
    train_seed = int(os.environ.get("TRAIN_SEED", "0"))  # added to the run's seed: the batches' draws change
    use_saved_stages()
    tokenizer = load_wordpiece()
    rows, priors = [], {}
    only = [n for n in os.environ.get("ROWS", "").split(",") if n]
    unknown = sorted(set(only) - {name for name, _, _ in SETTINGS})
    if unknown:
        raise SystemExit(f"ROWS names unknown settings {unknown}; choose from {[name for name, _, _ in SETTINGS]}")
    by_name = {name: (name, steps, setting) for name, steps, setting in SETTINGS}
    for name, full_steps, setting in [by_name[n] for n in only] if only else SETTINGS:
        for data_dir in data_dirs:
            if time.time() - t0 > budget:
                print(f"skipped {name} on {data_dir}: budget spent", flush=True)
                continue
            kw = dict(setting)
            steps = max(2, int(full_steps * scale))
            run = open_folder(data_dir, device)
            heldout = evaluate.heldout_segments(run)
            lr, layers = kw.pop("lr", run.profile.pretrain_lr), kw.pop("num_layers", 0)
            config = pretrain.default_train_config(run, max_steps=steps, lr=lr, progress=False, checkpoint_every=steps,
                                                   loss_weights=kw.pop("loss_weights", {}), seed=run.seed + train_seed)
            folder = out / "runs" / f"{Path(data_dir).name}-{name}{f'-t{train_seed}' if train_seed else ''}"
            started = time.time()
            settings = pretrain.default_settings(run, regime_set="text_video", num_layers=layers, **kw)
            model, _ = pretrain.pretrain(run, settings, config, folder)
            seconds = time.time() - started
            key = (data_dir, steps, lr, layers)
            if os.environ.get("PRIOR", "1") == "0":  # no text-only prior (its fields are null): saves its run
                priors[key] = dict.fromkeys(("verb_top1", "noun_top1", "verb_top5"))
            if key not in priors:
                text = pretrain.default_settings(run, regime_set="text", num_layers=layers)
                prior_model, _ = pretrain.pretrain(run, text, config, Path(f"{folder}-text"))
                priors[key] = evaluate.zero_shot_accuracy(prior_model, tokenizer, heldout, use_video=False)
            cross = evaluate.zero_shot_accuracy(model, tokenizer, heldout, use_video=True)
            scores, labels = evaluate.alignment_scores(model, evaluate.alignment_examples(model.config, heldout, seed=0,
                                                                                          tokenizer=tokenizer))
            align = ((scores > 0).long() == labels).float().mean().item()  # = evaluate.alignment_accuracy
            auc = float(roc_auc_score(labels.numpy(), scores.numpy()))  # as align_threshold.py
            prior = priors[key]
            row = dict(data=Path(data_dir).name, name=name, train_seed=train_seed, steps=steps, lr=lr,
                       seconds=round(seconds, 1), align=round(align, 3), align_auc=round(auc, 3),
                       cross_v=round(cross["verb_top1"], 3), cross_n=round(cross["noun_top1"], 3),
                       prior_v=_r(prior["verb_top1"]), prior_n=_r(prior["noun_top1"]),
                       cross_v5=round(cross["verb_top5"], 3), prior_v5=_r(prior["verb_top5"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "pretrain_sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
