"""Multimodal sequences: ``[CLS] text [>] video [SEP]``, masking, noise, alignment pairs, batches.

Taught in ``06_text_and_multimodal_sequences``. Ids follow the joint layout of
:class:`~vbert_lab.model.VideoBertConfig` (its one home): text ids
``[0, vocab_size)``, ``[>]``, visual token ``k`` at ``config.visual_token_id(k)``,
audio token ``k`` at ``config.audio_token_id(k)``. Token types are
``config.modality(ids)``: TEXT for words and ``[CLS]``/``[>]``/``[SEP]``, VIDEO
for visual tokens, AUDIO for audio tokens. Positions are ``0..T-1``.

Layouts built by :func:`build_sequence`::

    text and video     [CLS] w1 .. wn [>] v1 .. vm [SEP]
    with audio         [CLS] w1 .. wn [>] v1 .. vm [>] a1 .. ar [SEP]
    video only         [CLS] [>] v1 .. vm [SEP]
    text only          [CLS] w1 .. wn [SEP]

Token files: one JSON file per video (:class:`VideoTokens`: visual and audio
token per clip, and the narration's sentences with their WordPiece ids and
clip ranges), written by :func:`save_video_tokens`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .model import AUDIO, IGNORE_INDEX, TEXT, VIDEO, VideoBertConfig

__all__ = [
    "VideoTokens",
    "TokenSegment",
    "save_video_tokens",
    "load_video_tokens",
    "load_token_dir",
    "make_video_tokens",
    "segments_of",
    "build_sequence",
    "join_neighbours",
    "subsample_stride",
    "misaligned_segment",
    "alignment_pairs",
    "mask_tokens",
    "Collator",
    "describe",
]

TOKENS_FORMAT = "vbert_lab.video_tokens"


# --------------------------------------------------------------------------- token files


@dataclass
class VideoTokens:
    """The tokens of one video: per clip a visual (and audio) token, and its sentences.

    ``visual``/``audio``: cluster indices ``[0, n_visual_tokens)`` (not joint
    ids). ``sentences``: ``{"start", "end", "text", "ids", "first_clip",
    "last_clip"}`` per sentence (ids: WordPiece). Taught in ``06_text_and_multimodal_sequences``.
    """

    video_id: str
    visual: list[int]
    audio: list[int] | None = None
    sentences: list[dict] = field(default_factory=list)
    clip_seconds: float = 1.5

    @property
    def n_clips(self) -> int:
        return len(self.visual)


def make_video_tokens(video_id: str, visual, sentences, tokenizer, audio=None, clip_seconds: float = 1.5) -> VideoTokens:
    """Tie a video's clip tokens to its sentences (:class:`~vbert_lab.text.Sentence`), aligned by time.

    Taught in ``06_text_and_multimodal_sequences``.
    """
    from .text import align_to_clips

    visual = [int(v) for v in (visual.tolist() if hasattr(visual, "tolist") else visual)]
    if audio is not None:
        audio = [int(a) for a in (audio.tolist() if hasattr(audio, "tolist") else audio)]
        if len(audio) != len(visual):
            raise ValueError(f"{video_id}: {len(audio)} audio tokens but {len(visual)} visual tokens; give one of each per clip")
    rows = []
    ids = tokenizer.encode_batch([s.text for s in sentences]) if sentences else []
    for s, word_ids, (a, b) in zip(sentences, ids, align_to_clips(sentences, len(visual), clip_seconds)):
        rows.append({"start": s.start, "end": s.end, "text": s.text, "ids": word_ids, "first_clip": a, "last_clip": b})
    return VideoTokens(video_id, visual, audio, rows, clip_seconds)


def save_video_tokens(tokens: VideoTokens, directory: str | os.PathLike) -> Path:
    """Write ``<directory>/<video_id>.tokens.json``; returns the path. Taught in ``06_text_and_multimodal_sequences``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{tokens.video_id}.tokens.json"
    payload = {"format": TOKENS_FORMAT, "version": 1, **asdict(tokens)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload) + "\n")
    tmp.replace(path)
    return path


