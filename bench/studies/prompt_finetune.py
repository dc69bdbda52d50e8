"""Issue #8: does the pretrained model beat the same model from scratch at 10 % of the action labels?

The course's fine-tuning (notebook 09) puts a fresh classifier on the pooled
state and finds no gain from pretraining (0.40 fine-tuned against 0.41 from
scratch, cpu profile, seed 0). This study asks whether the head is the
reason. It compares two heads, with one training loop for every mode:

* ``pooled``: the course's, a fresh linear classifier on the mean-pooled
  state (``[CLS] [>] video [>] audio [SEP]``);
* ``prompt``: prompt-based fine-tuning (PET, LM-BFF): the zero-shot template
  of notebook 08 goes before the video, ``[CLS] now let me show you how to
  [MASK] the [MASK] [>] video [>] audio [SEP]``. The class logits are the MLM
  head's logits for the 15 verbs at the first mask, so a pretrained model
  starts from its zero-shot answer.

For each head: ``finetuned`` (from the pretrained model), ``scratch`` (the
same architecture, random weights), and for ``prompt`` the zero-shot
accuracy before any label. Each mode is run over 3 seeds (the label subset
and the order of the batches); the best validation evaluation is kept and
the test accuracy is reported.

The pretraining is the course's text-video run with the overrides in
``PRETRAIN`` (JSON, e.g. ``{"audio": true}``). It is trained, or loaded,
inside the data folder. So give the study a *copy* of a course folder: the
JSON files and ``derived/{codebook,tokens}``. A course folder's own
pretraining would be replaced.

    PRETRAIN='{"audio": true}' OUT=build/studies python -m bench.studies.prompt_finetune /tmp/s0 /tmp/s1

``FRACTION`` (default 0.1), ``STEPS`` (80), ``LR`` (3e-4; scratch 5e-4, the
profile's) and ``DEVICE`` (cpu) are read from the environment. Rows are
appended to ``$OUT/prompt_finetune.json``. Results of 2026-11-27 (2-core
CPU): ``prompt_finetune_cpu.json``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.studies._common import append_row, open_folder, use_saved_stages
from vbert_lab import evaluate, finetune, pretrain
from vbert_lab.model import VideoBert
from vbert_lab.sequences import Collator, build_sequence
from vbert_lab.text import load_wordpiece
from vbert_lab.tinycook import VERBS


def examples(run, config, words) -> dict[str, list[dict]]:
    """Every labelled step of each subset as ``[CLS] words [>] visual [>] audio [SEP]``, labelled with its verb."""
    out = {}
    for subset in finetune.SUBSETS:
        rows = []
        for seg, lab in finetune._labelled_segments(run, subset):
            ex = build_sequence(config, words, seg.visual, seg.audio)
            ex.update(label=VERBS.index(lab.verb))
            rows.append(ex)
        out[subset] = rows
    return out


class Head:
    """Verb logits of a batch: the MLM head at the template's verb mask (``prompt``) or a classifier on the pool."""

    def __init__(self, kind: str, config, mask_at: int, verb_ids: torch.Tensor):
        self.kind, self.collate, self.at, self.verb_ids = kind, Collator(config, mask=False), mask_at, verb_ids

    def __call__(self, model: VideoBert, rows: list[dict]) -> torch.Tensor:
        device = next(model.parameters()).device
        batch = self.collate(rows)
        batch.pop("alignment_labels", None)
        batch = {k: v.to(device) for k, v in batch.items()}
        if self.kind == "pooled":
            return model(**batch).logits
        hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return model.mlm_head(hidden[:, self.at], model.embeddings.word.weight)[:, self.verb_ids.to(device)]


@torch.no_grad()
def accuracy(model: VideoBert, head: Head, rows: list[dict]) -> float:
    model.eval()
    got = torch.cat([head(model, rows[i : i + 64]).argmax(-1).cpu() for i in range(0, len(rows), 64)])
    return float((got == torch.tensor([r["label"] for r in rows])).float().mean())


def fit(model: VideoBert, head: Head, rows: dict, train: list[dict], steps: int, lr: float, seed: int) -> float:
    """AdamW on batches of 16 drawn from ``train``; validation every 10 steps; the test accuracy of the best."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    best, state = -1.0, None
    for step in range(1, steps + 1):
        model.train()
        batch = [train[i] for i in torch.randint(len(train), (16,), generator=g).tolist()]
        labels = torch.tensor([r["label"] for r in batch], device=next(model.parameters()).device)
        loss = F.cross_entropy(head(model, batch), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 and (v := accuracy(model, head, rows["validation"])) > best:
            best, state = v, copy.deepcopy(model.state_dict())
    model.load_state_dict(state)
    return accuracy(model, head, rows["testing"])


def study(data_dir: str, overrides: dict, fraction: float, steps: int, lr: float, device: str) -> dict:
    run = open_folder(data_dir, device)
    started = time.time()
    pre = pretrain.ensure_pretrained(run, settings=pretrain.default_settings(run, **overrides), progress=False)
    pretrain_s = time.time() - started
    tokenizer = load_wordpiece()
    words, where = evaluate.template_ids(tokenizer)
    verb_ids = torch.tensor(evaluate.label_token_ids(tokenizer, VERBS))
    config = replace(pre.model.config, num_labels=len(VERBS), pooling=run.profile.finetune_pooling)
    row = {"data": Path(data_dir).name, "pretrain": overrides, "pretrain_seconds": round(pretrain_s, 1),
           "fraction": fraction, "steps": steps, "lr": lr}
    for kind, prefix in (("pooled", ()), ("prompt", words)):
        rows = examples(run, config, prefix)
        head = Head(kind, config, 1 + where[0], verb_ids)
        seeds = finetune.seeds_of(run, 3)
        row["n_train"] = len(finetune.label_subset(rows["training"], fraction, seed=seeds[0]))
        if kind == "prompt":
            row["prompt.zeroshot"] = round(accuracy(pre.model.to(device), head, rows["testing"]), 3)
        for mode in ("finetuned", "scratch"):
            values = []
            for seed in seeds:
                torch.manual_seed(seed)
                model = VideoBert(config)
                if mode == "finetuned":
                    missing, _ = model.load_state_dict(pre.model.state_dict(), strict=False)
                    assert sorted(missing) == ["classifier.bias", "classifier.weight"], missing
                train = finetune.label_subset(rows["training"], fraction, seed=seed)
                values.append(fit(model.to(device), head, rows, train, steps, lr if mode == "finetuned" else
                                  run.profile.finetune_scratch_lr, seed))
            row[f"{kind}.{mode}"] = round(sum(values) / len(values), 3)
            row[f"{kind}.{mode}.values"] = [round(v, 3) for v in values]
            print(f"{row['data']} {kind} {mode}: {row[f'{kind}.{mode}']} {row[f'{kind}.{mode}.values']}", flush=True)
    return row


def main(data_dirs: list[str]) -> list[dict]:
    out = Path(os.environ.get("OUT", "build/studies"))
    out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(os.environ.get("PRETRAIN", "{}"))
    fraction, steps = float(os.environ.get("FRACTION", "0.1")), int(os.environ.get("STEPS", "80"))
    lr, device = float(os.environ.get("LR", "3e-4")), os.environ.get("DEVICE", "cpu")
    use_saved_stages()
    rows = []
    for data_dir in data_dirs:
        rows.append(study(data_dir, overrides, fraction, steps, lr, device))
        print(json.dumps(rows[-1]), flush=True)
        append_row(out / "prompt_finetune.json", rows[-1])
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
