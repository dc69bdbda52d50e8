"""What the studies share: opening a TinyCook folder as the course left it."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import vbert_lab


def open_folder(data_dir: str | Path, device: str = "cpu", profile: str = "cpu"):
    """A :class:`vbert_lab.session.Run` on ``data_dir`` with the folder's own seed and its JSON files taken as ready.

    The seed must be the folder's (``tinycook.json``): with another, the
    pipeline's fingerprints no longer match the derived stages, and the next
    ``ensure_*`` would silently rebuild them (seen: a seed-1 folder's
    extractor, features and tokens retrained with seed 0 by a "read-only"
    study). ``_data_ready``: the videos need not be there.
    """
    seed = int(json.loads((Path(data_dir) / "tinycook.json").read_text())["seed"])
    run = vbert_lab.setup(profile, device, str(data_dir), seed)
    run._data_ready = True
    return run


def use_saved_stages() -> None:
    """Read the codebooks and token files as they are on disk (made, with the videos, elsewhere): a folder of
    the JSON files and ``derived/{codebook,tokens}`` is enough, and nothing is rebuilt."""
    from vbert_lab import pipeline
    from vbert_lab.kmeans import HierarchicalKMeans

    pipeline.ensure_codebook = lambda run, modality="visual", **kw: HierarchicalKMeans.load(
        run.stage_dir("codebook") / modality, device="cpu")
    pipeline.ensure_tokens = lambda run, **kw: run.stage_dir("tokens")


def course_model(data_dir: str | Path):
    """The course's pretrained VideoBERT of a folder as notebook 07 left it, in eval mode, with what reading it needs.

    Returns ``(run, tokenizer, model, heldout, train_steps)``: the held-out
    (validation and testing) and the training steps as
    :func:`vbert_lab.evaluate.heldout_segments` gives them.
    """
    from vbert_lab import evaluate, pretrain
    from vbert_lab.text import load_wordpiece

    use_saved_stages()
    run = open_folder(data_dir, "cpu")
    model = pretrain.ensure_pretrained(run, "text_video").model.eval()
    return (run, load_wordpiece(), model, evaluate.heldout_segments(run),
            evaluate.heldout_segments(run, subsets=("training",)))


def append_row(path: str | Path, row: dict) -> list[dict]:
    """Append ``row`` to the JSON list in ``path`` (created if absent) and return the list.

    Studies run side by side (one process per seed) append to one file: the
    read, append and write happen under an exclusive lock on ``<path>.lock``,
    and the file is replaced atomically, so no process's row is lost and a
    reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(path.read_text()) if path.is_file() else []
        rows.append(row)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        os.replace(tmp, path)
    return rows
