"""VideoBERT: a BERT encoder over one vocabulary of words, visual and audio tokens.

Taught in ``02_bert_encoder_and_mlm`` (built from the attention of
``01_attention_from_scratch``; trained in ``07_videobert_pretraining``).

One file, nanoGPT-style: a :class:`VideoBertConfig` dataclass, the blocks it
builds, and :class:`VideoBert` with its heads. The joint vocabulary is laid out
as (see :class:`VideoBertConfig`)::

    [0, vocab_size)                      WordPiece ids, exactly as in the text checkpoint
    [vocab_size, visual_offset)          added special tokens, "[>]" first (joins text and video)
    [visual_offset, audio_offset)        visual tokens (k-means centroids of clip features)
    [audio_offset, joint_vocab_size)     audio tokens

so a text-only input is a valid VideoBERT input and a text checkpoint's
weights load unchanged (the new rows are appended). Token types are the
modalities: 0 text, 1 video, 2 audio.

Weights in and out of Hugging Face BERT live in :mod:`vbert_lab.hf`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention, padding_mask_to_attn_mask

__all__ = [
    "TEXT",
    "VIDEO",
    "AUDIO",
    "ACTIVATIONS",
    "VideoBertConfig",
    "VideoBertOutput",
    "VideoBert",
    "project_centroids",
]

TEXT, VIDEO, AUDIO = 0, 1, 2  # token type ids: one per modality
FORMAT = "vbert_lab.videobert"  # the "model_type" written by save_pretrained
FORMAT_VERSION = 1
IGNORE_INDEX = -100  # label of positions that are not predicted (as in transformers)
POOLINGS = ("cls", "mean")  # what the pooled output reads (VideoBertConfig.pooling)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# The activations Hugging Face BERT configs name (hidden_act), written with torch ops.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU: BERT's
    "gelu_new": _gelu_tanh,  # tanh approximation (GPT-2, many BERT variants)
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


@dataclass
class VideoBertConfig:
    """Sizes of a :class:`VideoBert`; the defaults are BERT-base with the paper's 12^4 visual words.

    Joint vocabulary (ids): ``[0, vocab_size)`` WordPiece, then
    ``special_tokens`` (``"[>]"`` first), then ``n_visual_tokens`` visual
    tokens from :attr:`visual_offset`, then ``n_audio_tokens`` audio tokens
    from :attr:`audio_offset`; :attr:`joint_vocab_size` ids in all.
    Taught in ``02_bert_encoder_and_mlm``.
    """

    # vocabulary
    vocab_size: int = 30522  # text (WordPiece) ids, as in the text checkpoint (BERT uncased: 30,522)
    special_tokens: tuple[str, ...] = ("[>]",)  # added after the WordPiece ids; "[>]" separates text from video
    n_visual_tokens: int = 20736  # visual words: hierarchical k-means, k=12, depth 4 -> 12^4 (the paper)
    n_audio_tokens: int = 0  # audio words (0 = no audio modality)
    pad_token_id: int = 0  # WordPiece [PAD]
    cls_token_id: int = 101  # WordPiece [CLS] (BERT uncased)
    sep_token_id: int = 102  # WordPiece [SEP]
    mask_token_id: int = 103  # WordPiece [MASK], also used to mask visual and audio tokens
    # encoder (BERT-base; the paper used BERT-large: 1024 / 24 / 16 / 4096)
    hidden_size: int = 768  # H
    num_layers: int = 12
    num_heads: int = 12  # head size = hidden_size // num_heads
    intermediate_size: int = 3072  # feed-forward width, 4H in BERT
    hidden_act: str = "gelu"  # a key of ACTIVATIONS (exact GELU in BERT)
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512  # longest sequence
    type_vocab_size: int = 3  # token types = modalities: 0 text, 1 video, 2 audio
    dropout: float = 0.1  # on embeddings, attention output and feed-forward output
    attention_dropout: float = 0.1  # on the attention weights
    initializer_range: float = 0.02  # std of the normal initialisation (BERT's)
    # task heads beyond pretraining (0 = no head)
    num_labels: int = 0  # sequence classification on the pooled [CLS]
    num_token_labels: int = 0  # token classification
    # what the alignment and classification heads read: "cls" (BERT and the paper: the [CLS] state) or
    # "mean" (the mean over the non-padding positions; all-MiniLM-L6-v2 was trained with mean pooling)
    pooling: str = "cls"

    def __post_init__(self):
        self.special_tokens = tuple(self.special_tokens)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("n_visual_tokens", "n_audio_tokens", "num_labels", "num_token_labels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens {self.special_tokens} has duplicates")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: choose one of {', '.join(POOLINGS)}")

    # ---- the id layout
    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def visual_offset(self) -> int:
        """First visual token id (visual token k has id ``visual_offset + k``)."""
        return self.vocab_size + len(self.special_tokens)

    @property
    def audio_offset(self) -> int:
        """First audio token id."""
        return self.visual_offset + self.n_visual_tokens

    @property
    def joint_vocab_size(self) -> int:
        """Rows of the embedding table and columns of the masked-token logits."""
        return self.audio_offset + self.n_audio_tokens

    def special_token_id(self, token: str = "[>]") -> int:
        if token not in self.special_tokens:
            raise KeyError(f"{token!r} is not one of this config's special_tokens {self.special_tokens}")
        return self.vocab_size + self.special_tokens.index(token)

    def visual_token_id(self, k):
        """Joint id of visual token (cluster) ``k`` (int or tensor)."""
        return self.visual_offset + k

    def audio_token_id(self, k):
        """Joint id of audio token ``k`` (int or tensor)."""
        return self.audio_offset + k

    def modality(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token type of each id: TEXT (words and special tokens), VIDEO or AUDIO."""
        types = torch.full_like(input_ids, TEXT)
        types[input_ids >= self.visual_offset] = VIDEO
        types[input_ids >= self.audio_offset] = AUDIO
        return types

    # ---- serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["special_tokens"] = list(self.special_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VideoBertConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VideoBertConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


