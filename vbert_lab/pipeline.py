"""The course's stages as one-line helpers: each loads its result from disk or builds it.

Notebooks from 05 on call these so that each runs on its own in a fresh
kernel, reusing what an earlier notebook wrote under ``<DATA_DIR>/derived``:

- :func:`ensure_codebook`: the visual (or audio) vocabulary, hierarchical
  k-means fit on the *training* videos' clip features only, sized by the
  profile (``kmeans_k``, ``kmeans_depth``), in ``derived/codebook/<modality>``.
  Taught in ``05_visual_and_audio_tokens``.
- :func:`ensure_tokens`: one token file per video (visual and audio token per
  clip, the narration's sentences as WordPiece ids aligned to clips) in
  ``derived/tokens``. Taught in ``06_text_and_multimodal_sequences``.
- :func:`model_config`: the :class:`~vbert_lab.model.VideoBertConfig` of
  MiniLM plus these codebooks' sizes.
- :func:`pretraining_examples`: the three regimes' examples (text-only,
  video-only, text-video with aligned and misaligned pairs), with the paper's
  noise, ready for :class:`~vbert_lab.sequences.Collator`.

Orchestration only: the logic lives in ``features``, ``kmeans``, ``text`` and
``sequences``. A stage's folder holds a fingerprint of what it was built from;
a stale folder (other features, other sizes) is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from . import features as _features
from . import sequences as _seq
from .kmeans import HierarchicalKMeans
from .model import VideoBertConfig

__all__ = [
    "MODALITIES",
    "REGIMES",
    "video_subsets",
    "clip_features",
    "ensure_codebook",
    "ensure_tokens",
    "load_tokens",
    "model_config",
    "pretraining_examples",
]

MODALITIES = ("visual", "audio")
REGIMES = ("text", "video", "text_video")
TOKENS_INDEX = "tokens.json"


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def video_subsets(run) -> dict[str, str]:
    """``{video id: "training" | "validation" | "testing"}`` of this run's TinyCook. Taught in ``05_visual_and_audio_tokens``."""
    from .tinycook import load_annotations

    return {v: info["subset"] for v, info in load_annotations(run.tinycook())["database"].items()}