def load_video_tokens(path: str | os.PathLike) -> VideoTokens:
    """Read a file written by :func:`save_video_tokens`. Taught in ``06_text_and_multimodal_sequences``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a token file ({err}); rewrite it with save_video_tokens") from None
    if raw.get("format") != TOKENS_FORMAT:
        raise ValueError(f"{path}: format is {raw.get('format')!r}, expected {TOKENS_FORMAT!r}")
    return VideoTokens(raw["video_id"], raw["visual"], raw.get("audio"), raw.get("sentences", []), raw.get("clip_seconds", 1.5))


def load_token_dir(directory: str | os.PathLike) -> list[VideoTokens]:
    """Every ``*.tokens.json`` of a folder, by video id. Taught in ``06_text_and_multimodal_sequences``."""
    files = sorted(Path(directory).glob("*.tokens.json"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.tokens.json token files; write them with save_video_tokens")
    return [load_video_tokens(f) for f in files]


# --------------------------------------------------------------------------- segments


@dataclass
class TokenSegment:
    """One training segment: WordPiece ids, visual (and audio) cluster indices, the video it is from."""

    video_id: str
    text: list[int]
    visual: list[int]
    audio: list[int] | None = None


def segments_of(video: VideoTokens, clips_without_text: int = 16) -> list[TokenSegment]:
    """A video's segments: each sentence with the tokens of its clips; without narration, 16 clips each.

    Taught in ``06_text_and_multimodal_sequences``.
    """
    def cut(seq, a, b):
        return None if seq is None else list(seq[a:b])

    rows = [s for s in video.sentences if s["last_clip"] > s["first_clip"]]
    if not video.sentences:
        spans = [([], a, min(a + clips_without_text, video.n_clips)) for a in range(0, video.n_clips, clips_without_text)]
    else:
        spans = [(list(s["ids"]), s["first_clip"], s["last_clip"]) for s in rows]
    return [TokenSegment(video.video_id, ids, cut(video.visual, a, b), cut(video.audio, a, b)) for ids, a, b in spans]


# --------------------------------------------------------------------------- noise (the paper's)


def join_neighbours(segments: list[TokenSegment], rng: random.Random, p_join: float = 0.5, max_join: int = 3) -> list[TokenSegment]:
    """Randomly concatenate runs of neighbouring segments of the same video (text and tokens alike).

    From each segment, with probability ``p_join``, a run of 2..``max_join``
    neighbours is joined. Taught in ``06_text_and_multimodal_sequences``.
    """
    out, i = [], 0
    while i < len(segments):
        j = i + 1
        if max_join > 1 and rng.random() < p_join:
            j = min(i + rng.randint(2, max_join), len(segments))
            while j > i + 1 and any(s.video_id != segments[i].video_id for s in segments[i:j]):
                j -= 1
        run = segments[i:j]
        audio = None if run[0].audio is None else [a for s in run for a in s.audio]
        out.append(TokenSegment(run[0].video_id, [w for s in run for w in s.text], [v for s in run for v in s.visual], audio))
        i = j
    return out


def subsample_stride(tokens: Sequence[int], rng: random.Random, max_stride: int = 5) -> tuple[list[int], int, int]:
    """Every ``stride``-th token from a random offset, ``stride`` uniform in 1..``max_stride``: (tokens, stride, offset).

    Taught in ``06_text_and_multimodal_sequences``.
    """
    stride = rng.randint(1, max_stride)
    offset = rng.randrange(stride) if len(tokens) > stride else 0
    return list(tokens[offset::stride]), stride, offset


def misaligned_segment(own: TokenSegment, other: TokenSegment, randrange: Callable[[int], int]) -> TokenSegment:
    """``own``'s text with as many of ``other``'s video (and audio) tokens as ``own`` has: a negative pair.

    The tokens are a window of ``other``'s, at a start drawn with
    ``randrange(n)`` (``random.Random.randrange``, or a seeded torch draw), and
    repeat end to end where ``other`` is the shorter. With ``other``'s tokens as
    they are, the count of video tokens beside the count of words would tell a
    negative from a positive without looking at either, a shortcut an alignment
    head can take instead of the video: on TinyCook's pretraining pairs a
    classifier on the lengths alone gets 62-64 % of the labels right, where
    the larger class is 51-52 % (``bench/studies/pair_lengths.py``). Taught in
    ``06_text_and_multimodal_sequences``.
    """
    n, have = len(own.visual), len(other.visual)
    if not n or not have:
        return TokenSegment(own.video_id, own.text, list(other.visual), other.audio)
    start = randrange(have - n + 1) if have >= n else randrange(have)

    def window(tokens):
        return [tokens[(start + i) % len(tokens)] for i in range(n)] if tokens else tokens

    audio = window(other.audio) if other.audio and len(other.audio) == have else other.audio
    return TokenSegment(own.video_id, own.text, window(list(other.visual)), audio)


def alignment_pairs(segments: list[TokenSegment], rng: random.Random, p_misaligned: float = 0.5) -> list[tuple[TokenSegment, int]]:
    """(segment, label) pairs: label 1 keeps the segment's own video, 0 swaps in another video's tokens.

    Negatives come from a segment of a different video where there is one
    (any other segment otherwise), cut or repeated to the segment's own
    number of tokens (:func:`misaligned_segment`); segments without text are
    always kept as they are (label 1). Taught in ``06_text_and_multimodal_sequences``.
    """
    out = []
    for i, seg in enumerate(segments):
        if seg.text and len(segments) > 1 and rng.random() < p_misaligned:
            others = [j for j, s in enumerate(segments) if s.video_id != seg.video_id] or [j for j in range(len(segments)) if j != i]
            out.append((misaligned_segment(seg, segments[rng.choice(others)], rng.randrange), 0))
        else:
            out.append((seg, 1))
    return out


# --------------------------------------------------------------------------- sequences


def build_sequence(config: VideoBertConfig, text: Sequence[int] = (), visual: Sequence[int] = (),
                   audio: Sequence[int] | None = None, max_len: int | None = None) -> dict[str, torch.Tensor]:
    """One sequence: ``input_ids`` and ``token_type_ids``, each (T,); positions are 0..T-1 in the model.

    ``text``: WordPiece ids; ``visual``/``audio``: cluster indices (mapped to
    joint ids here). ``max_len`` (default ``config.max_position_embeddings``):
    the longest part is cut first until the sequence fits. Taught in
    ``06_text_and_multimodal_sequences``.
    """
    text, visual, audio = [int(t) for t in text], [int(v) for v in visual], (None if audio is None else [int(a) for a in audio])
    for name, seq, n in (("visual", visual, config.n_visual_tokens), ("audio", audio or [], config.n_audio_tokens)):
        if seq and (min(seq) < 0 or max(seq) >= n):
            raise ValueError(f"{name} tokens span [{min(seq)}, {max(seq)}] but the config has {n} {name} tokens "
                             f"(n_{name}_tokens); build the config with the codebook's k**depth")
    if text and (min(text) < 0 or max(text) >= config.vocab_size):
        raise ValueError(f"text ids span [{min(text)}, {max(text)}] but the config's WordPiece vocabulary has {config.vocab_size} ids")
    if not text and not visual and not audio:
        raise ValueError("a sequence needs text, visual or audio tokens; all three are empty")
    max_len = config.max_position_embeddings if max_len is None else max_len
    parts = [text, visual] + ([audio] if audio else [])
    overhead = 2 + (1 if visual or audio else 0) + (1 if audio else 0)
    if max_len < overhead + len([p for p in parts if p]):
        raise ValueError(f"max_len={max_len} leaves no room for the tokens (needs at least {overhead + 1})")
    while sum(len(p) for p in parts) + overhead > max_len:
        longest = max(parts, key=len)
        longest.pop()
    jn = config.special_token_id("[>]")
    ids = [config.cls_token_id] + text
    if visual or audio:
        ids += [jn] + [config.visual_token_id(v) for v in visual]
    if audio:
        ids += [jn] + [config.audio_token_id(a) for a in audio]
    ids.append(config.sep_token_id)
    input_ids = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": input_ids, "token_type_ids": config.modality(input_ids)}


def mask_tokens(input_ids: torch.Tensor, config: VideoBertConfig, text_rate: float = 0.15, video_rate: float = 0.15,
                audio_rate: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking per modality: (masked input_ids, mlm_labels), any shape.

    Each word, visual or audio token is picked with its modality's rate
    (special ids ``[PAD] [CLS] [SEP] [MASK]`` and ``[>]`` never). A picked
    token becomes ``[MASK]`` with ``mask_fraction`` (0.8), a random token of the
    same modality with ``random_fraction`` (0.1), else stays (0.1); its label
    is the original id, every other label ``IGNORE_INDEX`` (-100). Taught in
    ``06_text_and_multimodal_sequences``.
    """
    for name, r in (("text_rate", text_rate), ("video_rate", video_rate), ("audio_rate", audio_rate),
                    ("mask_fraction", mask_fraction), ("random_fraction", random_fraction)):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"{name}={r} must be in [0, 1]")
    if mask_fraction + random_fraction > 1.0:
        raise ValueError(f"mask_fraction + random_fraction = {mask_fraction + random_fraction} must be <= 1")
    ids = input_ids
    cpu = ids.cpu()
    special = torch.tensor([config.pad_token_id, config.cls_token_id, config.sep_token_id, config.mask_token_id])
    is_text = (cpu < config.vocab_size) & ~torch.isin(cpu, special)
    is_video = (cpu >= config.visual_offset) & (cpu < config.audio_offset)
    is_audio = cpu >= config.audio_offset
    rate = torch.zeros(cpu.shape)
    rate[is_text], rate[is_video], rate[is_audio] = text_rate, video_rate, audio_rate
    picked = torch.rand(cpu.shape, generator=generator) < rate
    how = torch.rand(cpu.shape, generator=generator)
    to_mask = picked & (how < mask_fraction)
    to_random = picked & (how >= mask_fraction) & (how < mask_fraction + random_fraction)
    out = cpu.clone()
    out[to_mask] = config.mask_token_id
    # random replacements stay within the token's modality (words avoid the special ids)
    words = torch.arange(config.vocab_size)
    words = words[~torch.isin(words, special)]
    r_word = words[torch.randint(len(words), cpu.shape, generator=generator)]
    r_vis = config.visual_offset + torch.randint(max(config.n_visual_tokens, 1), cpu.shape, generator=generator)
    r_aud = config.audio_offset + torch.randint(max(config.n_audio_tokens, 1), cpu.shape, generator=generator)
    out = torch.where(to_random & is_text, r_word, out)
    out = torch.where(to_random & is_video, r_vis, out)
    out = torch.where(to_random & is_audio, r_aud, out)
    labels = torch.where(picked, cpu, torch.full_like(cpu, IGNORE_INDEX))
    return out.to(ids.device), labels.to(ids.device)


