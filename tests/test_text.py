"""WordPiece through `tokenizers`, sentences from ASR-like narration, alignment to 1.5 s clips."""

from __future__ import annotations

import pytest

from vbert_lab.model import VideoBertConfig
from vbert_lab.text import (
    Sentence,
    WordPiece,
    align_to_clips,
    build_sentences,
    sentences_from_captions,
    video_segments,
)
from vbert_lab.tinycook import captions_dict, plan_world


@pytest.fixture(scope="module")
def wordpiece():
    return WordPiece.from_pretrained()


def test_wordpiece_matches_transformers_bert_tokenizer(wordpiece):
    from vbert_lab.hf import load_tokenizer

    reference = load_tokenizer()  # transformers' BertTokenizerFast of the same checkpoint
    for text in ["now let me show you how to julienne the zucchini, ok?", "Naïve CAFÉ au lait", "fry the egg 2x"]:
        assert wordpiece.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert wordpiece.vocab_size == 30522
    assert wordpiece.tokens(wordpiece.encode("zucchini")) == ["zu", "##cchi", "##ni"]


def test_wordpiece_ids_fit_the_joint_layout(wordpiece):
    cfg = VideoBertConfig(n_visual_tokens=144)
    wordpiece.check_config(cfg)  # text ids [0, 30522); [>] and visual ids come after
    assert max(wordpiece.encode("slice the tomato")) < cfg.special_token_id("[>]") < cfg.visual_token_id(0)
    with pytest.raises(ValueError, match="vocab_size=1000 but .*30522"):
        wordpiece.check_config(VideoBertConfig(vocab_size=1000))


def test_unknown_word_is_a_clear_error_on_request(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "slice", "the", "##s"]) + "\n")
    small = WordPiece(vocab)
    assert small.encode("slice the slices") == [5, 6, 5, 7]  # slice ##s
    assert small.encode("slice the slicer") == [5, 6, 1]  # "slicer" cannot be spelled: [UNK]
    with pytest.raises(ValueError, match=r"\['tomato'\] cannot be spelled.*vocab.txt"):
        small.encode("slice the tomato", on_unknown="error")


@pytest.mark.parametrize("content, message", [
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", r"\['\[MASK\]'\] are missing"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nthe\n", "'the' appears twice"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n\nthe\n", "line 6"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ntwo words\n", "line 6 holds 'two words'"),
])
def test_malformed_vocab_file_is_a_clear_error(tmp_path, content, message):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(content)
    with pytest.raises(ValueError, match=message):
        WordPiece(vocab)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordPiece(tmp_path / "vocab.txt")


def test_sentences_join_short_pauses_and_cut_long_ones():
    got = build_sentences([0.0, 1.05, 3.0, 3.1], [1.0, 2.0, 3.05, 4.0], ["now we", "slice it", "then", "fry it"])
    assert got == [Sentence(0.0, 2.0, "now we slice it"), Sentence(3.0, 4.0, "then fry it")]
    capped = build_sentences([0, 1, 2], [1, 2, 3], ["a b c", "d e", "f"], max_pause=5, max_words=4)
    assert [s.text for s in capped] == ["a b c", "d e f"]
    with pytest.raises(ValueError, match="start <= end"):
        build_sentences([2.0], [1.0], ["oops"])


def test_tinycook_step_narration_becomes_one_sentence_each():
    """Every step sentence TinyCook's narrator said is recovered whole: its chunks, and no others, in one sentence."""
    plans = plan_world(24, seed=0)
    captions = captions_dict(plans)
    checked = 0
    for plan in plans:
        sentences = sentences_from_captions(captions[plan.video_id])
        assert " ".join(s.text for s in sentences) == " ".join(c.text for c in sorted(plan.captions, key=lambda c: c.start))
        for step in {c.step for c in plan.captions if c.kind == "step"}:
            said = " ".join(c.text for c in plan.captions if c.kind == "step" and c.step == step)
            assert said in [s.text for s in sentences], (plan.video_id, said, sentences)
            checked += 1
    assert checked > 40


def test_alignment_to_clips_by_time():
    sentences = [Sentence(0.2, 1.4, "a"), Sentence(1.4, 3.1, "b"), Sentence(4.5, 4.5, "c"), Sentence(30.0, 31.0, "late")]
    assert align_to_clips(sentences, n_clips=10) == [(0, 1), (0, 3), (3, 4), (10, 10)]
    segments = video_segments(sentences, n_clips=10)
    assert [(s.text, s.first_clip, s.last_clip) for s in segments] == [("a", 0, 1), ("b", 0, 3), ("c", 3, 4)]


def test_video_without_narration_becomes_16_clip_segments():
    segments = video_segments([], n_clips=40)
    assert [(s.text, s.first_clip, s.last_clip) for s in segments] == [("", 0, 16), ("", 16, 32), ("", 32, 40)]
