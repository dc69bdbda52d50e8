"""Prepared corpora: a real data set (YouCook2, HowTo100M videos) in TinyCook's layout, for the same pipeline.

A folder with ``corpus.json`` beside ``annotations.json`` (YouCook2 layout:
the videos and their ``training``/``validation``/``testing`` subsets),
``captions.json`` (HowTo100M layout: the narration, or the step sentences)
and ``videos/`` is a prepared corpus. :func:`vbert_lab.setup` opens it as it
opens a TinyCook folder, except that nothing is generated and the clip
features come from a named extractor instead of one trained on TinyCook's
hidden labels, which a real corpus does not have. From there the visual
words, token files and pretraining (notebooks 05-07, ``vbert-lab pretrain``)
run unchanged; the zero-shot and fine-tuning lessons need TinyCook's labels.

``corpus.json``::

    {"name": "youcook2", "extractor": "s3d", "weights": null}

``extractor``: a name of :data:`vbert_lab.features.EXTRACTORS`; ``weights``:
what :func:`vbert_lab.features.load_extractor` takes (``null``: the
extractor's default, for ``s3d`` the Kinetics-400 weights), a relative path
being relative to the folder. ``data_scripts/youcook2.py prepare`` writes it.
Taught in ``10_efficiency_and_scale``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CORPUS_FILE", "CorpusError", "read_corpus", "write_corpus", "from_tinycook"]

CORPUS_FILE = "corpus.json"
_REQUIRED = ("annotations.json", "captions.json", "videos")


class CorpusError(ValueError):
    """A prepared corpus folder that the pipeline cannot open as it is."""


def read_corpus(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``corpus.json``, checked (weights resolved to a path), or ``None`` for a TinyCook folder."""
    from .features import EXTRACTORS
    from .train import read_json_object

    folder = Path(data_dir)
    path = folder / CORPUS_FILE
    if not path.is_file():
        return None
    shape = 'it should be an object such as {"name": "youcook2", "extractor": "s3d", "weights": null}'
    spec = read_json_object(path, "prepared corpus description", shape)
    unknown = sorted(set(spec) - {"name", "extractor", "weights"})
    if unknown:
        raise CorpusError(f"{path}: unknown key(s) {unknown}; a corpus.json holds name, extractor and weights")
    extractor = spec.get("extractor", "s3d")
    if extractor not in EXTRACTORS:
        raise CorpusError(f"{path}: extractor {extractor!r} is not one of {', '.join(EXTRACTORS)}; "
                          "name the network that should embed its clips")
    missing = [name for name in _REQUIRED if not (folder / name).exists()]
    if missing:
        raise CorpusError(f"{folder}: a prepared corpus needs {', '.join(_REQUIRED)}; missing: {', '.join(missing)}. "
                          "Run data_scripts/youcook2.py prepare (or write them in TinyCook's layout)")
    weights = spec.get("weights")
    if weights not in (None, "random", "kinetics400"):
        weights = str((folder / str(weights)).resolve()) if not Path(str(weights)).is_absolute() else str(weights)
    return {"name": str(spec.get("name", folder.name)), "extractor": extractor, "weights": weights}


def write_corpus(out_dir: str | os.PathLike, name: str, extractor: str = "s3d", weights: str | None = None) -> Path:
    """Write ``corpus.json`` into ``out_dir`` (which should already hold the files :func:`read_corpus` checks)."""
    path = Path(out_dir) / CORPUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "extractor": extractor, "weights": weights}, indent=2) + "\n")
    read_corpus(out_dir)  # the same checks a reader will make
    return path


def from_tinycook(data_dir: str | os.PathLike, out_dir: str | os.PathLike, video_ids: list[str] | None = None,
                  name: str = "tinycook-as-corpus", extractor: str = "tinycook3d", weights: str | os.PathLike | None = "random",
                  subset: str = "training") -> Path:
    """A prepared corpus made of TinyCook videos, as a download would bring them: a stand-in to walk the real path offline.

    ``out_dir`` gets links to the videos (copies where links fail), their
    ``annotations.json`` entries with every video in ``subset`` (a new corpus is
    all for pretraining), their narration (``captions.json``) and
    ``corpus.json``; never the hidden ``labels.json``. ``video_ids``: which
    videos (default all). Taught in ``10_efficiency_and_scale``.
    """
    import shutil

    from .tinycook import load_annotations, load_captions

    source, folder = Path(data_dir), Path(out_dir)
    database = load_annotations(source)["database"]
    chosen = sorted(database) if video_ids is None else list(video_ids)
    unknown = [v for v in chosen if v not in database]
    if unknown:
        raise CorpusError(f"{source}: no video(s) {unknown[:5]} in annotations.json")
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    for vid in chosen:
        video = next(source.joinpath("videos").glob(f"{vid}.*"))
        target = folder / "videos" / video.name
        if not target.exists():
            try:
                target.symlink_to(video.resolve())
            except OSError:
                shutil.copy2(video, target)
    kept = {v: dict(database[v], subset=subset) for v in chosen}
    (folder / "annotations.json").write_text(json.dumps({"database": kept}) + "\n")
    captions = load_captions(source)
    (folder / "captions.json").write_text(json.dumps({v: captions[v] for v in chosen if v in captions}) + "\n")
    return write_corpus(folder, name, extractor=extractor, weights=None if weights is None else str(weights)).parent