def clip_features(run, modality: str = "visual", progress: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """Every clip's feature of one modality, ``(tensor (N, D), manifest rows)``, extracted first where needed.

    Taught in ``05_visual_and_audio_tokens``.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r}: choose one of {MODALITIES}")
    X, rows = _features.ensure_features(run, audio=True, progress=progress)
    if modality == "audio":
        X, rows = _features.load_features(run.stage_dir("features"), kind="audio")
    return X, rows


def _codebook_size(run, modality: str) -> tuple[int, int]:
    p = run.profile
    return (p.kmeans_k, p.kmeans_depth) if modality == "visual" else (p.audio_kmeans_k, p.audio_kmeans_depth)


def ensure_codebook(run, modality: str = "visual", force: bool = False, progress: bool = False) -> HierarchicalKMeans:
    """The ``modality`` ("visual" or "audio") vocabulary of this run, from ``derived/codebook/<modality>``.

    Fit (and saved) where absent, stale or ``force``: hierarchical k-means
    with the profile's ``k``/``depth`` on the clip features of the *training*
    videos only (validation and testing videos are never seen), seeded with
    ``run.seed``. ``codebook.json`` carries a ``"fit"`` entry with the
    fingerprint of those features and sizes; a saved codebook whose
    fingerprint differs is refit. Taught in ``05_visual_and_audio_tokens``.
    """
    X, rows = clip_features(run, modality, progress=progress)
    subset = video_subsets(run)
    train = torch.tensor([subset.get(r["video"]) == "training" for r in rows])
    X_train = X[train]
    k, depth = _codebook_size(run, modality)
    fit = {"modality": modality, "k": k, "depth": depth, "seed": run.seed, "n_clips": int(X_train.shape[0]),
           "features": _fingerprint(X_train)}
    folder = run.stage_dir("codebook") / modality
    meta_path = folder / "codebook.json"
    if not force and meta_path.is_file():
        try:
            saved = json.loads(meta_path.read_text()).get("fit")
        except json.JSONDecodeError:
            saved = None
        if saved == fit:
            return HierarchicalKMeans.load(folder, device=run.device)
    if X_train.shape[0] < k**depth:
        raise ValueError(f"{modality} codebook: {X_train.shape[0]} training clips but k**depth = {k}**{depth} = {k**depth} "
                         f"words; lower kmeans_k/kmeans_depth in the profile {run.profile.name!r} or use more videos")
    km = HierarchicalKMeans(k=k, depth=depth, seed=run.seed, device=run.device).fit(X_train)
    km.save(folder)
    meta = json.loads(meta_path.read_text())
    meta["fit"] = fit
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return km


def ensure_tokens(run, force: bool = False, progress: bool = False) -> Path:
    """This run's token files, one ``<video>.tokens.json`` per video (every split), in ``derived/tokens``.

    Visual and audio tokens per clip come from :func:`ensure_codebook`'s
    codebooks (tree descent); the narration becomes sentences
    (:func:`~vbert_lab.text.sentences_from_captions`) with WordPiece ids
    (MiniLM's vocabulary) and clip ranges (:func:`~vbert_lab.text.align_to_clips`;
    clip ``i`` spans ``[1.5 i, 1.5 (i + 1))`` s, checked against the features'
    manifest). ``tokens.json`` records each video's subset and a fingerprint
    of the codebooks; a stale folder is rewritten. Returns the folder.
    Taught in ``06_text_and_multimodal_sequences``.
    """
    from .text import CLIP_SECONDS, load_wordpiece, sentences_from_captions
    from .tinycook import load_captions

    books = {m: ensure_codebook(run, m, progress=progress) for m in MODALITIES}
    folder = run.stage_dir("tokens")
    wordpiece = load_wordpiece()
    stamp = _fingerprint({m: json.loads((run.stage_dir("codebook") / m / "codebook.json").read_text()).get("fit") for m in MODALITIES},
                         wordpiece.vocab_size, CLIP_SECONDS)
    index_path = folder / TOKENS_INDEX
    if not force and index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == stamp and all((folder / f"{v}.tokens.json").is_file() for v in index["videos"]):
            return folder
    for old in folder.glob("*.tokens.json"):
        old.unlink()
    index_path.unlink(missing_ok=True)
    tokens = {}
    for m in MODALITIES:
        X, rows = clip_features(run, m)
        tokens[m] = (books[m].predict(X).cpu().tolist(), rows)
    captions = load_captions(run.tinycook())
    subsets = video_subsets(run)
    by_video: dict[str, dict[str, list]] = {}
    for m, (ids, rows) in tokens.items():
        for t, r in zip(ids, rows):
            by_video.setdefault(r["video"], {}).setdefault(m, []).append((r["clip"], t, r["start_s"]))
    for vid, per in sorted(by_video.items()):
        vis, aud = sorted(per["visual"]), sorted(per.get("audio", []))
        if [c for c, _, _ in vis] != list(range(len(vis))) or [c for c, _, _ in aud] != [c for c, _, _ in vis]:
            raise ValueError(f"{run.stage_dir('features')}: video {vid} has missing or mismatched clips; "
                             "re-extract with features.ensure_features(run, force=True)")
        if any(abs(s - CLIP_SECONDS * c) > 1e-3 for c, _, s in vis):
            raise ValueError(f"{vid}: clip start times are not {CLIP_SECONDS} s apart; the token files assume the paper's clips")
        sentences = sentences_from_captions(captions[vid]) if vid in captions else []
        vt = _seq.make_video_tokens(vid, [t for _, t, _ in vis], sentences, wordpiece, audio=[t for _, t, _ in aud],
                                    clip_seconds=CLIP_SECONDS)
        _seq.save_video_tokens(vt, folder)
    index = {"fingerprint": stamp, "videos": {v: subsets.get(v, "unknown") for v in sorted(by_video)},
             "n_visual_tokens": books["visual"].n_leaves, "n_audio_tokens": books["audio"].n_leaves}
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return folder


def load_tokens(run, subset: str | None = None) -> list[_seq.VideoTokens]:
    """The token files of ``subset`` ("training", "validation", "testing"; ``None``: all), built first where needed.

    Taught in ``06_text_and_multimodal_sequences``.
    """
    folder = ensure_tokens(run)
    videos = json.loads((folder / TOKENS_INDEX).read_text())["videos"]
    if subset is not None and subset not in set(videos.values()):
        raise ValueError(f"subset={subset!r}: the token files hold {sorted(set(videos.values()))}")
    return [_seq.load_video_tokens(folder / f"{v}.tokens.json") for v, s in sorted(videos.items()) if subset in (None, s)]


def model_config(run, audio: bool = True, **overrides) -> VideoBertConfig:
    """MiniLM's sizes with this run's codebooks: ``n_visual_tokens`` (and ``n_audio_tokens`` with ``audio``),
    three token types (text, video, audio). ``overrides`` win. Taught in ``06_text_and_multimodal_sequences``.
    """
    from .hf import _read_config, bert_config_to_videobert, minilm_path

    hf = _read_config(minilm_path())
    args = dict(n_visual_tokens=ensure_codebook(run, "visual").n_leaves,
                n_audio_tokens=ensure_codebook(run, "audio").n_leaves if audio else 0,
                type_vocab_size=max(3, hf.get("type_vocab_size", 2)))
    args.update(overrides)
    return bert_config_to_videobert(hf, **args)


def pretraining_examples(run, subset: str = "training", config: VideoBertConfig | None = None, seed: int | None = None,
                         audio: bool | None = None, max_len: int | None = None, p_join: float = 0.5, max_join: int = 3,
                         max_stride: int = 5, p_misaligned: float = 0.5) -> dict[str, list[dict]]:
    """The three regimes' examples from ``subset``'s token files: ``{"text", "video", "text_video"}``.

    The paper's noise first: neighbouring sentence segments joined
    (:func:`~vbert_lab.sequences.join_neighbours`, ``p_join``, up to
    ``max_join``), video (and audio) tokens subsampled with a random stride
    1..``max_stride`` (:func:`~vbert_lab.sequences.subsample_stride`). Then
    ``"text"``: ``[CLS] words [SEP]`` per segment with text; ``"video"``:
    ``[CLS] [>] video [SEP]`` per segment (text-less 16-clip ones included);
    ``"text_video"``: ``[CLS] words [>] video [SEP]`` with an
    ``"alignment_label"`` (1 aligned, 0 another video's tokens,
    ``p_misaligned``) and ``"segment"``, the sentence's own
    :class:`~vbert_lab.sequences.TokenSegment` before the noise (pretraining
    draws the pair and the noise again for every batch from it:
    ``PretrainSettings.fresh_pairs``). Audio tokens follow the video where ``audio`` (default:
    when ``config.n_audio_tokens``). Each example is a
    :func:`~vbert_lab.sequences.build_sequence` dict plus ``"video_id"``, ready
    for :class:`~vbert_lab.sequences.Collator`. Deterministic for ``seed``
    (default ``run.seed``). Taught in ``06_text_and_multimodal_sequences``.
    """
    config = model_config(run) if config is None else config
    audio = bool(config.n_audio_tokens) if audio is None else audio
    if audio and not config.n_audio_tokens:
        raise ValueError("audio=True but the config has n_audio_tokens=0; build it with model_config(run, audio=True)")
    rng = random.Random(run.seed if seed is None else seed)
    segments = []
    for video in load_tokens(run, subset):
        segments += _seq.join_neighbours(_seq.segments_of(video), rng, p_join, max_join)
    noisy, source = [], {}
    for s in segments:
        visual, stride, offset = _seq.subsample_stride(s.visual, rng, max_stride)
        sound = s.audio[offset::stride] if (audio and s.audio) else None
        noisy.append(_seq.TokenSegment(s.video_id, s.text, visual, sound))
        source[id(noisy[-1])] = s if audio else _seq.TokenSegment(s.video_id, s.text, s.visual, None)

    def example(seg, text=True, video=True, label=None):
        ex = _seq.build_sequence(config, seg.text if text else (), seg.visual if video else (),
                                 seg.audio if video else None, max_len)
        ex["video_id"] = seg.video_id
        if label is not None:
            ex["alignment_label"] = label
        return ex

    with_text = [s for s in noisy if s.text]
    pairs = []
    for (pair, y), own in zip(_seq.alignment_pairs(with_text, rng, p_misaligned), with_text):
        if pair.visual:
            ex = example(pair, label=y)
            ex["segment"] = source[id(own)]  # the sentence's own segment before the noise: for pairs drawn per batch
            pairs.append(ex)
    return {
        "text": [example(s, video=False) for s in with_text],
        "video": [example(s, text=False) for s in noisy if s.visual],
        "text_video": pairs,
    }
