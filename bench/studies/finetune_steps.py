"""Issue #8: the course's own fine-tuning (``finetune.ensure_finetuned``) of the action task at 10 % of the labels,
with overrides of its settings, over 3 seeds: does the pretrained model need more steps than the profile gave it?

    python -m bench.studies.finetune_steps /tmp/s0 '{"steps": 80}'

As ``prompt_finetune``, give it a *copy* of a course folder (the JSON files, ``derived/{codebook,tokens}`` and, to
skip pretraining, ``derived/pretrain/text_video-100pct``): the fine-tuning runs are written into it. A JSON row is
printed per call and appended to ``$OUT/finetune_steps.json``. Results of 2026-11-27 (2-core CPU):
``finetune_steps_cpu.json`` (``MODES``: a comma-separated subset of the modes to run).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.studies._common import append_row, open_folder, use_saved_stages
from vbert_lab import finetune


def main(data_dir: str, overrides: dict, fraction: float = 0.1) -> dict:
    use_saved_stages()
    run = open_folder(data_dir, os.environ.get("DEVICE", "cpu"))
    row = {"data": Path(data_dir).name, "overrides": overrides, "fraction": fraction}
    for mode in [m for m in os.environ.get("MODES", ",".join(finetune.MODES)).split(",") if m]:  # MODES: a subset
        values = []
        for seed in finetune.seeds_of(run, 3):
            settings = finetune.default_settings(run, "action", mode, fraction, True, seed, **overrides)
            values.append(finetune.ensure_finetuned(run, settings=settings, keep_model=False, load_model=False).accuracy)
        row[mode] = {"mean": round(sum(values) / len(values), 3), "values": [round(v, 3) for v in values], "steps": settings.steps}
        print(mode, row[mode], flush=True)
    append_row(Path(os.environ.get("OUT", "build/studies")) / "finetune_steps.json", row)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
