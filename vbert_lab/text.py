"""Narration to WordPiece ids, and sentences aligned to clips by time.

Taught in ``06_text_and_multimodal_sequences``.

* :class:`WordPiece`: the WordPiece tokenizer of a real BERT vocabulary
  (``vocab.txt`` of a local checkpoint folder such as the packaged
  all-MiniLM-L6-v2, or a hub name where there is internet), run by Hugging
  Face ``tokenizers``. Its ids are the text ids ``[0, vocab_size)`` of the
  joint vocabulary of :class:`~vbert_lab.model.VideoBertConfig`; ``[>]``,
  visual and audio ids come after them (the config is their one home), so
  they never clash with text ids (:meth:`WordPiece.check_config`).
* :func:`build_sentences`: ASR-like narration (short, lower-case,
  unpunctuated chunks with timestamps, HowTo100M's layout) made into
  sentences. The paper punctuated ASR with an off-the-shelf model; the course
  uses an honest, simple rule instead: consecutive chunks join into one
  sentence while the pause between them is at most ``max_pause`` seconds and
  the sentence stays within ``max_words`` words; a longer pause or the word
  limit starts a new sentence. (TinyCook's narrator leaves 0.1 s between the
  chunks of one sentence and at least 0.3 s between sentences, so the default
  ``max_pause=0.2`` recovers its sentences; on real ASR, where chunks often
  abut, the word limit does most of the cutting.)
* :func:`align_to_clips`: each sentence takes the clips its time span
  overlaps; the course's clips are 1.5 s, clip ``i`` spans
  ``[1.5 i, 1.5 (i + 1))``.
* :func:`video_segments`: the (sentence, clip range) segments of one video;
  a video without narration becomes text-less segments of 16 clips (the
  paper's rule).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

__all__ = [
    "WordPiece",
    "load_wordpiece",
    "Sentence",
    "Segment",
    "build_sentences",
    "sentences_from_captions",
    "align_to_clips",
    "video_segments",
    "CLIP_SECONDS",
    "SEGMENT_CLIPS_WITHOUT_TEXT",
]

CLIP_SECONDS = 1.5  # 30 frames at 20 fps (the paper)
SEGMENT_CLIPS_WITHOUT_TEXT = 16  # a video without ASR is cut into segments of 16 visual tokens (the paper)
REQUIRED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --------------------------------------------------------------------------- WordPiece


def _read_vocab(path: Path) -> dict[str, int]:
    """``vocab.txt`` (one token a line, id = line number) as token -> id; clear errors for malformed files."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocabulary file; a BERT checkpoint folder has a vocab.txt (one WordPiece token a line)")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err}); a WordPiece vocab.txt is UTF-8, one token a line") from None
    if lines and lines[-1] == "":
        lines = lines[:-1]
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.rstrip("\r")
        if token == "" or token != token.strip() or " " in token:
            raise ValueError(f"{path}: line {i + 1} holds {token!r}; every line of a WordPiece vocab.txt is one token without spaces")
        if token in vocab:
            raise ValueError(f"{path}: token {token!r} appears twice (lines {vocab[token] + 1} and {i + 1}); ids must be unique")
        vocab[token] = i
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: the BERT special token(s) {missing} are missing; is this a BERT WordPiece vocab.txt?")
    return vocab


