"""What a pretrained VideoBERT knows: zero-shot verbs and nouns, alignment, generation, a captioning probe.

Taught in ``08_zero_shot_and_generation`` (alignment accuracy also in
``07_videobert_pretraining``). Everything here reads a model; nothing trains
it, except the captioning probe's small decoder (the encoder stays frozen).

Zero-shot classification (the paper's section 4.2)
--------------------------------------------------
The paper fills the template ``"now let me show you how to [MASK] the [MASK]"``
and reads the first mask as the verb, the second as the noun, ranked over the
label vocabulary. With video, the segment's visual tokens follow ``[>]``::

    [CLS] now let me show you how to [MASK] the [MASK] [>] v1 .. vm [SEP]

Each TinyCook verb and ingredient is one WordPiece token
(:func:`label_token_ids` checks), so ranking is one row of the masked-token
logits restricted to those ids: top-1 and top-5 accuracy against the hidden
labels of held-out (validation and testing) step segments.

The rows of the paper's table, in miniature (:func:`zero_shot_table`):

- ``random``: the chance level of a uniform ranking, ``k / n_classes``;
- ``bert_prior``: MiniLM as shipped (never trained on TinyCook), no video.
  MiniLM ships *no MLM head*: :func:`vbert_lab.hf.load_bert` initialises one
  at random, so this row measures an untrained head over a real encoder and
  sits at chance; with a BERT that has its head (``bert-base-uncased``
  online) it would be the paper's true BERT prior;
- ``language_prior``: pretrained on TinyCook's narration only, no video;
- ``cross_modal``: pretrained with video, given the segment's visual tokens.

Captioning metrics
------------------
:func:`caption_scores` uses ``pycocoevalcap`` (the MS-COCO caption evaluation
code; the YouCook2 captioning numbers the paper compares with come from this
implementation): BLEU-4, METEOR 1.5 (a Java program bundled in the package:
``java`` must be on the PATH), ROUGE-L and CIDEr-D. Texts are lower-cased and
split on white space here (TinyCook has no punctuation) instead of the
package's Stanford PTB tokenizer (another Java program).
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import VideoBert, VideoBertConfig
from .sequences import build_sequence

__all__ = [
    "linear_probe",
    "ZERO_SHOT_TEMPLATE",
    "HeldOutSegment",
    "template_ids",
    "label_token_ids",
    "zero_shot_inputs",
    "zero_shot_scores",
    "topk_accuracy",
    "chance_accuracy",
    "heldout_segments",
    "zero_shot_accuracy",
    "zero_shot_table",
    "alignment_examples",
    "alignment_scores",
    "alignment_accuracy",
    "score_accuracy",
    "mlm_alignment_scores",
    "text_to_video",
    "forecast",
    "cluster_labels",
    "cluster_exemplar_frames",
    "caption_scores",
    "CaptionProbe",
    "train_caption_probe",
    "caption_probe_scores",
]


def linear_probe(x_train: torch.Tensor, y_train: Sequence, x_test: torch.Tensor, y_test: Sequence,
                 l2: float = 1e-2, max_iter: int = 200) -> float:
    """Held-out accuracy of a softmax regression fitted by L-BFGS on standardised frozen features.

    ``x_*``: ``(n, D)`` features; ``y_*``: labels of any hashable kind (a label seen only in the test set
    counts as a miss). The features are standardised with the training rows' mean and deviation; the
    objective is cross-entropy plus ``l2 * ||W||^2``. Deterministic (the weights start at zero). Taught in
    ``04_clip_features``: what frozen clip features tell about labels they were never trained on.
    """
    names = sorted(set(y_train) | set(y_test), key=str)
    index = {name: i for i, name in enumerate(names)}
    yt = torch.tensor([index[y] for y in y_train])
    ye = torch.tensor([index[y] for y in y_test])
    x_train, x_test = x_train.float(), x_test.float()
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xe = (x_train - mu) / sd, (x_test - mu) / sd  # (n, D)
    W = torch.zeros(xt.shape[1], len(names), requires_grad=True)
    b = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ W + b, yt) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a problem this small runs faster on one thread (much faster on a busy machine)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        return float(((xe @ W + b).argmax(1) == ye).float().mean())

ZERO_SHOT_TEMPLATE = "now let me show you how to [MASK] the [MASK]"
MASK = "[MASK]"


# --------------------------------------------------------------------------- the template


def template_ids(tokenizer, template: str = ZERO_SHOT_TEMPLATE) -> tuple[list[int], list[int]]:
    """WordPiece ids of ``template`` with each ``[MASK]`` as the mask id, and the masks' positions (in the ids).

    ``tokenizer``: a :class:`vbert_lab.text.WordPiece`. Positions count from the
    first word (``[CLS]`` not included). Taught in ``08_zero_shot_and_generation``.
    """
    parts = template.split(MASK)
    if len(parts) < 2:
        raise ValueError(f"template {template!r} has no {MASK}")
    mask_id = tokenizer.token_id(MASK)
    ids, where = [], []
    for i, part in enumerate(parts):
        if part.strip():
            ids += tokenizer.encode(part, on_unknown="error")
        if i < len(parts) - 1:
            where.append(len(ids))
            ids.append(mask_id)
    return ids, where


def label_token_ids(tokenizer, words: Iterable[str]) -> list[int]:
    """The WordPiece id of each label word; each must be exactly one token (the template has one mask per word).

    Taught in ``08_zero_shot_and_generation``.
    """
    out = []
    for w in words:
        ids = tokenizer.encode(w, on_unknown="error")
        if len(ids) != 1:
            raise ValueError(f"label {w!r} is {len(ids)} WordPiece tokens {tokenizer.tokens(ids)}; the zero-shot "
                             "template ranks one-token words only: choose a label the vocabulary spells as one token")
        out.append(ids[0])
    return out


def zero_shot_inputs(config: VideoBertConfig, words: Sequence[int], visual: Sequence[Sequence[int]] | None = None,
                     audio: Sequence[Sequence[int]] | None = None, n: int | None = None,
                     max_len: int | None = None) -> dict[str, torch.Tensor]:
    """A padded batch of the template (``words``: :func:`template_ids`' ids), one row per segment.

    ``visual``: each segment's visual cluster indices (``None``: text only,
    ``n`` rows); ``audio`` likewise, after a second ``[>]``. Returns
    ``input_ids``, ``token_type_ids``, ``attention_mask``. The template's ids
    come first, so its masks sit at ``1 + position`` in every row. Taught in
    ``08_zero_shot_and_generation``.
    """
    if visual is None:
        if n is None:
            raise ValueError("zero_shot_inputs: give the segments' visual tokens, or n (rows) for a text-only batch")
        rows = [build_sequence(config, words, (), None, max_len) for _ in range(n)]
    else:
        audio = [None] * len(visual) if audio is None else audio
        rows = [build_sequence(config, words, v, a, max_len) for v, a in zip(visual, audio)]
        for r in rows:
            if not torch.equal(r["input_ids"][1 : 1 + len(words)], torch.as_tensor(words)):
                raise ValueError(f"max_len={max_len} cuts into the template; allow at least {len(words) + 4} positions")
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), T), config.pad_token_id, dtype=torch.long)
    types = torch.zeros_like(ids)
    attn = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[b, :k], types[b, :k], attn[b, :k] = r["input_ids"], r["token_type_ids"], 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn}


@torch.no_grad()
def zero_shot_scores(model: VideoBert, tokenizer, candidates: Sequence[Sequence[int]],
                     visual: Sequence[Sequence[int]] | None = None, audio: Sequence[Sequence[int]] | None = None,
                     n: int | None = None, template: str = ZERO_SHOT_TEMPLATE, batch_size: int = 64,
                     max_len: int | None = None) -> list[torch.Tensor]:
    """Logits of each template mask over its candidates: one ``(N, len(candidates[j]))`` tensor per mask ``j``.

    ``candidates[j]``: WordPiece ids ranked at mask ``j`` (the verbs, then the
    nouns). Taught in ``08_zero_shot_and_generation``.
    """
    words, where = template_ids(tokenizer, template)
    if len(candidates) != len(where):
        raise ValueError(f"the template has {len(where)} masks but {len(candidates)} candidate lists were given")
    model.eval()
    device = next(model.parameters()).device
    N = len(visual) if visual is not None else int(n)
    out = [[] for _ in where]
    for lo in range(0, N, batch_size):
        hi = min(N, lo + batch_size)
        batch = zero_shot_inputs(model.config, words, None if visual is None else visual[lo:hi],
                                 None if audio is None else audio[lo:hi], n=hi - lo, max_len=max_len)
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model.encode(**batch)  # (B, T, H)
        for j, p in enumerate(where):
            at = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
            at[:, 1 + p] = True  # +1: [CLS]
            logits = model.masked_logits(hidden, at)  # (B, V)
            out[j].append(logits[:, torch.as_tensor(list(candidates[j]), device=device)].float().cpu())
    return [torch.cat(o) for o in out]


def topk_accuracy(scores: torch.Tensor, targets: Sequence[int] | torch.Tensor, k: int = 1) -> float:
    """Share of rows whose target index is among the ``k`` highest scores (ties: the lower index first).

    Taught in ``08_zero_shot_and_generation``.
    """
    scores = torch.as_tensor(scores)
    targets = torch.as_tensor(targets, dtype=torch.long)
    if scores.dim() != 2 or len(targets) != scores.shape[0]:
        raise ValueError(f"scores should be (N, C) with N = len(targets) = {len(targets)}; got {tuple(scores.shape)}")
    if len(targets) == 0:
        raise ValueError("topk_accuracy of no rows")
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1, sorted=True).indices  # (N, k)
    return float((top == targets[:, None]).any(dim=1).float().mean())


def chance_accuracy(n_classes: int, k: int = 1) -> float:
    """Expected top-``k`` accuracy of a uniformly random ranking of ``n_classes``: ``k / n_classes``."""
    return min(k, n_classes) / n_classes


# --------------------------------------------------------------------------- held-out segments


@dataclass
class HeldOutSegment:
    """A labelled step of a held-out video, with the tokens of the clips it covers and its clean caption."""

    video_id: str
    start: float
    end: float
    verb: str
    noun: str
    visual: list[int]
    audio: list[int] | None
    caption: str
    subset: str


def heldout_segments(run, subsets: Sequence[str] = ("validation", "testing")) -> list[HeldOutSegment]:
    """Every labelled step of ``subsets``' videos with its clips' visual and audio tokens and its caption.

    A clip belongs to a step when its middle lies inside the step (at least
    one clip per step). The labels come from TinyCook's hidden ``labels.json``;
    the caption from ``annotations.json``. Taught in ``08_zero_shot_and_generation``.
    """
    from .pipeline import load_tokens
    from .tinycook import load_annotations, load_labels

    data_dir = run.tinycook()
    captions = {(v, round(a["segment"][0], 3)): a["sentence"]
                for v, info in load_annotations(data_dir)["database"].items() for a in info["annotations"]}
    tokens = {}
    for subset in subsets:
        tokens.update({t.video_id: t for t in load_tokens(run, subset)})
    out = []
    for lab in load_labels(data_dir):
        if lab.subset not in subsets or lab.video_id not in tokens:
            continue
        t = tokens[lab.video_id]
        s = t.clip_seconds
        clips = [i for i in range(t.n_clips) if lab.start <= (i + 0.5) * s < lab.end]
        if not clips:
            clips = [min(t.n_clips - 1, int(lab.start // s))]
        out.append(HeldOutSegment(lab.video_id, lab.start, lab.end, lab.verb, lab.noun,
                                  [t.visual[i] for i in clips], None if t.audio is None else [t.audio[i] for i in clips],
                                  captions.get((lab.video_id, round(lab.start, 3)), ""), lab.subset))
    if not out:
        raise ValueError(f"no labelled steps in the subsets {list(subsets)} of {data_dir}")
    return out


def zero_shot_accuracy(model: VideoBert, tokenizer, segments: Sequence[HeldOutSegment], use_video: bool = True,
                       use_audio: bool = False, ks: Sequence[int] = (1, 5), template: str = ZERO_SHOT_TEMPLATE,
                       verbs: Sequence[str] | None = None, nouns: Sequence[str] | None = None) -> dict[str, float]:
    """``{"verb_top1", "verb_top5", "noun_top1", "noun_top5"}`` of ``model`` on ``segments`` with the template.

    ``use_video``: the segment's visual tokens follow ``[>]`` (the
    ``cross_modal`` row); otherwise the template alone. Taught in
    ``08_zero_shot_and_generation``.
    """
    from .tinycook import INGREDIENTS, VERBS

    verbs, nouns = list(verbs or VERBS), list(nouns or INGREDIENTS)
    cands = [label_token_ids(tokenizer, verbs), label_token_ids(tokenizer, nouns)]
    visual = [s.visual for s in segments] if use_video else None
    audio = [s.audio for s in segments] if (use_video and use_audio) else None
    verb_scores, noun_scores = zero_shot_scores(model, tokenizer, cands, visual, audio, n=len(segments), template=template)
    vt = [verbs.index(s.verb) for s in segments]
    nt = [nouns.index(s.noun) for s in segments]
    out = {}
    for k in ks:
        out[f"verb_top{k}"] = topk_accuracy(verb_scores, vt, k)
        out[f"noun_top{k}"] = topk_accuracy(noun_scores, nt, k)
    return out


def zero_shot_table(models: dict[str, tuple[VideoBert, bool]], tokenizer, segments: Sequence[HeldOutSegment],
                    ks: Sequence[int] = (1, 5)) -> dict[str, dict[str, float]]:
    """The zero-shot table: ``random`` (chance) and one row per ``name -> (model, use_video)``.

    Taught in ``08_zero_shot_and_generation``.
    """
    from .tinycook import INGREDIENTS, VERBS

    table = {"random": {f"{what}_top{k}": chance_accuracy(len(labels), k)
                        for k in ks for what, labels in (("verb", VERBS), ("noun", INGREDIENTS))}}
    for name, (model, use_video) in models.items():
        table[name] = zero_shot_accuracy(model, tokenizer, segments, use_video=use_video, ks=ks)
    return table


# --------------------------------------------------------------------------- alignment


def alignment_examples(config: VideoBertConfig, segments: Sequence[HeldOutSegment], seed: int = 0,
                       max_len: int | None = None, tokenizer=None) -> list[dict]:
    """Held-out alignment pairs: each step's caption with its own visual tokens (label 1) and with those of a
    step of another video that differs in verb and noun (label 0).

    The text is the step's clean caption (``annotations.json``), so every
    positive truly describes its video. Taught in ``07_videobert_pretraining``.
    """
    from .text import load_wordpiece

    tokenizer = tokenizer or load_wordpiece()
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(segments):
        if not s.caption:
            continue
        words = tokenizer.encode(s.caption)
        others = [o for o in segments if o.video_id != s.video_id and o.verb != s.verb and o.noun != s.noun]
        if not others:
            continue
        neg = rng.choice(others)
        for visual, label in ((s.visual, 1), (neg.visual, 0)):
            ex = build_sequence(config, words, visual, None, max_len)
            ex["alignment_label"] = label
            out.append(ex)
    return out


@torch.no_grad()
def alignment_scores(model: VideoBert, examples: Sequence[dict], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment head's score ``logit[aligned] - logit[not aligned]`` and the label of each example.

    ``examples``: :func:`~vbert_lab.sequences.build_sequence` dicts with
    ``"alignment_label"``. Returns two ``(N,)`` CPU tensors. Taught in ``07_videobert_pretraining``.
    """
    from .sequences import Collator

    if not examples:
        raise ValueError("alignment_scores of no examples")
    model.eval()
    device = next(model.parameters()).device
    collate = Collator(model.config, mask=False)
    scores, labels = [], []
    for lo in range(0, len(examples), batch_size):
        batch = collate(list(examples[lo : lo + batch_size]))
        labels.append(batch.pop("alignment_labels"))
        logits = model(**{k: v.to(device) for k, v in batch.items()}).alignment_logits.float().cpu()
        scores.append(logits[:, 1] - logits[:, 0])
    return torch.cat(scores), torch.cat(labels)


