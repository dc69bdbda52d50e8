"""Issue #4: how good can the offline TinyCook3D extractor's features get with more training?

Two steps, so that the training can run on a machine the videos were not copied to:

    python -m bench.studies.extractor_sweep dump data/tinycook-cpu-s0 build/studies/clips.npz
    OUT=build/studies python -m bench.studies.extractor_sweep run build/studies/clips.npz

``dump`` decodes the clips (15 frames at 64 px, as the extractor sees them) of
the 48 extractor videos (training), 40 probe videos and 40 held-out videos
with their verb / noun / scene targets into one compressed file (35 MB for
the cpu profile). ``run`` trains TinyCook3D with each setting
(:func:`vbert_lab.features._fit`, the notebook's own loop) and scores its
features with a logistic-regression probe fit on the probe videos and
measured on the held-out ones; rows go to ``$OUT/extractor_sweep.json``.
``DEVICE`` (default cuda); ``ROWS`` (comma-separated setting names; default all). Results of 2026-11-26 on
an H100 (the ``mean`` rows): ``extractor_sweep_h100.json``; of 2026-11-27 on the 2-core CPU (``e16``,
``e16-max``, ``e32-max``): ``extractor_sweep_cpu.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vbert_lab import features as F

SETTINGS = [  # (name, epochs, lr, batch size, pooling: TinyCook3DConfig.pooling)
    ("e16", 16, 3e-3, 32, "mean"),  # the cpu profile's setting until 2026-11-27
    ("e32", 32, 3e-3, 32, "mean"),
    ("e64", 64, 3e-3, 32, "mean"),
    ("e32-bs16", 32, 3e-3, 16, "mean"),
    ("e32-lr1e-2", 32, 1e-2, 32, "mean"),
    ("e32-lr1e-3", 32, 1e-3, 32, "mean"),
    ("e64-bs16", 64, 3e-3, 16, "mean"),
    ("e16-max", 16, 3e-3, 32, "max"),  # average over time, maximum over space
    ("e32-max", 32, 3e-3, 32, "max"),  # the cpu profile's setting since 2026-11-27
]


def dump(data_dir: str, path: str) -> None:
    data_dir = Path(data_dir)
    split = F.extractor_split(data_dir, 48, seed=0)
    config = F.TinyCook3DConfig()
    arrays = {}
    for name, videos in (("train", split["extractor"]), ("probe", split["probe"][:40]), ("heldout", split["heldout"][:40])):
        clips, verbs, nouns, scenes = F._training_clips(data_dir, videos, config, 2, None, False)
        arrays.update({f"{name}_x": clips.numpy(), f"{name}_v": verbs.numpy(), f"{name}_n": nouns.numpy(), f"{name}_s": scenes.numpy()})
        print(name, tuple(clips.shape), flush=True)
    np.savez_compressed(path, **arrays)


def run(path: str) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    out = Path(os.environ.get("OUT", "build/studies"))
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(os.environ.get("DEVICE", "cuda"))
    z = np.load(path)
    data = {k: torch.from_numpy(z[k]) for k in z.files}

    def embed(model, x):
        model.eval().to(dev)
        with torch.no_grad():
            return torch.cat([model(F._prepare_train(model, x[i:i + 128].to(dev))).float().cpu() for i in range(0, len(x), 128)]).numpy()

    def probe(model) -> dict:
        a, b = embed(model, data["probe_x"]), embed(model, data["heldout_x"])
        scores = {}
        for key in ("v", "n", "s"):
            ya, yb = data[f"probe_{key}"].numpy(), data[f"heldout_{key}"].numpy()
            ma, mb = ya != -100, yb != -100
            clf = LogisticRegression(max_iter=2000).fit(a[ma], ya[ma])
            scores[key] = round(float((clf.predict(b[mb]) == yb[mb]).mean()), 3)
        return scores

    only = [n for n in os.environ.get("ROWS", "").split(",") if n]
    unknown = sorted(set(only) - {row[0] for row in SETTINGS})
    if unknown:
        raise SystemExit(f"ROWS names unknown settings {unknown}; choose from {[row[0] for row in SETTINGS]}")
    torch.manual_seed(0)
    rows = [dict(name="untrained", **probe(F.TinyCook3D(F.TinyCook3DConfig(pooling="mean"))))]
    for name, epochs, lr, batch, pooling in [row for row in SETTINGS if not only or row[0] in only]:
        started = time.time()
        torch.manual_seed(0)
        model, history = F._fit(F.TinyCook3D(F.TinyCook3DConfig(pooling=pooling)).to(dev), data["train_x"],
                                (data["train_v"], data["train_n"], data["train_s"]), dev, epochs, batch, lr, 0.05, 0, False)
        rows.append(dict(name=name, epochs=epochs, lr=lr, bs=batch, pooling=pooling, train_s=round(time.time() - started, 1),
                         train_verb_acc=round(history[-1]["verb_acc"], 3), **probe(model)))
        print(json.dumps(rows[-1]), flush=True)
        (out / "extractor_sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    {"dump": lambda: dump(*sys.argv[2:4]), "run": lambda: run(sys.argv[2])}[sys.argv[1]]()