class WordPiece:
    """A BERT WordPiece tokenizer (Hugging Face ``tokenizers``) over a ``vocab.txt``.

    ``WordPiece.from_pretrained()`` loads the packaged all-MiniLM-L6-v2
    vocabulary (BERT uncased, 30,522 ids, offline). ``encode(text)`` gives
    word ids without ``[CLS]``/``[SEP]`` (the sequence builder adds those);
    ``on_unknown="error"`` raises on words the vocabulary cannot spell
    instead of mapping them to ``[UNK]``. Taught in ``06_text_and_multimodal_sequences``.
    """

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool = True):
        from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece as WordPieceModel

        self.vocab_file = Path(vocab_file)
        self.vocab = _read_vocab(self.vocab_file)
        self.lowercase = lowercase
        tok = Tokenizer(WordPieceModel(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        self.tokenizer = tok
        self._id_to_token = {i: t for t, i in self.vocab.items()}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None) -> "WordPiece":
        """From a checkpoint folder, a ``vocab.txt`` file, or a hub name (default: the packaged MiniLM, offline)."""
        from .hf import _resolve, minilm_path

        if name_or_path is None:
            folder = minilm_path()
        else:
            path = Path(name_or_path).expanduser()
            if path.is_file():
                return cls(path)
            folder = _resolve(name_or_path)
        lowercase = True
        config = folder / "tokenizer_config.json"
        if config.is_file():
            lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
        return cls(folder / "vocab.txt", lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, token: str) -> int:
        if token not in self.vocab:
            raise KeyError(f"{token!r} is not in {self.vocab_file}")
        return self.vocab[token]

    @property
    def unk_token_id(self) -> int:
        return self.vocab["[UNK]"]

    def encode(self, text: str, on_unknown: str = "unk") -> list[int]:
        """WordPiece ids of ``text`` (no ``[CLS]``/``[SEP]``); ``on_unknown``: "unk" (BERT's) or "error"."""
        if on_unknown not in ("unk", "error"):
            raise ValueError(f"on_unknown={on_unknown!r}; choose 'unk' or 'error'")
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if on_unknown == "error" and self.unk_token_id in enc.ids:
            bad = [text[s:e] for i, (s, e) in zip(enc.ids, enc.offsets) if i == self.unk_token_id]
            raise ValueError(f"{bad} cannot be spelled with the WordPiece vocabulary {self.vocab_file}; "
                             "use on_unknown='unk' to map them to [UNK], or a vocabulary that covers them")
        return list(enc.ids)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The vocabulary strings of text ids."""
        out = []
        for i in ids:
            if int(i) not in self._id_to_token:
                raise ValueError(f"id {int(i)} is not a text id of {self.vocab_file} (0..{self.vocab_size - 1})")
            out.append(self._id_to_token[int(i)])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def check_config(self, config) -> None:
        """Raise if a :class:`~vbert_lab.model.VideoBertConfig`'s text ids disagree with this vocabulary."""
        if config.vocab_size != self.vocab_size:
            raise ValueError(f"the config has vocab_size={config.vocab_size} but {self.vocab_file} has {self.vocab_size} tokens; "
                             "special, visual and audio ids would clash with text ids: build the config with this vocab_size")
        for name, token in (("pad_token_id", "[PAD]"), ("cls_token_id", "[CLS]"), ("sep_token_id", "[SEP]"), ("mask_token_id", "[MASK]")):
            if getattr(config, name) != self.vocab[token]:
                raise ValueError(f"the config has {name}={getattr(config, name)} but {token} is id {self.vocab[token]} in {self.vocab_file}")


def load_wordpiece(name_or_path: str | os.PathLike | None = None) -> WordPiece:
    """:meth:`WordPiece.from_pretrained`. Taught in ``06_text_and_multimodal_sequences``."""
    return WordPiece.from_pretrained(name_or_path)


# --------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Sentence:
    """A sentence of the narration: its text and the span it was said in (seconds)."""

    start: float
    end: float
    text: str


def build_sentences(starts: Iterable[float], ends: Iterable[float], texts: Iterable[str],
                    max_pause: float = 0.2, max_words: int = 32) -> list[Sentence]:
    """Join ASR chunks into sentences: a pause longer than ``max_pause`` s, or ``max_words``, ends a sentence.

    Chunks are sorted by start; empty chunks are dropped. A chunk longer than
    ``max_words`` stays one sentence. Taught in ``06_text_and_multimodal_sequences``.
    """
    starts, ends, texts = list(starts), list(ends), list(texts)
    if not (len(starts) == len(ends) == len(texts)):
        raise ValueError(f"starts, ends and texts should be equally long, got {len(starts)}, {len(ends)}, {len(texts)}")
    if max_pause < 0 or max_words < 1:
        raise ValueError(f"max_pause={max_pause} must be >= 0 and max_words={max_words} >= 1")
    chunks = []
    for s, e, t in zip(starts, ends, texts):
        s, e = float(s), float(e)
        if not (s == s and e == e) or e < s:  # NaN or reversed
            raise ValueError(f"caption {t!r} has start={s}, end={e}; a caption needs start <= end")
        words = str(t).split()
        if words:
            chunks.append((s, e, words))
    chunks.sort(key=lambda c: c[0])
    sentences: list[Sentence] = []
    cur_start = cur_end = None
    cur_words: list[str] = []
    for s, e, words in chunks:
        if cur_words and (s - cur_end > max_pause or len(cur_words) + len(words) > max_words):
            sentences.append(Sentence(cur_start, cur_end, " ".join(cur_words)))
            cur_words = []
        if not cur_words:
            cur_start, cur_end = s, e
        cur_words = cur_words + words
        cur_end = max(cur_end, e)
    if cur_words:
        sentences.append(Sentence(cur_start, cur_end, " ".join(cur_words)))
    return sentences


def sentences_from_captions(captions, max_pause: float = 0.2, max_words: int = 32) -> list[Sentence]:
    """Sentences of one video's narration: a ``{"start", "end", "text"}`` dict of lists
    (``tinycook.load_captions(dir)[video_id]``, HowTo100M's caption.json) or a list of
    :class:`~vbert_lab.datasets.Caption`. Taught in ``06_text_and_multimodal_sequences``.
    """
    if isinstance(captions, Mapping):
        missing = [k for k in ("start", "end", "text") if k not in captions]
        if missing:
            raise ValueError(f"a caption dict needs 'start', 'end' and 'text' lists (HowTo100M layout); missing {missing}")
        return build_sentences(captions["start"], captions["end"], captions["text"], max_pause, max_words)
    captions = list(captions)
    return build_sentences([c.start for c in captions], [c.end for c in captions], [c.text for c in captions], max_pause, max_words)


# --------------------------------------------------------------------------- alignment


def align_to_clips(sentences: Iterable[Sentence], n_clips: int, clip_seconds: float = CLIP_SECONDS) -> list[tuple[int, int]]:
    """Per sentence, the clips ``[first, last)`` whose span overlaps the sentence's.

    Clip ``i`` spans ``[clip_seconds * i, clip_seconds * (i + 1))``; a
    sentence of zero length takes the clip it falls in; a sentence after the
    last clip gets an empty range ``(n_clips, n_clips)``. Taught in
    ``06_text_and_multimodal_sequences``.
    """
    import math

    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds={clip_seconds} must be > 0")
    ranges = []
    for s in sentences:
        first = max(0, math.floor(s.start / clip_seconds))
        last = max(first + 1, math.ceil(s.end / clip_seconds))  # clips starting before the sentence ends
        ranges.append((min(first, n_clips), min(last, n_clips)))
    return ranges


@dataclass(frozen=True)
class Segment:
    """A training segment of one video: a sentence (``""`` when there is no narration) and its clips ``[first_clip, last_clip)``."""

    text: str
    first_clip: int
    last_clip: int
    start: float
    end: float


def video_segments(sentences: list[Sentence], n_clips: int, clip_seconds: float = CLIP_SECONDS,
                   clips_without_text: int = SEGMENT_CLIPS_WITHOUT_TEXT) -> list[Segment]:
    """The segments of one video: sentences with the clips they overlap; without narration, 16-clip segments.

    Sentences that overlap no clip (said after the video's last clip) are
    dropped. Taught in ``06_text_and_multimodal_sequences``.
    """
    if n_clips < 0:
        raise ValueError(f"n_clips={n_clips} must be >= 0")
    if not sentences:
        return [Segment("", a, min(a + clips_without_text, n_clips), a * clip_seconds, min(a + clips_without_text, n_clips) * clip_seconds)
                for a in range(0, n_clips, clips_without_text)]
    out = []
    for s, (a, b) in zip(sentences, align_to_clips(sentences, n_clips, clip_seconds)):
        if b > a:
            out.append(Segment(s.text, a, b, s.start, s.end))
    return out