class Collator:
    """``collate_fn`` for a DataLoader of :func:`build_sequence` dicts (optionally with ``"alignment_label"``).

    Pads to the longest sequence with ``[PAD]``; returns ``input_ids``,
    ``token_type_ids``, ``attention_mask`` (1 token, 0 pad),
    ``mlm_labels`` when ``mask`` (see :func:`mask_tokens`, rates per modality),
    ``alignment_labels`` when the examples have them: the keyword arguments
    of :meth:`VideoBert.forward`. Taught in ``06_text_and_multimodal_sequences``.
    """

    def __init__(self, config: VideoBertConfig, mask: bool = True, text_rate: float = 0.15, video_rate: float = 0.15,
                 audio_rate: float = 0.15, seed: int = 0):
        self.config, self.mask = config, mask
        self.rates = dict(text_rate=text_rate, video_rate=video_rate, audio_rate=audio_rate)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        T = max(len(e["input_ids"]) for e in examples)
        B = len(examples)
        ids = torch.full((B, T), self.config.pad_token_id, dtype=torch.long)
        types = torch.full((B, T), TEXT, dtype=torch.long)
        attn = torch.zeros(B, T, dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[b, :n], types[b, :n], attn[b, :n] = e["input_ids"], e["token_type_ids"], 1
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": attn}
        if self.mask:
            batch["input_ids"], batch["mlm_labels"] = mask_tokens(ids, self.config, generator=self.generator, **self.rates)
        if "alignment_label" in examples[0]:
            batch["alignment_labels"] = torch.tensor([int(e["alignment_label"]) for e in examples], dtype=torch.long)
        return batch


def describe(input_ids: Iterable[int], config: VideoBertConfig, tokenizer=None) -> list[str]:
    """Readable names of joint ids: words (with a tokenizer), ``[>]``, ``v123`` visual, ``a7`` audio.

    Taught in ``06_text_and_multimodal_sequences``.
    """
    names = {config.pad_token_id: "[PAD]", config.cls_token_id: "[CLS]", config.sep_token_id: "[SEP]", config.mask_token_id: "[MASK]"}
    out = []
    for i in (input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids):
        i = int(i)
        if i >= config.audio_offset:
            out.append(f"a{i - config.audio_offset}")
        elif i >= config.visual_offset:
            out.append(f"v{i - config.visual_offset}")
        elif i >= config.vocab_size:
            out.append(config.special_tokens[i - config.vocab_size])
        elif i in names:
            out.append(names[i])
        else:
            out.append(tokenizer.tokens([i])[0] if tokenizer is not None else f"w{i}")
    return out
