"""What the studies share: opening a TinyCook folder as the course left it."""

from __future__ import annotations

import json
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