@dataclass
class VideoBertOutput:
    """What :meth:`VideoBert.forward` returns; heads without labels or without a layer stay ``None``."""

    hidden: torch.Tensor  # (B, T, H) last hidden states
    loss: torch.Tensor | None = None  # sum of the losses computed
    losses: dict = field(default_factory=dict)  # name -> loss ("masked_tokens", "alignment", ...)
    masked_logits: torch.Tensor | None = None  # (M, V) joint-vocab logits at the M masked positions
    alignment_logits: torch.Tensor | None = None  # (B, 2): [not aligned, aligned]
    logits: torch.Tensor | None = None  # (B, num_labels) sequence classification
    token_logits: torch.Tensor | None = None  # (B, T, num_token_labels)


# --------------------------------------------------------------------------- blocks


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (BERT's). Taught in ``02_bert_encoder_and_mlm``."""

    def __init__(self, cfg: VideoBertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.joint_vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(pos)  # (B, T, H)
        return self.drop(self.ln(x))


class FeedForward(nn.Module):
    def __init__(self, cfg: VideoBertConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))  # (B, T, I) -> (B, T, H)


class Block(nn.Module):
    """One post-LayerNorm BERT layer: ``x = LN(x + attn(x)); x = LN(x + ffn(x))``. Taught in ``02_bert_encoder_and_mlm``."""

    def __init__(self, cfg: VideoBertConfig):
        super().__init__()
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads, dropout=cfg.attention_dropout)
        self.ln1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = FeedForward(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False):
        weights = None
        if need_weights:
            a, weights = self.attn(x, mask, need_weights=True)  # (B, T, H), (B, nh, T, T)
        else:
            a = self.attn(x, mask)  # (B, T, H)
        x = self.ln1(x + self.drop(a))
        x = self.ln2(x + self.drop(self.mlp(x)))  # (B, T, H)
        return (x, weights) if need_weights else x


