"""Pretraining VideoBERT on TinyCook: the model, the regimes' loaders, and cached runs.

Taught in ``07_videobert_pretraining``. Orchestration only: the loop is
:func:`vbert_lab.train.train`, the examples come from
:func:`vbert_lab.pipeline.pretraining_examples`, the model from
:func:`vbert_lab.hf.load_bert`.

- :func:`build_model`: the packaged MiniLM (all-MiniLM-L6-v2) with the joint
  vocabulary extended by the codebooks' visual (and audio) tokens, their
  embeddings initialised from the k-means centroids, as in the paper, then
  (not the paper's, :attr:`PretrainSettings.word_anchor`) the visual rows
  turned half way towards the cooking words each co-occurs with in the
  training narration (:func:`word_counts`,
  :meth:`~vbert_lab.model.VideoBert.anchor_visual_embeddings`). The
  profile may keep only MiniLM's first ``pretrain_layers`` layers, so that the
  ``cpu`` profile trains in minutes (the paper used all 24 of BERT-large).
  MiniLM ships no MLM head: the head starts untrained (see
  :mod:`vbert_lab.evaluate` for what that means for the BERT-prior row).
- :data:`REGIME_SETS`: which regimes a run mixes. ``"text"`` is the language
  prior (TinyCook's narration only), ``"video"`` masked visual tokens only,
  ``"text_video"`` is VideoBERT: text-only, video-only and text-video with
  linguistic-visual alignment, mixed by :attr:`PretrainSettings.regime_weights`.
  Two departures from the paper, both settings, and a third on offer: salient-word masking
  (:attr:`PretrainSettings.salient_rate`) and misaligned pairs that teach
  alignment only (:attr:`PretrainSettings.mask_negatives`), without which the
  model learns to guess a masked verb from the words beside it and never
  reads the video (``bench/studies/video_probe.py``); and a contrastive
  alignment loss over groups of sentences and videos
  (:attr:`PretrainSettings.alignment_loss`, not the default: with the binary
  loss the alignment head stays at chance, with it the head learns but the
  zero-shot rows lose and a step costs twice as much;
  ``bench/studies/pretrain_sweep_cpu_r4.json``).
- :func:`pretrain_loaders`: one :class:`~vbert_lab.train.ResumableLoader`
  per regime over the training videos (``fraction`` of them, for the data
  scaling study), each with its own masking :class:`~vbert_lab.sequences.Collator`.
- :func:`ensure_pretrained`: train once, then reuse. A run lives in
  ``<DATA_DIR>/derived/pretrain/<regime_set>-<percent>pct``; a finished
  checkpoint made with the same settings and tokens is loaded instead of
  trained again; an interrupted one is resumed; one made with other settings
  is replaced.

CLI: ``vbert-lab pretrain --config FILE`` with a JSON file
``{"data": {...PretrainSettings and profile, seed, data_dir, device}, "train": {...TrainConfig}, "out": "DIR"}``
(every key optional; see :func:`load_pretrain_config`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .model import VideoBert, VideoBertConfig
from .train import ResumableLoader, TrainConfig, TrainResult, claim_run_dir, latest_checkpoint, read_json_object, train

__all__ = [
    "REGIME_SETS",
    "PretrainSettings",
    "Pretrained",
    "default_settings",
    "default_train_config",
    "build_model",
    "truncate_layers",
    "training_videos",
    "pretrain_loaders",
    "salient_token_ids",
    "pretrain",
    "ensure_pretrained",
    "load_pretrain_config",
    "run_dir",
]

REGIME_SETS: dict[str, tuple[str, ...]] = {
    "text": ("text",),  # the language prior: narration only
    "video": ("video",),  # masked visual tokens only
    "text_video": ("text", "video", "text_video"),  # VideoBERT: the three regimes, alignment on the pooled state
}
SETTINGS_FILE = "pretrain.json"
# Bumped whenever the same settings come to mean different training (how pairs are drawn or masked, say), so that
# ensure_pretrained does not reuse a run made by the earlier code. 2: salient-word rows only for sentences with one.
# 3: negatives carry as many video tokens as the sentence's own segment; the model's new rows start from run.seed.
# (The contrastive alignment loss came later as a new setting; with alignment_loss="binary", recipe 3's draws.)
RECIPE_VERSION = 3


@dataclass
class PretrainSettings:
    """What a pretraining run is trained on and how big its model is (the ``"data"`` part of a config file).

    ``0`` (or ``None``) means the profile's value. Taught in ``07_videobert_pretraining``.
    """

    regime_set: str = "text_video"  # a key of REGIME_SETS
    fraction: float = 1.0  # share of the training videos used (the data scaling study: 0.1, 0.25, 0.5, 1)
    num_layers: int = 0  # keep MiniLM's first num_layers layers (0: the profile's pretrain_layers)
    batch_size: int = 0  # examples per step (0: the profile's pretrain_batch)
    max_len: int = 0  # longest sequence in tokens (0: the profile's pretrain_max_len)
    audio: bool = False  # audio tokens after a second [>] in the video and text-video regimes
    text_rate: float = 0.15  # masking rate of words (BERT's 15 %)
    video_rate: float = 0.15  # masking rate of visual (and audio) tokens
    pair_text_rate: float = 0.5  # masking rate of words in the text-video regime: more words to guess from the video
    # the paper's noise: video tokens subsampled with a random stride 1..max_stride (the paper: 5; a TinyCook
    # sentence spans about 3 clips, so a stride of 5 would leave one token), neighbouring sentences joined (p_join)
    max_stride: int = 2
    p_join: float = 0.5
    # what the alignment head reads: "cls" (the paper's) or "mean" (see VideoBertConfig.pooling). "mean" here:
    # MiniLM's [CLS] attends almost only to itself, and the alignment gradient through it is too weak to change that
    # (bench/studies/cls_probe.py: [CLS]'s state barely varies across pairs); the mean reads every position
    pooling: str = "mean"
    # text-video pairs: True draws each batch's negatives (another video's tokens, p = 0.5) and stride noise
    # afresh; False keeps the pairs drawn once (notebook 06's), with which every sentence always carries the same
    # label, so the alignment head can learn the labels from the words alone and never look at the video
    fresh_pairs: bool = True
    # salient-word masking (not the paper's; REALM's "salient spans"): salient_rate of the text-video examples whose
    # sentence has salient words show it with its own video and every salient word masked at once, so that only the video can tell them;
    # they teach no alignment (their label is ignored: masked words next to a true video would be a give-away).
    # Salient words: salient_words, or, when empty, TinyCook's verbs and ingredients (the cooking vocabulary the
    # zero-shot template asks for). Needs fresh_pairs.
    salient_rate: float = 0.5
    salient_words: list[str] = field(default_factory=list)
    # masked tokens of misaligned pairs (label 0) are predicted too (False: only alignment is learnt from them,
    # as in UNITER: their words predicted from another video's tokens would teach the model to ignore the video;
    # they are masked all the same, so that masks do not tell the pairs apart)
    mask_negatives: bool = False
    # how alignment is learnt: "binary" (the paper's: each pair aligned or not, negatives drawn with p = 0.5) or
    # "contrastive": the first alignment_group sentences of distinct videos in a text-video batch (at most half of
    # it) are each shown with every one's video (alignment_group ** 2 pairs) and must pick their own among them, and
    # each video its sentence (model.contrastive_alignment_loss); the batch's other sentences are salient-word rows
    # or binary pairs as before. With the binary loss the head stays at chance on TinyCook (held-out 0.48 / 0.52,
    # seeds 0 / 1); with this one (and salient_rate=1, batch_size=24) it learns, 0.74 / 0.72 at 300 steps, but the
    # zero-shot rows lose on average and a text-video step costs twice as much: notebooks 07 + 08 took 21.5 minutes
    # on the cpu profile, over the course's 20 (bench/studies/README.md, pretrain_sweep_cpu_r4.json). Not the default.
    alignment_loss: str = "binary"
    alignment_group: int = 8
    # the groups' rows masked like the other pairs (their diagonal's masked tokens predicted) or shown whole (False:
    # alignment only, as the held-out pairs are shown; masked, held-out alignment stayed at 0.54)
    mask_groups: bool = False
    # the groups drawn from sentences that name a salient word only (a sentence of filler words matches no video;
    # it left fewer salient-word rows, and the zero-shot rows fell: pretrain_sweep.py's "-gs" row)
    group_salient: bool = False
    # the visual rows start from the centroids (the paper's: 0) or this far towards the salient (cooking) words each
    # token co-occurs with in the training narration (VideoBert.anchor_visual_embeddings, weighted by PPMI; the
    # narration pretraining reads anyway, no labels). 0.5: cross-modal verb top-1 +5 / +8 points on seeds 0 / 1
    # (means over three training seeds on a GPU), +6 / +4 on the CPU; noun +2 / 0 (GPU), +2.5 / +2.5 (CPU); 1.0 and 0.25 gained less
    # (bench/studies/pretrain_sweep_h200_r6.json)
    word_anchor: float = 0.5
    # one regime per step, drawn with these weights: most steps are text-video, the only regime that ties words to video
    regime_weights: dict[str, float] = field(default_factory=lambda: {"text": 1.0, "video": 1.0, "text_video": 12.0})

    def __post_init__(self):
        if self.regime_set not in REGIME_SETS:
            raise ValueError(f"regime_set={self.regime_set!r}: choose one of {sorted(REGIME_SETS)}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction={self.fraction} must be in (0, 1]")
        for name in ("num_layers", "batch_size", "max_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0: the profile's value)")
        for name in ("text_rate", "video_rate", "pair_text_rate", "salient_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.alignment_loss not in ("binary", "contrastive"):
            raise ValueError(f"alignment_loss={self.alignment_loss!r}: choose 'binary' or 'contrastive'")
        if self.alignment_group < 2:
            raise ValueError(f"alignment_group={self.alignment_group} must be >= 2 (sentences ranked against one another)")
        if self.alignment_loss == "contrastive" and not self.fresh_pairs:
            raise ValueError("alignment_loss='contrastive' draws its groups with the pairs, which needs fresh_pairs=True; "
                             "with fresh_pairs=False set alignment_loss='binary'")
        self.regime_weights = {k: float(v) for k, v in self.regime_weights.items()}
        self.salient_words = [str(w) for w in self.salient_words]
        if self.salient_rate > 0 and not self.fresh_pairs:
            raise ValueError(f"salient_rate={self.salient_rate} draws its examples with the pairs, which needs fresh_pairs=True; "
                             "with fresh_pairs=False set salient_rate=0")

    @property
    def regimes(self) -> tuple[str, ...]:
        return REGIME_SETS[self.regime_set]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Pretrained:
    """What :func:`ensure_pretrained` returns."""

    model: VideoBert
    out_dir: Path  # the run's folder: train_config.json, metrics.jsonl, checkpoints/, pretrain.json
    checkpoint: Path  # the checkpoint the weights come from (a VideoBert.from_pretrained folder)
    settings: PretrainSettings
    config: TrainConfig
    trained: bool  # False when a finished run on disk was reused

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


# --------------------------------------------------------------------------- sizes


def default_settings(run, **overrides) -> PretrainSettings:
    """:class:`PretrainSettings` with the profile's sizes filled in; ``overrides`` win."""
    p = run.profile
    s = PretrainSettings(**overrides)
    return replace(s, num_layers=s.num_layers or p.pretrain_layers, batch_size=s.batch_size or p.pretrain_batch,
                   max_len=s.max_len or p.pretrain_max_len)


