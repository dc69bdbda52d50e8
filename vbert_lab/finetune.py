"""Fine-tuning VideoBERT: action, scene and mood classification of TinyCook's steps.

Taught in ``09_fine_tuning``. Orchestration only: the loop is
:func:`vbert_lab.train.train` (the course's one loop, as in pretraining), the
model :class:`~vbert_lab.model.VideoBert` with its ``num_labels`` classifier on
the pooled state (loss ``"classification"``), the sequences
:func:`~vbert_lab.sequences.build_sequence`.

- :data:`TASKS`: task -> TinyCook hidden label (``action`` is the step's verb,
  ``scene`` the video's place, ``mood`` the narrator's mood).
- :func:`classification_examples`: one example per labelled step of a subset's
  videos, ``[CLS] [>] v1 .. vm ([>] a1 .. am) [SEP]`` over the clips the step
  covers. **No narration text**: its words name the verb, the scene and the
  mood ("i love this part"), so a text input would hand the labels over.
- :func:`label_subset`: the label fractions (5, 10, 25, 100 % ...), nested,
  stratified by class, seeded.
- :data:`MODES`: ``"scratch"`` (the same architecture, random weights),
  ``"frozen"`` (the pretrained encoder frozen; a :class:`LinearProbe` on its
  pooled features, computed once), ``"finetuned"`` (pretrained, trained end
  to end). What the classifier pools (``[CLS]`` or the mean of the tokens) and
  how many top layers are drawn afresh before fine-tuning are profile settings
  (``finetune_pooling``, ``finetune_reinit_layers``).
- :func:`ensure_finetuned`: train once, then reuse, in
  ``<DATA_DIR>/derived/finetune/<task>-<mode>-<percent>pct-<audio|noaudio>-s<seed>``:
  train on ``training``, keep the weights of the evaluation with the best
  ``validation`` accuracy, report ``testing`` (held-out videos).
  :func:`sweep` runs a grid of them, :func:`accuracy_table` averages over seeds.
- :func:`evaluate_classifier`: accuracy, predictions, confusion matrix;
  :func:`class_accuracy` on some classes (the look-alike verbs, which only
  their sound tells apart).

Two economies keep the ``cpu`` profile to minutes, the same for every mode:
the word-embedding table (30,522 WordPiece rows that no classification input
reads, besides the visual and audio rows) is not trained
(:attr:`FineTuneSettings.train_embeddings`), and a finished run keeps its
weights on disk only when asked (``keep_model``), its metrics always.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import POOLINGS, VideoBert, VideoBertConfig
from .tinycook import LOOK_ALIKE, SOUND_ALIKE
from .train import ResumableLoader, TrainConfig, claim_run_dir, latest_checkpoint, read_metrics, train

__all__ = [
    "TASKS",
    "MODES",
    "SUBSETS",
    "LOOK_ALIKE_VERBS",
    "SOUND_ALIKE_VERBS",
    "FineTuneSettings",
    "FineTuned",
    "task_classes",
    "default_settings",
    "classification_examples",
    "label_subset",
    "ClassificationCollator",
    "build_classifier",
    "pooled_features",
    "LinearProbe",
    "confusion_matrix",
    "evaluate_classifier",
    "class_accuracy",
    "finetune",
    "ensure_finetuned",
    "run_dir",
    "seeds_of",
    "sweep",
    "accuracy_table",
    "best_on_validation",
    "summarise",
    "plot_confusion",
    "plot_learning_curves",
]

TASKS: dict[str, str] = {"action": "verb", "scene": "scene", "mood": "mood"}  # task -> TinyCook hidden label
MODES = ("scratch", "frozen", "finetuned")
SUBSETS = ("training", "validation", "testing")  # train on, select on, report on
SETTINGS_FILE = "finetune.json"
RESULT_FILE = "result.json"
MODEL_DIR = "model"  # the selected weights of a scratch or fine-tuned run (a VideoBert.from_pretrained folder)
HEAD_FILE = "head.safetensors"  # a frozen run's only trained weights: the classifier
CHECKPOINT_EVERY = 100  # steps between the loop's checkpoints (and at the end): a longer run can resume


# verbs drawn from one visual distribution that differ only by sound (stir/mix, chop/dice), and the reverse
LOOK_ALIKE_VERBS = tuple(v for pair in LOOK_ALIKE for v in pair)
SOUND_ALIKE_VERBS = tuple(v for pair in SOUND_ALIKE for v in pair)


def task_classes(task: str) -> tuple[str, ...]:
    """The class names of ``task``, in label order (TinyCook's vocabulary). Taught in ``09_fine_tuning``."""
    from .tinycook import LABEL_KINDS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {sorted(TASKS)} (action = the verb, scene, mood)")
    return tuple(LABEL_KINDS[TASKS[task]])


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {list(MODES)} (scratch = random weights, frozen = linear "
                         "probe on the pretrained encoder, finetuned = pretrained and trained end to end)")
    return mode


# --------------------------------------------------------------------------- settings


@dataclass
class FineTuneSettings:
    """One fine-tuning run. ``0`` means the profile's value (see :func:`default_settings`).

    Taught in ``09_fine_tuning``.
    """

    task: str = "action"  # a key of TASKS
    mode: str = "finetuned"  # a member of MODES
    fraction: float = 1.0  # share of the training labels (a nested, stratified, seeded subset)
    audio: bool = True  # audio tokens after a second [>]
    seed: int = 0  # the label subset, the head's initial weights (all of them from scratch), the batch order
    steps: int = 0  # optimizer steps (0: the profile's; the linear probe: finetune_probe_steps)
    batch_size: int = 0  # examples per step (0: the profile's finetune_batch)
    lr: float = 0.0  # peak learning rate (0: the profile's, per mode)
    eval_every: int = 0  # validation accuracy every this many steps; the best step's weights are kept (0: steps // 10)
    train_embeddings: bool = False  # also train the (30k-row) word-embedding table: slower, no gain without text
    reinit_layers: int = -1  # pretrained modes: draw the top reinit_layers encoder layers and the pooler afresh (-1: the profile's)
    pooling: str = ""  # what the classifier reads: "cls" or "mean" (VideoBertConfig.pooling; "": the profile's)

    def __post_init__(self):
        task_classes(self.task)
        _check_mode(self.mode)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction={self.fraction} must be in (0, 1]")
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0: the profile's value)")
        if self.pooling not in ("", *POOLINGS):
            raise ValueError(f"pooling={self.pooling!r}: choose one of {POOLINGS} ('': the profile's)")
        if self.reinit_layers < -1:
            raise ValueError(f"reinit_layers={self.reinit_layers} must be >= 0 (-1: the profile's value)")
        if self.lr < 0:
            raise ValueError(f"lr={self.lr} must be >= 0 (0: the profile's value)")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        """The run's folder name: ``<task>-<mode>-<percent>pct-<audio|noaudio>-s<seed>``."""
        pct = f"{self.fraction * 100:05.1f}".replace(".", "p") if round(self.fraction * 100) != self.fraction * 100 \
            else f"{round(self.fraction * 100):03d}"
        return f"{self.task}-{self.mode}-{pct}pct-{'audio' if self.audio else 'noaudio'}-s{self.seed}"


def default_settings(run, task: str = "action", mode: str = "finetuned", fraction: float = 1.0, audio: bool = True,
                     seed: int | None = None, **overrides) -> FineTuneSettings:
    """:class:`FineTuneSettings` with the profile's sizes filled in (``seed=None``: the run's); ``overrides`` win.

    A scratch or fine-tuned run trains for ``finetune_epochs`` passes over its
    labels, at least ``finetune_min_steps`` and at most ``finetune_steps``
    optimizer steps; the linear probe for ``finetune_probe_steps``. Taught in ``09_fine_tuning``.
    """
    p = run.profile
    s = FineTuneSettings(task=task, mode=mode, fraction=fraction, audio=audio, seed=run.seed if seed is None else int(seed),
                         **overrides)
    lr = {"scratch": p.finetune_scratch_lr, "frozen": p.finetune_probe_lr, "finetuned": p.finetune_lr}[s.mode]
    batch = s.batch_size or p.finetune_batch
    if s.steps:
        steps = s.steps
    elif s.mode == "frozen":
        steps = p.finetune_probe_steps
    else:
        n = _n_train(run, s.task, s.fraction)
        steps = min(p.finetune_steps, max(p.finetune_min_steps, math.ceil(p.finetune_epochs * n / min(batch, n))))
    reinit = 0 if s.mode != "finetuned" else (p.finetune_reinit_layers if s.reinit_layers < 0 else s.reinit_layers)
    return replace(s, steps=steps, batch_size=batch, lr=s.lr or lr, eval_every=s.eval_every or max(1, steps // 10),
                   reinit_layers=reinit, pooling=s.pooling or p.finetune_pooling)


def _keep(fraction: float, n: int) -> int:
    """Examples a class of ``n`` keeps at ``fraction``: at least one."""
    return max(1, min(n, round(fraction * n)))


def _n_train(run, task: str, fraction: float) -> int:
    """Training examples of ``task`` at ``fraction`` (what :func:`label_subset` keeps), from ``labels.json``."""
    from collections import Counter

    from .tinycook import load_labels

    counts = Counter(getattr(l, TASKS[task]) for l in load_labels(run.tinycook()) if l.subset == "training")
    if not counts:
        raise ValueError(f"{run.data_dir}: no labelled training steps")
    return sum(_keep(fraction, c) for c in counts.values())


# --------------------------------------------------------------------------- examples


def classification_examples(run, task: str, subset: str, audio: bool = True,
                            config: VideoBertConfig | None = None) -> list[dict]:
    """One example per labelled step of ``subset``'s videos, labelled with ``task``'s class index.

    Each is a :func:`~vbert_lab.sequences.build_sequence` dict,
    ``[CLS] [>] v1 .. vm [>] a1 .. am [SEP]`` (no audio part without
    ``audio``), plus ``"label"`` (an index into :func:`task_classes`),
    ``"label_name"``, ``"verb"`` (for the look-alike analysis), ``"video_id"``
    and ``"start"``. The step's clips are those whose middle lies inside it
    (:func:`vbert_lab.evaluate.heldout_segments`' rule); the labels come from
    TinyCook's hidden ``labels.json``. The narration is left out on purpose:
    its words name the verb, the scene and the mood. Taught in ``09_fine_tuning``.
    """
    from .sequences import build_sequence

    classes = task_classes(task)
    if subset not in SUBSETS:
        raise ValueError(f"subset={subset!r}: choose one of {list(SUBSETS)}")
    config = _model_config(run) if config is None else config
    if audio and not config.n_audio_tokens:
        raise ValueError("audio=True but the config has n_audio_tokens=0; build it with pipeline.model_config(run, audio=True)")
    out = []
    for seg, lab in _labelled_segments(run, subset):
        name = getattr(lab, TASKS[task])
        ex = build_sequence(config, (), seg.visual, seg.audio if audio else None)
        ex.update(label=classes.index(name), label_name=name, verb=lab.verb, video_id=seg.video_id, start=seg.start)
        out.append(ex)
    return out


_SEGMENTS: dict[tuple, list] = {}
_CONFIGS: dict[tuple, VideoBertConfig] = {}


def _model_config(run) -> VideoBertConfig:
    """:func:`vbert_lab.pipeline.model_config` (audio rows included), kept in memory while the token files are unchanged."""
    from .pipeline import ensure_tokens, model_config

    index = _tokens_index(run)
    if not index.is_file():
        ensure_tokens(run)
    key = (str(run.data_dir), index.stat().st_mtime_ns)
    if key not in _CONFIGS:
        _CONFIGS[key] = model_config(run, audio=True)
    return replace(_CONFIGS[key])


def _tokens_index(run) -> Path:
    return run.stage_dir("tokens") / "tokens.json"


def _labelled_segments(run, subset: str) -> list:
    """``(HeldOutSegment, SegmentLabel)`` per labelled step of ``subset``, kept in memory while the token files are unchanged."""
    from .evaluate import heldout_segments
    from .tinycook import load_labels

    index = _tokens_index(run)
    key = (str(run.data_dir), subset, index.stat().st_mtime_ns if index.is_file() else None)
    if key[-1] is None or key not in _SEGMENTS:
        labels = {(l.video_id, round(l.start, 3)): l for l in load_labels(run.tinycook()) if l.subset == subset}
        rows = [(seg, labels[(seg.video_id, round(seg.start, 3))]) for seg in heldout_segments(run, (subset,))]
        key = (str(run.data_dir), subset, index.stat().st_mtime_ns)  # heldout_segments built the token files if needed
        _SEGMENTS[key] = rows
    return _SEGMENTS[key]


def label_subset(examples: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """A seeded ``fraction`` of ``examples``, stratified by ``"label"`` and nested.

    Each class keeps ``max(1, round(fraction * n_class))`` of its examples, the
    first ones of a per-class permutation drawn from ``seed``: so every class
    is present, and the examples of a smaller fraction are among those of a
    larger one (same seed). Returned in the original order. Taught in ``09_fine_tuning``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    by_class: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_class.setdefault(int(ex["label"]), []).append(i)
    keep = []
    for label, idx in sorted(by_class.items()):
        g = torch.Generator().manual_seed(seed * 1000 + label)
        order = torch.randperm(len(idx), generator=g).tolist()
        keep += [idx[j] for j in order[:_keep(fraction, len(idx))]]
    return [examples[i] for i in sorted(keep)]


class ClassificationCollator:
    """Pads :func:`classification_examples` into a batch of :meth:`VideoBert.forward` keyword arguments with ``labels``.

    Taught in ``09_fine_tuning``.
    """

    def __init__(self, config: VideoBertConfig):
        from .sequences import Collator

        self.inner = Collator(config, mask=False)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.inner(examples)
        batch["labels"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
        return batch


# --------------------------------------------------------------------------- models


_PRETRAINED: dict[tuple, object] = {}


def _pretrained_key(run) -> tuple:
    from .pretrain import run_dir as pretrain_dir

    folder = pretrain_dir(run, "text_video", 1.0)
    stamp = folder / "pretrain.json"
    last = latest_checkpoint(folder) if folder.is_dir() else None
    return (str(folder), stamp.stat().st_mtime_ns if stamp.is_file() else None, str(last))


def _pretrained(run):
    """:func:`vbert_lab.pretrain.ensure_pretrained` for ``"text_video"``, kept in memory while its folder is unchanged."""
    from .pretrain import ensure_pretrained

    key = _pretrained_key(run)
    if key not in _PRETRAINED:
        pre = ensure_pretrained(run, "text_video", progress=False)
        _PRETRAINED.clear()
        _PRETRAINED[_pretrained_key(run)] = pre
        return pre
    return _PRETRAINED[key]


def build_classifier(run, task: str, mode: str, seed: int = 0, reinit_layers: int = 0,
                     pooling: str | None = None) -> tuple[VideoBert, Path | None]:
    """A :class:`VideoBert` with a ``len(task_classes(task))``-way classifier, and the checkpoint it starts from.

    ``"scratch"``: the pretrained model's very architecture (MiniLM's sizes cut
    to the profile's ``pretrain_layers``, this run's visual and audio
    vocabularies), every weight drawn at random from ``seed`` (no MiniLM, no
    centroids, no pretraining). ``"frozen"`` and ``"finetuned"``: VideoBERT
    pretrained on the three regimes (:func:`vbert_lab.pretrain.ensure_pretrained`,
    a load when notebook 07 ran) with a fresh classifier drawn from ``seed``;
    its top ``reinit_layers`` encoder layers and the pooler drawn afresh too.
    ``pooling``: what the classifier reads, ``"cls"`` or ``"mean"`` (``None``:
    the profile's ``finetune_pooling``). Taught in ``09_fine_tuning``.
    """
    from .pretrain import default_settings as pretrain_settings

    n = len(task_classes(task))
    _check_mode(mode)
    pooling = pooling or run.profile.finetune_pooling
    if mode == "scratch":
        cfg = replace(_model_config(run), num_layers=pretrain_settings(run).num_layers, num_labels=n, pooling=pooling)
        torch.manual_seed(seed)
        return VideoBert(cfg), None
    pre = _pretrained(run)
    cfg = VideoBertConfig.from_dict({**pre.model.config.to_dict(), "num_labels": n, "pooling": pooling})
    torch.manual_seed(seed)
    model = VideoBert(cfg)
    missing, unexpected = model.load_state_dict(pre.model.state_dict(), strict=False)
    if unexpected or sorted(missing) != ["classifier.bias", "classifier.weight"]:
        raise RuntimeError(f"{pre.checkpoint}: loading into a classifier left {missing} missing and {unexpected} unexpected")
    if not 0 <= reinit_layers <= len(model.blocks):
        raise ValueError(f"reinit_layers={reinit_layers}: the model has {len(model.blocks)} layers")
    for module in [*list(model.blocks)[len(model.blocks) - reinit_layers:], model.pooler] if reinit_layers else []:
        module.apply(model._init_weights)
    return model.to("cpu"), pre.checkpoint


@torch.no_grad()
def pooled_features(model: VideoBert, examples: Sequence[dict], batch_size: int = 64) -> torch.Tensor:
    """The pooled state ``tanh(W h + b)`` of each example, ``(N, H)``: what the classifier reads.

    ``h`` is the ``[CLS]`` state or the mean over the tokens (``model.config.pooling``).

    In eval mode (no dropout); for the linear probe, computed once. Taught in ``09_fine_tuning``.
    """
    from .sequences import Collator

    model.eval()
    device = next(model.parameters()).device
    collate = Collator(model.config, mask=False)
    out = []
    for lo in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(list(examples[lo : lo + batch_size])).items()}
        hidden = model.encode(**batch)  # (B, T, H)
        out.append(model.pooler(hidden, batch["attention_mask"]).cpu())  # (B, H)
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


class LinearProbe(nn.Module):
    """The classifier alone, on precomputed pooled features: ``forward(features, labels)`` for the training loop.

    Features are standardised with the training set's ``mean`` and ``std``
    first (as in MAE's linear probe: a pretrained ``[CLS]`` state can vary
    little between inputs, which a plain linear layer trained by SGD barely
    sees). It shares its ``nn.Linear`` with the :class:`VideoBert` it probes;
    :meth:`fold` writes the standardisation into that layer, so the model then
    predicts exactly what the probe does. Taught in ``09_fine_tuning``.
    """

    def __init__(self, classifier: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", torch.nan_to_num(std.detach().clone().float(), nan=1.0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.classifier((features - self.mean) / self.std)  # (B, num_labels)
        losses = {} if labels is None else {"classification": F.cross_entropy(logits, labels.long())}
        return {"logits": logits, "losses": losses}

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """``W (x - mean) / std + b`` as one linear layer ``W' x + b'``, written into the shared classifier."""
        w = self.classifier.weight.double() / self.std.double()  # (C, H)
        self.classifier.bias.copy_(self.classifier.bias.double() - w @ self.mean.double())
        self.classifier.weight.copy_(w)
        return self.classifier


# --------------------------------------------------------------------------- evaluation


def confusion_matrix(targets: Sequence[int] | torch.Tensor, predictions: Sequence[int] | torch.Tensor,
                     n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` counts: row = true class, column = predicted class. Taught in ``09_fine_tuning``."""
    t, p = torch.as_tensor(targets, dtype=torch.long), torch.as_tensor(predictions, dtype=torch.long)
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} targets but {len(p)} predictions")
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _result(targets: list[int], predictions: list[int], n_classes: int) -> dict:
    right = sum(int(a == b) for a, b in zip(targets, predictions))
    return {"accuracy": right / len(targets), "n": len(targets), "predictions": predictions, "targets": targets,
            "confusion": confusion_matrix(targets, predictions, n_classes).tolist()}


@torch.no_grad()
def evaluate_classifier(model: VideoBert, examples: Sequence[dict], batch_size: int = 64) -> dict:
    """``{"accuracy", "n", "predictions", "targets", "confusion"}`` of ``model``'s classifier on labelled examples.

    ``confusion``: a list of rows (true class) of counts per predicted class.
    Taught in ``09_fine_tuning``.
    """
    if not examples:
        raise ValueError("evaluate_classifier of no examples")
    if model.classifier is None:
        raise ValueError("the model has no classifier (num_labels=0); build it with finetune.build_classifier")
    model.eval()
    device = next(model.parameters()).device
    collate = ClassificationCollator(model.config)
    predictions: list[int] = []
    for lo in range(0, len(examples), batch_size):
        batch = collate(list(examples[lo : lo + batch_size]))
        batch.pop("labels")
        out = model(**{k: v.to(device) for k, v in batch.items()})
        predictions += out.logits.argmax(-1).cpu().tolist()
    return _result([int(e["label"]) for e in examples], predictions, model.config.num_labels)


def class_accuracy(result: dict, classes: Sequence[int]) -> float:
    """Accuracy of ``result`` (:func:`evaluate_classifier`) on the examples whose true class is in ``classes``.

    For example the look-alike verbs, ``[task_classes("action").index(v) for v in LOOK_ALIKE_VERBS]``.
    Taught in ``09_fine_tuning``.
    """
    keep = set(int(c) for c in classes)
    pairs = [(t, p) for t, p in zip(result["targets"], result["predictions"]) if t in keep]
    if not pairs:
        raise ValueError(f"no examples of the classes {sorted(keep)}")
    return sum(int(t == p) for t, p in pairs) / len(pairs)


# --------------------------------------------------------------------------- training


@dataclass
class FineTuned:
    """What :func:`ensure_finetuned` returns."""

    model: VideoBert | None  # eval mode, the selected (best validation) weights; None when loaded with load_model=False
    out_dir: Path  # the run's folder: finetune.json, result.json, metrics.jsonl, model/ or head.safetensors
    checkpoint: Path | None  # model/ (a VideoBert.from_pretrained folder) or, frozen, head.safetensors; None when not kept
    metrics: dict  # test accuracy, confusion, predictions; validation accuracy; the selected step (see RESULT_FILE)
    settings: FineTuneSettings
    base_checkpoint: Path | None  # the pretrained checkpoint it started from (None from scratch)
    trained: bool  # False when a finished run on disk was reused

    @property
    def accuracy(self) -> float:
        """Test accuracy (held-out videos)."""
        return self.metrics["test"]["accuracy"]


def run_dir(run, settings: FineTuneSettings) -> Path:
    """``<DATA_DIR>/derived/finetune/<task>-<mode>-<percent>pct-<audio|noaudio>-s<seed>``."""
    return run.stage_dir("finetune") / settings.name


def _train_config(run, settings: FineTuneSettings, progress: bool) -> TrainConfig:
    s = settings
    return TrainConfig(max_steps=s.steps, lr=s.lr, warmup_steps=max(1, s.steps // 10), decay="linear", min_lr_ratio=0.0,
                       weight_decay=0.01, seed=s.seed, device=run.device, eval_every=s.eval_every,
                       checkpoint_every=min(s.steps, CHECKPOINT_EVERY), keep_last=1, log_every=1, progress=progress)


class _Best:
    """An evaluation hook for the training loop: validation accuracy, and the best step's trainable tensors in memory."""

    def __init__(self, model: nn.Module, score):
        self.model, self.score = model, score
        self.accuracy, self.state, self.calls = -1.0, None, 0

    def __call__(self, model) -> dict:
        self.calls += 1
        acc = float(self.score())
        if acc > self.accuracy:
            self.accuracy = acc
            self.state = {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}
        return {"val_accuracy": acc}


def _examples(run, settings: FineTuneSettings, config: VideoBertConfig) -> dict[str, list[dict]]:
    rows = {s: classification_examples(run, settings.task, s, settings.audio, config) for s in SUBSETS}
    rows["training"] = label_subset(rows["training"], settings.fraction, settings.seed)
    return rows


_FEATURE_CACHE: dict[tuple, torch.Tensor] = {}


def _features(model: VideoBert, base: Path | None, key: tuple, examples: list[dict]) -> torch.Tensor:
    """Pooled features of a frozen encoder, kept in memory per (pretrained checkpoint, pooling, examples)."""
    full = (str(base), base.stat().st_mtime_ns if base is not None else 0, model.config.pooling, *key, len(examples))
    if full not in _FEATURE_CACHE:
        _FEATURE_CACHE[full] = pooled_features(model, examples)
    return _FEATURE_CACHE[full]


def finetune(run, settings: FineTuneSettings, out_dir: str | Path, progress: bool = False) -> tuple[VideoBert, dict, Path | None]:
    """Train one run into ``out_dir`` with :func:`vbert_lab.train.train`; returns ``(model, metrics, base checkpoint)``.

    Trains on the (``fraction`` of the) ``training`` steps, evaluates on
    ``validation`` every ``eval_every`` steps and keeps the weights of the best
    evaluation (selection by validation), then reports ``testing``. The frozen
    mode trains a :class:`LinearProbe` on :func:`pooled_features` computed once;
    the encoder is never touched. Taught in ``09_fine_tuning``.
    """
    out_dir = Path(out_dir)
    model, base = build_classifier(run, settings.task, settings.mode, settings.seed, settings.reinit_layers, settings.pooling)
    rows = _examples(run, settings, model.config)
    n_classes = model.config.num_labels
    config = _train_config(run, settings, progress)
    batch = min(settings.batch_size, len(rows["training"]))
    if settings.mode == "frozen":
        model.to(run.device)
        for p in model.parameters():
            p.requires_grad_(False)
        feats = {s: _features(model, base, (s, settings.audio), rows[s]) for s in ("validation", "testing")}
        train_rows = classification_examples(run, settings.task, "training", settings.audio, model.config)
        all_train = _features(model, base, ("training", settings.audio), train_rows)  # every task's examples: the same inputs
        index = {(e["video_id"], e["start"]): i for i, e in enumerate(train_rows)}
        feats["training"] = all_train[[index[(e["video_id"], e["start"])] for e in rows["training"]]]
        probe = LinearProbe(model.classifier, feats["training"].mean(0), feats["training"].std(0))
        for p in probe.parameters():
            p.requires_grad_(True)
        data = [{"features": f, "labels": torch.tensor(int(e["label"]))} for f, e in zip(feats["training"], rows["training"])]
        val_targets = torch.tensor([int(e["label"]) for e in rows["validation"]])

        def score():
            with torch.no_grad():
                logits = probe(feats["validation"].to(probe.mean.device))["logits"]
                return float((logits.argmax(-1).cpu() == val_targets).float().mean())

        net: nn.Module = probe
        loader = ResumableLoader(data, batch, None, seed=settings.seed)
    else:
        if not settings.train_embeddings:
            model.embeddings.word.weight.requires_grad_(False)
        net = model

        def score():
            return evaluate_classifier(model, rows["validation"])["accuracy"]

        loader = ResumableLoader(rows["training"], batch, ClassificationCollator(model.config), seed=settings.seed)
    best = _Best(net, score)
    result = train(net, loader, config, out_dir, evaluate=best)
    if best.state is None or best.calls == 0:  # resumed at the end, or eval_every > steps: select the last step
        best(net)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for k, v in best.state.items():
            params[k].copy_(v)
    if settings.mode == "frozen":
        probe.fold()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if settings.mode == "frozen":
        with torch.no_grad():
            logits = model.classifier(feats["testing"].to(model.classifier.weight.device))
        test = _result([int(e["label"]) for e in rows["testing"]], logits.argmax(-1).cpu().tolist(), n_classes)
    else:
        test = evaluate_classifier(model, rows["testing"])
    selected = [r for r in read_metrics(result.metrics_path, "eval") if r.get("val_accuracy") == best.accuracy]
    metrics = {"test": test, "validation_accuracy": best.accuracy, "selected_step": selected[0]["step"] if selected else result.step,
               "steps": result.step, "n_train": len(rows["training"]), "classes": list(task_classes(settings.task)),
               "test_look_alike_accuracy": None, "test_sound_alike_accuracy": None}
    if settings.task == "action":  # the verbs only sound tells apart, and those only the picture tells apart
        classes = task_classes("action")
        for key, verbs in (("test_look_alike_accuracy", LOOK_ALIKE_VERBS), ("test_sound_alike_accuracy", SOUND_ALIKE_VERBS)):
            ids = [classes.index(v) for v in verbs]
            metrics[key] = class_accuracy(test, ids) if any(t in ids for t in test["targets"]) else None
    return model, metrics, base


def _fingerprint(run, settings: FineTuneSettings, base: dict | None) -> dict:
    if not _tokens_index(run).is_file():
        from .pipeline import ensure_tokens

        ensure_tokens(run)
    tokens = json.loads(_tokens_index(run).read_text()).get("fingerprint")
    config = _train_config(run, settings, progress=False).to_dict()
    train_cfg = {k: v for k, v in config.items() if k not in ("resume", "progress", "device", "log_every")}
    return {"settings": settings.to_dict(), "train": train_cfg, "tokens": tokens, "pretrained": base,
            "profile": run.profile.name, "seed": run.seed}


def _base_stamp(run, mode: str) -> dict | None:
    """What the pretrained model is: its run's pretrain.json and checkpoint (None from scratch)."""
    if mode == "scratch":
        return None
    pre = _pretrained(run)
    stamp = pre.out_dir / "pretrain.json"
    return {"pretrain": json.loads(stamp.read_text()) if stamp.is_file() else None, "checkpoint": pre.checkpoint.name}


def ensure_finetuned(run, task: str = "action", mode: str = "finetuned", fraction: float = 1.0, audio: bool = True,
                     seed: int | None = None, settings: FineTuneSettings | None = None, force: bool = False,
                     keep_model: bool = True, load_model: bool = True, progress: bool = False) -> FineTuned:
    """A classifier for ``task`` trained in ``mode`` on ``fraction`` of the labels: loaded if done, else trained.

    The run's folder (:func:`run_dir`) keeps ``finetune.json`` (the settings,
    the training config, the token files' and the pretrained run's
    fingerprints) and, once finished, ``result.json`` (the metrics). A finished
    run with the same ``finetune.json`` is reused; an unfinished one resumes
    from its last checkpoint (selection then covers the evaluations after the
    resume); a different one (or ``force``) is trained afresh. ``keep_model``:
    keep the selected weights on disk (``model/``, or the frozen run's
    ``head.safetensors``); otherwise only the metrics, and a later call that
    needs the model trains again. ``load_model=False`` returns a finished run's
    metrics without loading weights (``model=None``). Taught in ``09_fine_tuning``.
    """
    if settings is None:
        settings = default_settings(run, task, mode, fraction, audio, seed)
    else:  # its zeros mean the profile's values
        settings = default_settings(run, **settings.to_dict())
    out_dir, stamp = claim_run_dir(run_dir(run, settings), _fingerprint(run, settings, _base_stamp(run, settings.mode)),
                                   SETTINGS_FILE, force)
    stamp_path, result_path = out_dir / SETTINGS_FILE, out_dir / RESULT_FILE
    frozen = settings.mode == "frozen"
    weights = out_dir / (HEAD_FILE if frozen else MODEL_DIR)
    base = _pretrained(run).checkpoint if settings.mode != "scratch" else None
    if result_path.is_file():
        metrics = json.loads(result_path.read_text())
        if not load_model:
            return FineTuned(None, out_dir, weights if weights.exists() else None, metrics, settings, base, trained=False)
        if weights.exists():
            if frozen:
                from safetensors.torch import load_file

                model, base = build_classifier(run, settings.task, "frozen", settings.seed, pooling=settings.pooling)
                head = load_file(str(weights))
                model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in head.items()})
            else:
                model = VideoBert.from_pretrained(weights)
            return FineTuned(model.to(run.device).eval(), out_dir, weights, metrics, settings, base, trained=False)
        result_path.unlink()  # the weights were not kept: train again (same settings, same result)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    model, metrics, base = finetune(run, settings, out_dir, progress=progress)
    kept = None
    if keep_model:
        if frozen:
            from safetensors.torch import save_file

            save_file({f"classifier.{k}": v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()},
                      str(weights))
        else:
            model.save_pretrained(weights)
        kept = weights
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the optimizer's state is of no use once done
    result_path.write_text(json.dumps(metrics) + "\n")
    model = model.to(run.device).eval() if load_model else None  # a sweep keeps no model in memory
    return FineTuned(model, out_dir, kept, metrics, settings, base, trained=True)


# --------------------------------------------------------------------------- tables and figures


def seeds_of(run, n: int | None = None) -> list[int]:
    """The seeds of the notebook's tables: ``run.seed``, ``run.seed + 1``, ... (``n``: the profile's ``finetune_seeds``)."""
    return list(range(run.seed, run.seed + (run.profile.finetune_seeds if n is None else n)))


def sweep(run, tasks: Sequence[str] = tuple(TASKS), modes: Sequence[str] = MODES, fractions: Sequence[float] = (0.1, 1.0),
          seeds: Sequence[int] | None = None, audio: bool = True, progress: bool = True) -> list[FineTuned]:
    """:func:`ensure_finetuned` for every task x mode x fraction x seed, metrics only (``load_model=False``).

    Every run keeps its metrics on disk; the weights are kept only for the
    pretrained modes at fraction 1 with ``run.seed`` and audio (notebook 10
    compresses the fine-tuned action model; a frozen run keeps just its head).
    Taught in ``09_fine_tuning``.
    """
    from tqdm.auto import tqdm

    seeds = seeds_of(run) if seeds is None else list(seeds)
    jobs = [(t, m, f, s) for t in tasks for m in modes for f in fractions for s in seeds]
    out = []
    for task, mode, fraction, seed in tqdm(jobs, desc="fine-tuning runs", disable=not progress):
        keep = seed == run.seed and fraction == 1.0 and audio and mode != "scratch"
        out.append(ensure_finetuned(run, task, mode, fraction, audio, seed, keep_model=keep, load_model=False))
    return out


def accuracy_table(results: Iterable[FineTuned], metric: str = "accuracy") -> dict:
    """``{task: {mode: {fraction: summarise(values over seeds)}}}`` of test ``metric``.

    ``metric``: ``"accuracy"`` or a key of :attr:`FineTuned.metrics` such as
    ``"test_look_alike_accuracy"``. Taught in ``09_fine_tuning``.
    """
    values: dict = {}
    for r in results:
        v = r.accuracy if metric == "accuracy" else r.metrics[metric]
        s = r.settings
        values.setdefault(s.task, {}).setdefault(s.mode, {}).setdefault(s.fraction, []).append(v)
    return {t: {m: {f: summarise(v) for f, v in sorted(by_f.items())} for m, by_f in by_m.items()} for t, by_m in values.items()}



def best_on_validation(results: Iterable[FineTuned], task: str, fraction: float = 1.0, audio: bool = True) -> str:
    """The mode whose runs of ``task`` at ``fraction`` have the best mean validation accuracy over seeds.

    Chosen on the validation videos only, so that a test number read from the
    chosen mode is not picked by its own test score. Taught in ``09_fine_tuning``.
    """
    scores: dict[str, list[float]] = {}
    for r in results:
        s = r.settings
        if (s.task, s.fraction, s.audio) == (task, fraction, audio):
            scores.setdefault(s.mode, []).append(r.metrics["validation_accuracy"])
    if not scores:
        raise ValueError(f"no runs of task {task!r} at fraction {fraction} (audio={audio})")
    return max(scores, key=lambda m: statistics.fmean(scores[m]))


def summarise(values: Iterable[float]) -> dict:
    """``{"mean", "std", "n", "values"}`` (sample standard deviation; 0 for one value). Taught in ``09_fine_tuning``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarise of no values")
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def plot_confusion(confusion, classes: Sequence[str], ax=None, title: str = "", normalise: bool = True):
    """A confusion matrix (rows: true class, columns: predicted), normalised per row; returns the axes.

    Taught in ``09_fine_tuning``.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(confusion, dtype=float)
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalise else m
    if ax is None:
        _, ax = plt.subplots(figsize=(0.38 * len(classes) + 2, 0.38 * len(classes) + 1.5))
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 6:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_learning_curves(table: dict, task: str, ax=None, chance: float | None = None):
    """Test accuracy against the label fraction, one line per mode, mean ± std over seeds; returns the axes.

    ``table``: ``{mode: {fraction: summarise(...)}}``. Taught in ``09_fine_tuning``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    for mode, by_fraction in table.items():
        fr = sorted(by_fraction)
        mean = [by_fraction[f]["mean"] for f in fr]
        std = [by_fraction[f]["std"] for f in fr]
        ax.errorbar([100 * f for f in fr], mean, yerr=std, marker="o", capsize=3, label=mode)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set(xlabel="training labels (%)", ylabel="test accuracy", title=task)
    ax.legend(fontsize=8)
    return ax