class MaskedTokenHead(nn.Module):
    """BERT's MLM head over the joint vocabulary; the output matrix is the (tied) embedding table.

    Taught in ``02_bert_encoder_and_mlm``.
    """

    def __init__(self, cfg: VideoBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.joint_vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.act(self.dense(h)))  # (M, H)
        return F.linear(h, embedding, self.bias)  # (M, V)


class Pooler(nn.Module):
    """``tanh(W h + b)``: BERT's pooled output, used by the alignment and classification heads.

    ``h`` is the ``[CLS]`` state (``pooling="cls"``, BERT's and the paper's
    choice) or the mean of the states at the non-padding positions
    (``pooling="mean"``).
    """

    def __init__(self, cfg: VideoBertConfig):
        super().__init__()
        self.pooling = cfg.pooling
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "mean":
            if attention_mask is None:
                h = hidden.mean(1)
            else:
                w = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
                h = (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
        else:
            h = hidden[:, 0]
        return torch.tanh(self.dense(h))  # (B, H)


# --------------------------------------------------------------------------- the alignment losses


def contrastive_alignment_loss(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The binary and the contrastive alignment losses of a batch with ``n x n`` groups.

    ``logits`` ``(B, 2)`` from the alignment head; ``labels`` ``(B,)`` (1
    aligned, 0 not, -100 ignored); ``groups`` ``(B,)``: rows with the same id
    ``g >= 0`` are ``n`` sentences each shown with the video of every one of
    them, row-major (row ``i * n + j``: sentence ``i`` with video ``j``), so
    that the diagonal is aligned; ``-1`` marks rows outside any group.

    The score of a pair is ``s = logit[aligned] - logit[not aligned]``. For a
    group's ``n x n`` scores ``S``, the contrastive loss (InfoNCE, as in CLIP,
    over the cross-encoder's scores) is
    ``CE(S, diag) + CE(S^T, diag)``: each sentence must pick its video among
    the ``n`` and each video its sentence; the groups' losses are averaged.
    The binary loss is the cross-entropy of every labelled row, a group's
    positives weighted ``n - 1`` (as many as its negatives), so that the sign
    of ``s`` still says aligned or not. Returns ``(binary, contrastive)``.

    Why: with the binary loss alone a pair can be judged by how likely its
    words and its video are, each on its own; ranking a sentence's videos
    against one another leaves only what the two share
    (``bench/studies/align_sources.py``). Taught in ``07_videobert_pretraining``.
    """
    labels, groups = labels.long(), groups.long()
    if labels.shape != groups.shape or labels.shape != logits.shape[:1]:
        raise ValueError(f"alignment_groups {tuple(groups.shape)} and alignment_labels {tuple(labels.shape)} should both be "
                         f"(B,) = ({logits.shape[0]},)")
    score = logits[:, 1] - logits[:, 0]
    weight = torch.ones_like(score)
    contrastive = []
    for g in torch.unique(groups[groups >= 0]).tolist():
        rows = (groups == g).nonzero().flatten()
        n = math.isqrt(len(rows))
        eye = torch.eye(n, dtype=torch.long, device=labels.device).flatten()
        if n < 2 or n * n != len(rows) or not torch.equal(labels[rows], eye):
            raise ValueError(f"alignment group {g}: {len(rows)} rows labelled {labels[rows].tolist()}; a group is n x n pairs "
                             "(n >= 2), row-major, labelled 1 on the diagonal and 0 elsewhere")
        s = score[rows].view(n, n)
        target = torch.arange(n, device=s.device)
        contrastive.append(F.cross_entropy(s, target) + F.cross_entropy(s.T, target))
        weight[rows[eye.bool()]] = float(n - 1)
    labelled = labels != IGNORE_INDEX
    if labelled.any():
        ce = F.cross_entropy(logits[labelled], labels[labelled], reduction="none")
        binary = (ce * weight[labelled]).sum() / weight[labelled].sum()
    else:
        binary = logits.sum() * 0.0
    return binary, (torch.stack(contrastive).mean() if contrastive else logits.sum() * 0.0)


# --------------------------------------------------------------------------- the model


class VideoBert(nn.Module):
    """A BERT encoder over words, visual and audio tokens, with VideoBERT's heads.

    * :meth:`encode` — last hidden states ``(B, T, H)`` (equal to
      ``transformers.BertModel`` on a BERT checkpoint, see :mod:`vbert_lab.hf`);
    * masked-token prediction over the joint vocabulary, computing logits only
      at the masked positions (:meth:`masked_logits`);
    * linguistic-visual alignment on ``[CLS]`` (2 classes: not aligned, aligned);
    * sequence classification (``num_labels``) and token classification
      (``num_token_labels``).

    Taught in ``02_bert_encoder_and_mlm``; trained in ``07_videobert_pretraining``.
    """

    def __init__(self, config: VideoBertConfig):
        super().__init__()
        self.config = cfg = config
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.mlm_head = MaskedTokenHead(cfg)
        self.pooler = Pooler(cfg)
        self.alignment_head = nn.Linear(cfg.hidden_size, 2)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels) if cfg.num_labels else None
        self.token_classifier = nn.Linear(cfg.hidden_size, cfg.num_token_labels) if cfg.num_token_labels else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MaskedTokenHead):
            nn.init.zeros_(module.bias)

    # ---- inputs
    def _check_inputs(self, input_ids, attention_mask, token_type_ids):
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = f"a {input_ids.dim()}-d {input_ids.dtype} tensor" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids should be an integer tensor of shape (batch, seq_len), got {got}")
        B, T = input_ids.shape
        if T > cfg.max_position_embeddings:
            raise ValueError(f"input_ids has {T} positions but the model has max_position_embeddings={cfg.max_position_embeddings}")
        if input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= cfg.joint_vocab_size:
                raise ValueError(
                    f"input_ids hold ids in [{lo}, {hi}] but the joint vocabulary has ids 0..{cfg.joint_vocab_size - 1} "
                    f"(text < {cfg.vocab_size}, special < {cfg.visual_offset}, visual < {cfg.audio_offset}, audio < {cfg.joint_vocab_size})"
                )
        if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
            raise ValueError(
                f"attention_mask should have the shape of input_ids, (batch, seq_len) = {(B, T)}, with 1 for tokens and 0 for padding; "
                f"got {tuple(attention_mask.shape)}"
            )
        if token_type_ids is None:
            token_type_ids = cfg.modality(input_ids)
        elif tuple(token_type_ids.shape) != (B, T):
            raise ValueError(f"token_type_ids should have the shape of input_ids, {(B, T)}; got {tuple(token_type_ids.shape)}")
        if token_type_ids.numel():
            lo, hi = int(token_type_ids.min()), int(token_type_ids.max())
            if lo < 0 or hi >= cfg.type_vocab_size:
                raise ValueError(
                    f"token_type_ids hold types in [{lo}, {hi}] but the model has type_vocab_size={cfg.type_vocab_size} "
                    "(0 text, 1 video, 2 audio; a text checkpoint has 2: load it with type_vocab_size=3 for audio)"
                )
        return token_type_ids

    # ---- the encoder
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states ``(B, T, H)``.

        ``input_ids`` ``(B, T)`` joint-vocabulary ids; ``attention_mask``
        ``(B, T)``, 1 for tokens and 0 for padding (``None``: no padding);
        ``token_type_ids`` ``(B, T)`` (``None``: each token's modality, which is
        all zeros for text, as in BERT). Taught in ``02_bert_encoder_and_mlm``.
        """
        x, mask = self._embed(input_ids, attention_mask, token_type_ids)
        for block in self.blocks:
            x = block(x, mask)  # (B, T, H)
        return x

    def _embed(self, input_ids, attention_mask, token_type_ids):
        token_type_ids = self._check_inputs(input_ids, attention_mask, token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = padding_mask_to_attn_mask(attention_mask)  # (B, 1, 1, T), True = may attend
        return self.embeddings(input_ids, token_type_ids), mask  # (B, T, H)

    @torch.no_grad()
    def attention_maps(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Attention weights of every layer and head, ``(L, B, nh, T, T)`` (explicit math, no dropout).

        Taught in ``02_bert_encoder_and_mlm``.
        """
        x, mask = self._embed(input_ids, attention_mask, token_type_ids)
        maps = []
        for block in self.blocks:
            x, w = block(x, mask, need_weights=True)
            maps.append(w)
        return torch.stack(maps)

    # ---- heads
    def masked_logits(self, hidden: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Joint-vocabulary logits ``(M, V)`` at the ``M`` positions where ``where`` ``(B, T)`` is True.

        Only the masked positions go through the head: with 15% masked and a
        vocabulary of 50k words and visual tokens this is most of a
        pretraining step saved. Taught in ``02_bert_encoder_and_mlm``.
        """
        return self.mlm_head(hidden[where], self.embeddings.word.weight)  # (M, H) -> (M, V)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        alignment_labels: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        alignment_groups: torch.Tensor | None = None,
    ) -> VideoBertOutput:
        """Encode and run the heads; a loss for each head given labels.

        ``mlm_labels`` ``(B, T)``: the original id at masked positions,
        ``-100`` elsewhere (logits are computed only where it is not -100);
        ``alignment_labels`` ``(B,)``: 1 when text and video belong together, 0 when not, -100 to ignore;
        ``labels`` ``(B,)`` sequence classes; ``token_labels`` ``(B, T)``
        (-100 = ignore). ``alignment_groups`` ``(B,)`` (with ``alignment_labels``):
        rows sharing a group id ``>= 0`` are the ``n x n`` pairs of ``n``
        sentences with ``n`` videos, row-major, aligned on the diagonal; they add
        the contrastive loss ``"alignment_contrastive"`` (see
        :func:`contrastive_alignment_loss`) and weigh their positives ``n - 1``
        in the binary loss, as many as their negatives. Taught in
        ``02_bert_encoder_and_mlm``; the groups in ``07_videobert_pretraining``.
        """
        hidden = self.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        out = VideoBertOutput(hidden=hidden)
        if mlm_labels is not None:
            if mlm_labels.shape != input_ids.shape:
                raise ValueError(f"mlm_labels should have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(mlm_labels.shape)}")
            where = mlm_labels != IGNORE_INDEX  # (B, T)
            out.masked_logits = self.masked_logits(hidden, where)  # (M, V)
            out.losses["masked_tokens"] = F.cross_entropy(out.masked_logits, mlm_labels[where])
        pooled = self.pooler(hidden, attention_mask)  # (B, H)
        out.alignment_logits = self.alignment_head(pooled)  # (B, 2)
        if alignment_labels is not None:  # rows labelled -100 take no part (none at all: a zero loss, graph kept)
            labelled = alignment_labels != IGNORE_INDEX
            if alignment_groups is None:
                out.losses["alignment"] = (F.cross_entropy(out.alignment_logits[labelled], alignment_labels[labelled].long())
                                           if labelled.any() else out.alignment_logits.sum() * 0.0)
            else:
                out.losses["alignment"], out.losses["alignment_contrastive"] = contrastive_alignment_loss(
                    out.alignment_logits, alignment_labels, alignment_groups)
        if self.classifier is not None:
            out.logits = self.classifier(self.head_drop(pooled))  # (B, num_labels)
            if labels is not None:
                out.losses["classification"] = F.cross_entropy(out.logits, labels.long())
        if self.token_classifier is not None:
            out.token_logits = self.token_classifier(self.head_drop(hidden))  # (B, T, num_token_labels)
            if token_labels is not None:
                out.losses["token_classification"] = F.cross_entropy(
                    out.token_logits.flatten(0, 1), token_labels.flatten().long(), ignore_index=IGNORE_INDEX
                )
        if out.losses:
            out.loss = sum(out.losses.values())
        return out

    # ---- visual and audio vocabularies
    @torch.no_grad()
    def init_visual_embeddings(self, centroids, match_scale: bool = True) -> torch.Tensor:
        """Set the visual token embeddings from the k-means centroids ``(n_visual_tokens, D)``.

        When ``D != hidden_size`` the centroids are projected (PCA down, an
        orthonormal lift up: both keep their geometry, see
        :func:`project_centroids`); with ``match_scale`` their mean norm is set to
        that of the word embeddings, so words and visual tokens enter the
        encoder on one scale. Returns the ``(D, H)`` projection used (identity
        when ``D == H``). As in the paper; taught in ``02_bert_encoder_and_mlm``.
        """
        return self._init_rows(self.config.visual_offset, self.config.n_visual_tokens, centroids, match_scale, "visual")

    @torch.no_grad()
    def init_audio_embeddings(self, centroids, match_scale: bool = True) -> torch.Tensor:
        """As :meth:`init_visual_embeddings`, for the audio tokens."""
        return self._init_rows(self.config.audio_offset, self.config.n_audio_tokens, centroids, match_scale, "audio")

    @torch.no_grad()
    def anchor_visual_embeddings(self, counts, word_ids, weight: float = 0.5, power: float = 0.75) -> torch.Tensor:
        """Turn each visual token's embedding towards the words it co-occurs with; returns the words' mix ``(n, W)``.

        ``counts`` ``(n_visual_tokens, W)``: how often visual token ``i`` and
        word ``word_ids[j]`` appear in the same training segment (the pairs
        pretraining reads; no labels). Each token's target is the mean of the
        word embeddings weighted by positive pointwise mutual information,
        ``PPMI(i, w) = max(0, log P(i, w) / (P(i) P_a(w)))`` with the words'
        marginal smoothed by ``power`` (Levy et al., 2015), so that rare words
        do not win by being rare. The row becomes ``(1 - weight) * row +
        weight * target``, at the word embeddings' mean norm; a token that
        co-occurs with none of the words keeps its row. Not the paper's (its
        visual rows are the centroids alone): with the MLM head tied to this
        table, a token whose row sits among "onion" and "slice" makes those
        words likelier from the first step. Taught in ``07_videobert_pretraining``.
        """
        cfg = self.config
        ids = torch.as_tensor(word_ids, dtype=torch.long).reshape(-1)
        c = torch.as_tensor(counts, dtype=torch.float64)
        if c.shape != (cfg.n_visual_tokens, len(ids)):
            raise ValueError(f"counts should be (n_visual_tokens, len(word_ids)) = ({cfg.n_visual_tokens}, {len(ids)}), "
                             f"got {tuple(c.shape)}")
        if len(ids) and not bool(((ids >= 0) & (ids < cfg.vocab_size)).all()):
            raise ValueError(f"word_ids must be word ids in [0, {cfg.vocab_size}), got {ids.tolist()}")
        if not 0 <= weight <= 1 or (c < 0).any():
            raise ValueError(f"weight={weight} must be in [0, 1] and counts >= 0")
        table = self.embeddings.word.weight
        total = c.sum()
        if total == 0:
            return torch.zeros_like(c).to(table.dtype)
        p_joint = c / total
        p_token = p_joint.sum(1, keepdim=True)
        p_word = c.sum(0, keepdim=True) ** power
        p_word = p_word / p_word.sum()
        pmi = torch.log(p_joint / (p_token * p_word))
        ppmi = torch.where(c > 0, pmi, torch.zeros_like(pmi)).clamp_min(0).nan_to_num(0.0, posinf=0.0)
        mass = ppmi.sum(1, keepdim=True)
        mix = torch.where(mass > 0, ppmi / mass.clamp_min(1e-300), torch.zeros_like(ppmi))
        norm = table[: cfg.vocab_size].double().norm(dim=1).mean()
        target = mix @ table[ids].double()
        target = target * (norm / target.norm(dim=1, keepdim=True).clamp_min(1e-12))
        rows = table[cfg.visual_offset : cfg.visual_offset + cfg.n_visual_tokens].double()
        blended = (1 - weight) * rows + weight * target
        blended = blended * (norm / blended.norm(dim=1, keepdim=True).clamp_min(1e-12))
        keep = mass.squeeze(1) == 0
        blended[keep] = rows[keep]
        table[cfg.visual_offset : cfg.visual_offset + cfg.n_visual_tokens] = blended.to(table.dtype)
        return mix.to(table.dtype)

    def _init_rows(self, offset, n, centroids, match_scale, what):
        weight = self.embeddings.word.weight
        c = torch.as_tensor(centroids).to(torch.float64)
        if c.dim() != 2 or c.shape[0] != n:
            raise ValueError(f"{what} centroids should be ({n}, D): one row per {what} token of the config; got {tuple(c.shape)}")
        rows, proj = project_centroids(c, self.config.hidden_size)
        if match_scale:
            target = weight[: self.config.vocab_size].double().norm(dim=1).mean()
            rows = rows * (target / rows.norm(dim=1).mean().clamp_min(1e-12))
        weight[offset : offset + n] = rows.to(weight.dtype)
        return proj.to(weight.dtype)

    # ---- save and load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``; see :meth:`from_pretrained`.

        Taught in ``02_bert_encoder_and_mlm``.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"model_type": FORMAT, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt", "model_type": FORMAT})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VideoBert":
        """A model saved by :meth:`save_pretrained` (safetensors: nothing is unpickled).

        A Hugging Face BERT folder is refused with a pointer to
        :func:`vbert_lab.hf.load_bert`. Taught in ``02_bert_encoder_and_mlm``.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, weights = directory / "config.json", directory / "model.safetensors"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{cfg_path}: missing; point from_pretrained at a folder written by VideoBert.save_pretrained")
        meta = json.loads(cfg_path.read_text())
        kind = meta.pop("model_type", None)
        if kind != FORMAT:
            hint = " (a Hugging Face BERT checkpoint: use vbert_lab.hf.load_bert)" if kind == "bert" else ""
            raise ValueError(f"{cfg_path}: model_type is {kind!r}, not {FORMAT!r}{hint}")
        version = meta.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format_version {version} is not the {FORMAT_VERSION} this vbert_lab reads")
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: missing; the folder has a config but no weights")
        model = cls(VideoBertConfig.from_dict(meta))
        model.load_state_dict(load_file(str(weights), device=str(map_location)))
        return model.to(map_location)

    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameter count (``embeddings=False``: without the embedding tables)."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= sum(p.numel() for p in self.embeddings.parameters())
        return n


def project_centroids(centroids: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map centroids ``(n, D)`` to ``(n, dim)``; returns ``(rows, projection (D, dim))``.

    ``D == dim``: unchanged. ``D > dim``: PCA (centred, the top ``dim``
    principal directions). ``D < dim``: a fixed orthonormal lift (seeded), so
    distances between centroids are kept exactly. Taught in
    ``02_bert_encoder_and_mlm``.
    """
    c = torch.as_tensor(centroids).to(torch.float64)
    n, D = c.shape
    if D == dim:
        return c.clone(), torch.eye(D, dtype=c.dtype)
    centred = c - c.mean(dim=0, keepdim=True)
    if D > dim:
        if n < dim:
            raise ValueError(f"PCA from {D} to {dim} dimensions needs at least {dim} centroids, got {n}")
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(n, D), D)
        proj = vh[:dim].T  # (D, dim)
    else:
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dim, D, generator=g, dtype=c.dtype))  # (dim, D), orthonormal columns
        proj = q.T  # (D, dim), orthonormal rows
    return centred @ proj, proj