def default_train_config(run, **overrides) -> TrainConfig:
    """The profile's :class:`~vbert_lab.train.TrainConfig` for pretraining; ``overrides`` win."""
    p = run.profile
    steps = int(overrides.get("max_steps", p.pretrain_steps))
    # the contrastive alignment loss (when used) at half weight: at full weight the zero-shot rows fell further
    # (pretrain_sweep.py, r4 rows); the binary loss has no such term, so this weight changes nothing there
    args = dict(max_steps=steps, lr=p.pretrain_lr, warmup_steps=max(1, steps // 10), decay="cosine",
                min_lr_ratio=0.1, weight_decay=0.01, seed=run.seed, device=run.device,
                checkpoint_every=max(1, steps // 2), keep_last=1, log_every=1,
                loss_weights={"alignment_contrastive": 0.5})
    args.update(overrides)
    return TrainConfig(**args)


# --------------------------------------------------------------------------- the model


def truncate_layers(model: VideoBert, num_layers: int) -> VideoBert:
    """Keep the first ``num_layers`` encoder layers of ``model`` (in place; returns it)."""
    if not 1 <= num_layers <= len(model.blocks):
        raise ValueError(f"num_layers={num_layers}: the model has {len(model.blocks)} layers; keep 1..{len(model.blocks)}")
    model.blocks = torch.nn.ModuleList(list(model.blocks)[:num_layers])
    model.config.num_layers = num_layers
    return model


def build_model(run, settings: PretrainSettings | None = None, checkpoint: str | os.PathLike | None = None) -> VideoBert:
    """MiniLM extended with this run's visual and audio tokens, centroid-initialised, cut to ``settings.num_layers``.

    ``checkpoint``: a BERT folder (default: the packaged MiniLM). What the
    checkpoint lacks (the MLM transform, the alignment head) starts from
    ``run.seed``: the same run builds the same model in any process. Taught in
    ``07_videobert_pretraining``.
    """
    from .hf import MissingHeadWarning, load_bert, minilm_path
    from .pipeline import ensure_codebook, model_config

    settings = settings or default_settings(run)
    # the rows and heads MiniLM lacks start from run.seed, not from wherever the process's global generator stands
    # (two runs with the same settings in two processes used to start apart: a language prior's top-1 moved 6 points);
    # the caller's generator is left as it was (loading the clip extractor on the way initialises a network too)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        cfg = model_config(run, audio=True)  # audio rows always: settings.audio decides whether sequences carry them
        torch.manual_seed(run.seed)
        warnings.simplefilter("ignore", MissingHeadWarning)  # MiniLM has no MLM head: it starts untrained (documented)
        model = load_bert(checkpoint or minilm_path(), n_visual_tokens=cfg.n_visual_tokens, n_audio_tokens=cfg.n_audio_tokens,
                          type_vocab_size=cfg.type_vocab_size, pooling=settings.pooling)
        if settings.num_layers:
            truncate_layers(model, settings.num_layers)
        model.init_visual_embeddings(ensure_codebook(run, "visual").leaf_centroids.cpu())
        model.init_audio_embeddings(ensure_codebook(run, "audio").leaf_centroids.cpu())
        if settings.word_anchor:
            # the cooking vocabulary only: with every word, the narration's fillers ("okay", "good") weigh most
            words = sorted(set(salient_token_ids(settings)))
            model.anchor_visual_embeddings(word_counts(run, model.config, words, settings.fraction), words, settings.word_anchor)
    return model


def word_counts(run, config: VideoBertConfig, word_ids, fraction: float = 1.0) -> torch.Tensor:
    """``(n_visual_tokens, len(word_ids))``: in how many training segments (of ``fraction``'s videos) each visual
    token and each of the words appear together (the sentence's WordPieces against its clips' tokens).
    Taught in ``07_videobert_pretraining``."""
    from .pipeline import load_tokens
    from .sequences import segments_of

    column = {int(w): j for j, w in enumerate(word_ids)}
    if len(column) != len(word_ids):
        raise ValueError(f"word_ids repeat a word ({len(word_ids)} ids, {len(column)} distinct): each column counts one "
                         f"word; pass sorted(set(word_ids))")
    keep = set(training_videos(run, fraction))
    counts = torch.zeros(config.n_visual_tokens, len(column), dtype=torch.float64)
    for video in load_tokens(run, "training"):
        if video.video_id not in keep:
            continue
        for seg in segments_of(video):
            said = sorted({column[w] for w in seg.text if w in column})
            tokens = sorted({int(v) for v in seg.visual})
            if said and tokens:
                counts[torch.tensor(tokens)[:, None], torch.tensor(said)[None, :]] += 1
    return counts


# --------------------------------------------------------------------------- data


def training_videos(run, fraction: float = 1.0) -> list[str]:
    """The training videos a run with ``fraction`` sees: a seeded random ``ceil(fraction * n)`` of them.

    Nested: the videos of a smaller fraction are among those of a larger one.
    """
    from .pipeline import video_subsets

    videos = sorted(v for v, s in video_subsets(run).items() if s == "training")
    order = torch.randperm(len(videos), generator=torch.Generator().manual_seed(run.seed + 7919)).tolist()
    n = max(1, math.ceil(fraction * len(videos) - 1e-9))
    return sorted(videos[i] for i in order[:n])


class _PretrainCollator:
    """:class:`~vbert_lab.sequences.Collator` that masks at least one token per batch.

    A short batch can draw no mask at 15 %; its masked-token loss would be the
    mean of nothing (NaN), which the loop rightly refuses. Then one maskable
    token, drawn from the same seeded generator, becomes ``[MASK]``.
    """

    def __init__(self, config: VideoBertConfig, salient_ids=(), mask_negatives: bool = True, mask_groups: bool = True, **kw):
        from .sequences import Collator

        self.inner = Collator(config, mask=True, **kw)
        self.config = config
        self.salient_ids = torch.as_tensor(sorted({int(i) for i in salient_ids}), dtype=torch.long)
        self.mask_negatives = bool(mask_negatives)
        self.mask_groups = bool(mask_groups)

    @property
    def generator(self) -> torch.Generator:  # re-seeded by ResumableLoader before each batch
        return self.inner.generator

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from .model import IGNORE_INDEX

        salient = torch.tensor([bool(e.get("salient", False)) for e in examples])
        original = [e["input_ids"] for e in examples]
        batch = self.inner(examples)
        grouped = torch.zeros(len(examples), dtype=torch.bool)
        if "alignment_group" in examples[0]:
            batch["alignment_groups"] = torch.tensor([int(e["alignment_group"]) for e in examples], dtype=torch.long)
            grouped = batch["alignment_groups"] >= 0
        labels = batch["mlm_labels"]
        aligned = batch.get("alignment_labels")
        unmask = grouped.any() and not self.mask_groups
        if aligned is not None and (not self.mask_negatives or salient.any() or unmask):
            ids = torch.full_like(batch["input_ids"], self.config.pad_token_id)
            for b, row in enumerate(original):
                ids[b, : len(row)] = row
            if unmask:  # the groups' rows teach alignment only, shown whole as held-out pairs are
                batch["input_ids"][grouped] = ids[grouped]
                labels[grouped] = IGNORE_INDEX
            if not self.mask_negatives:  # a misaligned pair's masked tokens are not predicted; they stay masked,
                labels[aligned == 0] = IGNORE_INDEX  # or "no [MASK] in sight" would give its label away
            if salient.any():  # every salient word masked and predicted; the alignment label ignored
                where = salient.unsqueeze(1) & torch.isin(ids, self.salient_ids)
                batch["input_ids"] = torch.where(where, torch.full_like(ids, self.config.mask_token_id), batch["input_ids"])
                labels[where] = ids[where]
                aligned[salient] = IGNORE_INDEX
        if (labels == IGNORE_INDEX).all():
            cfg = self.config
            special = torch.tensor([cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id,
                                    *(cfg.special_token_id(t) for t in cfg.special_tokens)])
            maskable = ~torch.isin(batch["input_ids"], special)
            if unmask and (maskable & ~grouped.unsqueeze(1)).any():  # not in a group shown whole, where there is a choice
                maskable &= ~grouped.unsqueeze(1)
            maskable = maskable.nonzero()
            if len(maskable):
                b, t = maskable[int(torch.randint(len(maskable), (1,), generator=self.generator))].tolist()
                labels[b, t] = batch["input_ids"][b, t]
                batch["input_ids"][b, t] = cfg.mask_token_id
        return batch


class _PairCollator(_PretrainCollator):
    """Text-video batches whose pairs are drawn afresh each time (``PretrainSettings.fresh_pairs``).

    With ``group = n >= 2`` (``alignment_loss="contrastive"``), the batch's first
    ``n`` sentences of distinct videos form a group: each is shown with every
    one's video tokens (its own on the diagonal, label 1; the others cut or
    repeated to its own number of tokens, label 0), ``n * n`` rows, row-major,
    first in the batch, with ``alignment_groups`` (see
    :func:`vbert_lab.model.contrastive_alignment_loss`). For each other
    sentence: if it has salient words, with probability ``salient_rate`` a
    salient-word row (its own video, every salient word masked, alignment
    label ignored); otherwise, with probability ``p_misaligned``, the tokens of
    a segment of another video, cut or repeated to its own number of tokens
    (:func:`~vbert_lab.sequences.misaligned_segment`; label 0), else its own
    (label 1). Then the paper's stride noise (a random stride
    1..``max_stride``) on every row. All draws come from the collator's
    generator, which :class:`~vbert_lab.train.ResumableLoader` re-seeds before
    each batch, so a resumed run draws the same pairs.
    """

    def __init__(self, config: VideoBertConfig, pool: list, max_len: int | None, max_stride: int,
                 p_misaligned: float = 0.5, salient_rate: float = 0.0, group: int = 0, group_salient: bool = False, **kw):
        super().__init__(config, **kw)
        self.pool, self.max_len, self.max_stride, self.p_misaligned = pool, max_len, max(1, int(max_stride)), p_misaligned
        self.salient_rate = float(salient_rate) if len(self.salient_ids) else 0.0
        self.group = int(group)
        self.group_salient = bool(group_salient) and len(self.salient_ids) > 0

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (), generator=self.generator))

    def _has_salient(self, segment) -> bool:
        return bool(torch.isin(torch.as_tensor(segment.text, dtype=torch.long), self.salient_ids).any())

    def _row(self, own, shown, label: int, salient: bool = False, group: int = -1) -> dict:
        """The sequence of ``own``'s sentence with ``shown``'s tokens, after the paper's stride noise."""
        from .sequences import build_sequence

        stride = 1 + self._draw(self.max_stride)
        offset = self._draw(stride) if len(shown.visual) > stride else 0
        audio = shown.audio[offset::stride] if shown.audio else None
        row = build_sequence(self.config, own.text, shown.visual[offset::stride], audio, self.max_len)
        row["alignment_label"], row["salient"] = label, salient
        if self.group >= 2:
            row["alignment_group"] = group
        return row

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from .sequences import misaligned_segment

        square, rest = [], []
        for e in examples:
            own = e["segment"]
            if (len(square) < self.group and all(own.video_id != s.video_id for s in square)
                    and (not self.group_salient or self._has_salient(own))):
                square.append(own)
            else:
                rest.append(own)
        if len(square) < 2:  # one video in the whole batch: no group, binary pairs only
            square, rest = [], [*square, *rest]
        rows = [self._row(own, own if i == j else misaligned_segment(own, other, self._draw), int(i == j), group=0)
                for i, own in enumerate(square) for j, other in enumerate(square)]
        for own in rest:
            shown, label = own, 1
            salient = self.salient_rate > 0 and float(torch.rand((), generator=self.generator)) < self.salient_rate
            salient = salient and self._has_salient(own)
            if not salient and float(torch.rand((), generator=self.generator)) < self.p_misaligned:
                for _ in range(16):  # another video's segment; the pool always holds some (checked when built)
                    other = self.pool[self._draw(len(self.pool))]
                    if other.video_id != own.video_id:  # as many video tokens as its own: no length give-away
                        shown, label = misaligned_segment(own, other, self._draw), 0
                        break
            rows.append(self._row(own, shown, label, salient))
        return super().__call__(rows)