def alignment_accuracy(model: VideoBert, examples: Sequence[dict], batch_size: int = 64) -> float:
    """Accuracy of the alignment head (``argmax`` of ``[not aligned, aligned]``, i.e. score ``> 0``) on labelled examples.

    ``examples``: :func:`~vbert_lab.sequences.build_sequence` dicts with
    ``"alignment_label"``. Taught in ``07_videobert_pretraining``.
    """
    if not examples:
        raise ValueError("alignment_accuracy of no examples")
    return score_accuracy(*alignment_scores(model, examples, batch_size))


def score_accuracy(scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0) -> float:
    """Share of pairs whose decision ``score > threshold`` ("aligned") matches their 0/1 label."""
    if len(scores) != len(labels) or not len(scores):
        raise ValueError(f"score_accuracy needs as many labels as scores, at least one: got {len(scores)} and {len(labels)}")
    return int(((scores > threshold).long() == labels.long()).sum()) / len(scores)


@torch.no_grad()
def mlm_alignment_scores(model: VideoBert, examples: Sequence[dict], word_ids: Iterable[int],
                         references: Sequence[Sequence[int]], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment read from the masked-token head, with no alignment head: how much a video raises its sentence's words.

    For a pair of sentence ``t`` and video ``v``, every word of ``t`` that is
    in ``word_ids`` (the cooking words: :func:`vbert_lab.pretrain.salient_token_ids`)
    is masked at once, ``w`` those words and ``t\\w`` the rest, and::

        score(t, v) = log p(w | t\\w, v) - log (1/K) sum_k p(w | t\\w, r_k)

    with ``p(w | .)`` the product of the model's softmax over the joint
    vocabulary at the masked positions and ``r_1 .. r_K`` the visual tokens of
    ``references`` (unlabelled videos, e.g. training steps): the model's own
    estimate of the pointwise mutual information of the words and the video.
    ``score > 0``: ``v`` makes the words likelier than a typical video does,
    read as "aligned". A sentence with none of ``word_ids`` scores 0 (no
    evidence either way; read as not aligned).

    ``examples``: :func:`alignment_examples`' text-video dicts (no audio).
    Returns ``(scores, labels)``, two ``(N,)`` CPU tensors, as :func:`alignment_scores`;
    ``labels`` is -1 where an example has no ``"alignment_label"``. One sentence's
    reference rows are scored once for all its pairs. Taught in ``07_videobert_pretraining``.
    """
    from .sequences import Collator

    if not examples:
        raise ValueError("mlm_alignment_scores of no examples")
    if not references:
        raise ValueError("mlm_alignment_scores needs at least one reference video (references=[]): pass the visual "
                         "tokens of some training steps, e.g. [s.visual for s in heldout_segments(run, ('training',))]")
    cfg = model.config
    words = torch.as_tensor(sorted({int(w) for w in word_ids}), dtype=torch.long)
    if not len(words) or int(words.min()) < 0 or int(words.max()) >= cfg.vocab_size:
        raise ValueError(f"word_ids must be non-empty WordPiece ids in [0, {cfg.vocab_size}); got {words.tolist()[:10]}")
    jn = cfg.special_token_id("[>]")
    # each example's sentence and video, read back from its joint ids
    texts, visuals = [], []
    for i, ex in enumerate(examples):
        ids = [int(x) for x in ex["input_ids"]]
        if ids.count(jn) != 1 or ids[0] != cfg.cls_token_id or ids[-1] != cfg.sep_token_id:
            raise ValueError(f"example {i} is not '[CLS] text [>] video [SEP]' (one [>], no audio): "
                             f"build it with alignment_examples or sequences.build_sequence(config, text, visual)")
        cut = ids.index(jn)
        texts.append(tuple(ids[1:cut]))
        visuals.append([t - cfg.visual_offset for t in ids[cut + 1 : -1]])
    # rows to score, sentence by sentence: the videos of its examples, then the K references
    examples_of: dict[tuple, list[int]] = {}
    for i, t in enumerate(texts):
        examples_of.setdefault(t, []).append(i)
    rows, blocks = [], []  # blocks: (first row, the sentence's example indices)
    for t, mine in examples_of.items():
        if torch.isin(torch.tensor(t, dtype=torch.long), words).any():
            blocks.append((len(rows), mine))
            rows += [build_sequence(cfg, t, visuals[i]) for i in mine] + [build_sequence(cfg, t, r) for r in references]
    model.eval()
    device = next(model.parameters()).device
    collate = Collator(cfg, mask=False)
    logp = []  # per row: log p(its masked words | the rest)
    for lo in range(0, len(rows), batch_size):
        batch = collate(rows[lo : lo + batch_size])
        ids = batch["input_ids"]
        at = torch.isin(ids, words) & (batch["token_type_ids"] == 0) & (batch["attention_mask"] == 1)
        at[:, 0] = False  # [CLS]
        truth = ids[at]
        batch["input_ids"] = ids.masked_fill(at, cfg.mask_token_id)
        hidden = model.encode(**{k: v.to(device) for k, v in batch.items()})
        lp = torch.log_softmax(model.masked_logits(hidden, at.to(device)).float(), -1).cpu()  # (M, V)
        per = lp[torch.arange(len(truth)), truth]
        logp.append(torch.zeros(len(ids)).index_add_(0, at.nonzero()[:, 0], per))
    logp = torch.cat(logp) if logp else torch.zeros(0)
    scores = torch.zeros(len(examples))  # 0 where the sentence has no word to score
    for first, mine in blocks:
        ref = logp[first + len(mine) : first + len(mine) + len(references)]
        marginal = torch.logsumexp(ref, 0) - math.log(len(references))
        scores[mine] = logp[first : first + len(mine)] - marginal
    labels = torch.tensor([int(ex.get("alignment_label", -1)) for ex in examples], dtype=torch.long)
    return scores, labels


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def _fill_visual(model: VideoBert, prefix: list[int], n: int, suffix_audio: bool = False) -> list[int]:
    """Fill ``n`` masks after the joint ids ``prefix`` one at a time, left to right, with the likeliest visual token."""
    cfg = model.config
    device = next(model.parameters()).device
    model.eval()
    ids = list(prefix) + [cfg.mask_token_id] * n + [cfg.sep_token_id]
    visual_ids = torch.arange(cfg.visual_offset, cfg.audio_offset, device=device)
    out = []
    for j in range(n):
        x = torch.tensor([ids], device=device)
        types = cfg.modality(x)
        types[0, len(prefix) : len(prefix) + n] = 1  # the masks stand for video tokens
        hidden = model.encode(x, token_type_ids=types)
        at = torch.zeros_like(x, dtype=torch.bool)
        at[0, len(prefix) + j] = True
        logits = model.masked_logits(hidden, at)[0, visual_ids]  # (n_visual,)
        k = int(logits.argmax())
        out.append(k)
        ids[len(prefix) + j] = cfg.visual_token_id(k)
    return out


def text_to_video(model: VideoBert, tokenizer, sentence: str, n: int = 4) -> list[int]:
    """The ``n`` likeliest visual tokens (cluster indices) for ``sentence``: ``[CLS] words [>] [MASK]*n [SEP]``,
    filled left to right. Show them as their clusters' exemplar images. Taught in ``08_zero_shot_and_generation``.
    """
    cfg = model.config
    prefix = [cfg.cls_token_id] + tokenizer.encode(sentence) + [cfg.special_token_id("[>]")]
    return _fill_visual(model, prefix, n)


def forecast(model: VideoBert, visual: Sequence[int], n: int = 2, sentence: str | None = None, tokenizer=None) -> list[int]:
    """The ``n`` likeliest next visual tokens after ``visual`` (cluster indices), optionally with a sentence.

    Taught in ``08_zero_shot_and_generation``.
    """
    cfg = model.config
    words = tokenizer.encode(sentence) if sentence else []
    prefix = [cfg.cls_token_id] + words + [cfg.special_token_id("[>]")] + [cfg.visual_token_id(int(v)) for v in visual]
    return _fill_visual(model, prefix, n)


def cluster_labels(run, kind: str = "noun") -> dict[int, str]:
    """The majority hidden label (``kind``: "verb" or "noun") of each visual token over the training clips.

    A yardstick for generation: a generated token "shows" a noun when most of
    its training clips do. Taught in ``08_zero_shot_and_generation``.
    """
    from collections import Counter

    from .features import label_clips
    from .pipeline import clip_features, ensure_codebook, video_subsets

    X, rows = clip_features(run, "visual")
    tokens = ensure_codebook(run, "visual").predict(X).cpu().tolist()
    subsets = video_subsets(run)
    counts: dict[int, Counter] = {}
    for t, row, lab in zip(tokens, rows, label_clips(run.tinycook(), rows)):
        if lab is not None and subsets.get(row["video"]) == "training":
            counts.setdefault(int(t), Counter())[getattr(lab, kind)] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


def cluster_exemplar_frames(run, tokens: Sequence[int], size: int = 96) -> np.ndarray:
    """One picture per visual token: the middle frame of the training clip nearest its centroid, ``(n, H, W, 3)``.

    Taught in ``08_zero_shot_and_generation``.
    """
    from .kmeans import nearest_to_centroids
    from .pipeline import clip_features, ensure_codebook, video_subsets
    from .tinycook import video_path
    from .video import read_frames

    X, rows = clip_features(run, "visual")
    subsets = video_subsets(run)
    train = [i for i, r in enumerate(rows) if subsets.get(r["video"]) == "training"]
    centroids = ensure_codebook(run, "visual").leaf_centroids.cpu()[torch.as_tensor(list(tokens), dtype=torch.long)]
    nearest = nearest_to_centroids(X[train], centroids, n=1)[:, 0].tolist()
    frames = []
    for i in nearest:
        r = rows[train[i]]
        mid = 0.5 * (r["start_s"] + r["end_s"])
        f = read_frames(video_path(run.tinycook(), r["video"]), fps=20, size=size, start=mid, end=mid + 0.05)
        frames.append(f[0])
    return np.stack(frames)


# --------------------------------------------------------------------------- captioning metrics


def caption_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str], meteor: bool = True) -> dict[str, float]:
    """``{"bleu4", "meteor", "rouge_l", "cider"}`` of ``hypotheses`` against ``references`` (a list per hypothesis).

    Corpus-level scores from ``pycocoevalcap`` (see the module docstring);
    METEOR runs ``java`` (``meteor=False`` skips it: the key is then absent).
    Taught in ``08_zero_shot_and_generation``.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise ImportError("caption_scores needs pycocoevalcap: pip install 'pycocoevalcap>=1.2,<1.3'") from None
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"caption_scores: {len(hypotheses)} hypotheses and {len(references)} reference lists; give one list per hypothesis")

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    gts = {i: [norm(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [norm(h) or "<empty>"] for i, h in enumerate(hypotheses)}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts, res)
    out = {"bleu4": float(bleu[3]), "rouge_l": float(Rouge().compute_score(gts, res)[0]),
           "cider": float(Cider().compute_score(gts, res)[0])}
    if meteor:
        if shutil.which("java") is None:
            raise RuntimeError("METEOR 1.5 (pycocoevalcap) is a Java program and no `java` is on the PATH; install a Java "
                               "runtime (Debian: apt-get install default-jre-headless) or call caption_scores(..., meteor=False)")
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            with contextlib.suppress(Exception):
                scorer.close()
    return {k: out[k] for k in ("bleu4", "meteor", "rouge_l", "cider") if k in out}


# --------------------------------------------------------------------------- captioning probe


@torch.no_grad()
def video_features(model: VideoBert, visual: Sequence[Sequence[int]], batch_size: int = 64,
                   max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen VideoBERT features of ``[CLS] [>] v1 .. vm [SEP]``: hidden states ``(N, T, H)`` and their mask ``(N, T)``."""
    model.eval()
    device = next(model.parameters()).device
    cfg = model.config
    rows = [build_sequence(cfg, (), v, None, max_len)["input_ids"] for v in visual]
    T = max(len(r) for r in rows)
    H = torch.zeros(len(rows), T, cfg.hidden_size)
    M = torch.zeros(len(rows), T, dtype=torch.bool)
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        ids = torch.full((len(chunk), T), cfg.pad_token_id, dtype=torch.long)
        for b, r in enumerate(chunk):
            ids[b, : len(r)] = r
        attn = (torch.arange(T)[None] < torch.tensor([len(r) for r in chunk])[:, None]).long()
        H[lo : lo + len(chunk)] = model.encode(ids.to(device), attn.to(device)).float().cpu()
        M[lo : lo + len(chunk)] = attn.bool()
    return H, M


class CaptionProbe(nn.Module):
    """A small GRU decoder with attention over frozen VideoBERT features: the captioning probe.

    Words are indices of a small caption vocabulary (``0`` pad, ``1`` begin,
    ``2`` end). Taught in ``08_zero_shot_and_generation``.
    """

    def __init__(self, feature_size: int, vocab_size: int, hidden: int = 192):
        super().__init__()
        self.proj = nn.Linear(feature_size, hidden)
        self.embed = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, vocab_size)

    def _context(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        att = torch.einsum("bth,bsh->bts", query, memory) / math.sqrt(memory.shape[-1])  # (B, T, S)
        att = att.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return att @ memory  # (B, T, h)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, words_in: torch.Tensor) -> torch.Tensor:
        memory = self.proj(features)  # (B, S, h)
        pooled = (memory * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (B, h)
        x = self.embed(words_in)  # (B, T, h)
        x = torch.cat([x, pooled[:, None].expand_as(x)], -1)
        h, _ = self.gru(x, pooled[None].contiguous())  # (B, T, h)
        return self.out(torch.cat([h, self._context(h, memory, mask)], -1))  # (B, T, V)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, mask: torch.Tensor, max_words: int = 12) -> list[list[int]]:
        B = features.shape[0]
        words = torch.ones(B, 1, dtype=torch.long)
        for _ in range(max_words):
            nxt = self(features, mask, words)[:, -1].argmax(-1, keepdim=True)
            words = torch.cat([words, nxt], 1)
        out = []
        for row in words[:, 1:].tolist():
            out.append(row[: row.index(2)] if 2 in row else row)
        return out


def train_caption_probe(features: torch.Tensor, mask: torch.Tensor, captions: Sequence[str], steps: int = 300,
                        batch_size: int = 32, lr: float = 3e-3, seed: int = 0, hidden: int = 192):
    """Fit a :class:`CaptionProbe` on frozen features and their captions; returns ``(probe, vocabulary)``.

    The vocabulary is the training captions' words. Taught in ``08_zero_shot_and_generation``.
    """
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>"] + sorted({w for c in captions for w in c.lower().split()})
    index = {w: i for i, w in enumerate(vocab)}
    seqs = [[index[w] for w in c.lower().split()] + [2] for c in captions]
    L = max(len(s) for s in seqs)
    target = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        target[i, : len(s)] = torch.tensor(s)
    words_in = torch.cat([torch.ones(len(seqs), 1, dtype=torch.long), target[:, :-1]], 1)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = CaptionProbe(features.shape[-1], len(vocab), hidden)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr)
    probe.train()
    for step in range(steps):
        idx = torch.randint(len(seqs), (min(batch_size, len(seqs)),), generator=g)
        logits = probe(features[idx], mask[idx], words_in[idx])
        loss = F.cross_entropy(logits.flatten(0, 1), target[idx].flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval()
    return probe, vocab


def caption_probe_scores(model: VideoBert, train_segments: Sequence[HeldOutSegment], test_segments: Sequence[HeldOutSegment],
                         steps: int = 300, seed: int = 0, meteor: bool = True) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Train the probe on ``train_segments``' frozen features and captions; score greedy captions of ``test_segments``.

    Returns ``(scores, [(reference, hypothesis), ...])``. Taught in ``08_zero_shot_and_generation``.
    """
    tr = [s for s in train_segments if s.caption]
    te = [s for s in test_segments if s.caption]
    Ftr, Mtr = video_features(model, [s.visual for s in tr])
    probe, vocab = train_caption_probe(Ftr, Mtr, [s.caption for s in tr], steps=steps, seed=seed)
    Fte, Mte = video_features(model, [s.visual for s in te])
    hyps = [" ".join(vocab[i] for i in row) for row in probe.generate(Fte, Mte)]
    refs = [[s.caption] for s in te]
    return caption_scores(refs, hyps, meteor=meteor), [(s.caption, h) for s, h in zip(te, hyps)]