def salient_token_ids(settings: PretrainSettings) -> list[int]:
    """WordPiece ids of ``settings.salient_words`` (default: TinyCook's verbs and ingredients), one per word.

    A word that splits into several WordPieces raises ``ValueError``: it
    could not be masked, nor ranked by the zero-shot template, as one token.
    """
    from .evaluate import label_token_ids
    from .text import load_wordpiece
    from .tinycook import INGREDIENTS, VERBS

    return label_token_ids(load_wordpiece(), settings.salient_words or [*VERBS, *INGREDIENTS])


def pretrain_loaders(run, config: VideoBertConfig, settings: PretrainSettings, seed: int | None = None) -> dict[str, ResumableLoader]:
    """One :class:`~vbert_lab.train.ResumableLoader` per regime of ``settings.regime_set``, over the chosen training videos.

    Taught in ``07_videobert_pretraining``.
    """
    from .pipeline import pretraining_examples

    seed = run.seed if seed is None else seed
    examples = pretraining_examples(run, "training", config=config, seed=seed, audio=settings.audio,
                                    max_len=settings.max_len or None, max_stride=settings.max_stride, p_join=settings.p_join)
    keep = set(training_videos(run, settings.fraction))
    loaders = {}
    for i, regime in enumerate(settings.regimes):
        rows = [e for e in examples[regime] if e["video_id"] in keep]
        if not rows:
            raise ValueError(f"regime {regime!r}: no examples in {len(keep)} training video(s) (fraction={settings.fraction})")
        text_rate = settings.pair_text_rate if regime == "text_video" else settings.text_rate
        rates = dict(text_rate=text_rate, video_rate=settings.video_rate, audio_rate=settings.video_rate, seed=seed + i)
        if regime == "text_video":
            rates.update(salient_ids=salient_token_ids(settings) if settings.salient_rate > 0 else (),
                         mask_negatives=settings.mask_negatives, mask_groups=settings.mask_groups)
        if regime == "text_video" and settings.fresh_pairs:
            pool = [e["segment"] for e in rows]
            if len({seg.video_id for seg in pool}) < 2:
                raise ValueError(f"text-video pairs need >= 2 training videos with narration (fraction={settings.fraction})")
            # at most half the batch's sentences: the other half are the rows that predict words from the video
            group = min(settings.alignment_group, settings.batch_size // 2) if settings.alignment_loss == "contrastive" else 0
            collate = _PairCollator(config, pool, settings.max_len or None, settings.max_stride,
                                    salient_rate=settings.salient_rate, group=group, group_salient=settings.group_salient,
                                    **rates)
        else:
            collate = _PretrainCollator(config, **rates)
        loaders[regime] = ResumableLoader(rows, min(settings.batch_size, len(rows)), collate, seed=seed + 100 + i)
    return loaders


# --------------------------------------------------------------------------- runs


def run_dir(run, regime_set: str = "text_video", fraction: float = 1.0) -> Path:
    """``<DATA_DIR>/derived/pretrain/<regime_set>-<percent>pct``."""
    return run.stage_dir("pretrain") / f"{regime_set}-{round(fraction * 100):03d}pct"


def _fingerprint(run, settings: PretrainSettings, config: TrainConfig) -> dict:
    from .pipeline import ensure_tokens

    tokens = json.loads((ensure_tokens(run) / "tokens.json").read_text()).get("fingerprint")
    train = {k: v for k, v in config.to_dict().items() if k not in ("resume", "progress", "device", "log_every", "eval_every")}
    return {"settings": settings.to_dict(), "train": train, "tokens": tokens, "profile": run.profile.name, "seed": run.seed,
            "recipe": RECIPE_VERSION}


def pretrain(run, settings: PretrainSettings, config: TrainConfig, out_dir: str | os.PathLike,
             evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None) -> tuple[VideoBert, TrainResult]:
    """Build the model and its loaders and run :func:`vbert_lab.train.train` into ``out_dir``.

    Taught in ``07_videobert_pretraining``.
    """
    model = build_model(run, settings)
    loaders = pretrain_loaders(run, model.config, settings, seed=config.seed)
    weights = {r: settings.regime_weights.get(r, 1.0) for r in loaders}
    config = replace(config, regime_weights=weights) if not config.regime_weights else config
    result = train(model, loaders, config, out_dir, evaluate=evaluate)
    return model.eval(), result


def ensure_pretrained(run, regime_set: str = "text_video", fraction: float = 1.0, settings: PretrainSettings | None = None,
                      config: TrainConfig | None = None, evaluate: Callable | None = None, force: bool = False,
                      progress: bool = True) -> Pretrained:
    """A pretrained VideoBERT for ``regime_set`` on ``fraction`` of the training videos: loaded if done, else trained.

    The run's folder (:func:`run_dir`) keeps ``pretrain.json``: the settings,
    the training config and the token files' fingerprint. A finished run with
    the same ``pretrain.json`` is reused; an unfinished one is resumed from its
    last checkpoint; a different one (or ``force``) is deleted and trained
    afresh. Taught in ``07_videobert_pretraining``.
    """
    settings = settings or default_settings(run, regime_set=regime_set, fraction=fraction)
    config = config or default_train_config(run, progress=progress)
    weights = {r: settings.regime_weights.get(r, 1.0) for r in settings.regimes}
    if not config.regime_weights:
        config = replace(config, regime_weights=weights)
    out_dir, stamp = claim_run_dir(run_dir(run, settings.regime_set, settings.fraction),
                                   _fingerprint(run, settings, config), SETTINGS_FILE, force)
    last = latest_checkpoint(out_dir)
    done = last is not None and int(last.name.split("-")[1]) >= config.max_steps
    if done:
        model = VideoBert.from_pretrained(last, map_location=run.device).eval()
        return Pretrained(model, out_dir, last, settings, config, trained=False)
    (out_dir / SETTINGS_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    model, result = pretrain(run, settings, replace(config, resume=True), out_dir, evaluate=evaluate)
    return Pretrained(model, out_dir, result.checkpoint, settings, config, trained=True)


# --------------------------------------------------------------------------- the config file

_DATA_KEYS = {"profile", "seed", "data_dir", "device"}


def load_pretrain_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``vbert-lab pretrain --config FILE``: ``{"data": {...}, "train": {...}, "out": "DIR"}``.

    ``data``: ``profile``, ``seed``, ``data_dir``, ``device`` and any
    :class:`PretrainSettings` field; ``train``: any
    :class:`~vbert_lab.train.TrainConfig` field (unset ones: the profile's);
    ``out``: the run folder (default: :func:`run_dir`). An unknown key or a bad
    value raises ``ValueError`` naming the file and the key. Returns
    ``{"run", "settings", "train": dict, "out"}``.
    """
    import vbert_lab

    path = Path(path)
    raw = read_json_object(path, "pretraining config", "a pretraining config is a JSON object with keys 'data', 'train', 'out'")
    unknown = sorted(set(raw) - {"data", "train", "out"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a pretraining config has 'data', 'train' and 'out'")
    data, train_d = raw.get("data", {}), raw.get("train", {})
    for key, value in (("data", data), ("train", train_d)):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: key {key!r} should be a JSON object, got {type(value).__name__}")
    setting_names = {f.name for f in fields(PretrainSettings)}
    unknown = sorted(set(data) - setting_names - _DATA_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) data.{', data.'.join(unknown)}; known: {sorted(setting_names | _DATA_KEYS)}")
    train_names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train_d) - train_names)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) train.{', train.'.join(unknown)}; known: {sorted(train_names)}")
    try:
        run = vbert_lab.setup(data.get("profile", ""), data.get("device", ""), data.get("data_dir", ""), data.get("seed", 0))
        settings = default_settings(run, **{k: v for k, v in data.items() if k in setting_names})
        TrainConfig(**train_d)  # validate now, with the file's name in the message
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    return {"run": run, "settings": settings, "train": train_d, "out": raw.get("out")}
