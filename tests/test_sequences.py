"""[CLS] text [>] video [SEP]: layout, masking, noise, alignment pairs, collate, token files."""

from __future__ import annotations

import random

import pytest
import torch

from vbert_lab.model import AUDIO, IGNORE_INDEX, TEXT, VIDEO, VideoBert, VideoBertConfig
from vbert_lab.sequences import (
    Collator,
    TokenSegment,
    VideoTokens,
    alignment_pairs,
    misaligned_segment,
    build_sequence,
    describe,
    join_neighbours,
    load_token_dir,
    load_video_tokens,
    make_video_tokens,
    mask_tokens,
    save_video_tokens,
    segments_of,
    subsample_stride,
)
from vbert_lab.text import Sentence, WordPiece


@pytest.fixture(scope="module")
def cfg():
    return VideoBertConfig(n_visual_tokens=144, n_audio_tokens=20, hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def wordpiece():
    return WordPiece.from_pretrained()


def test_text_video_layout_types_and_positions(cfg, wordpiece):
    words = wordpiece.encode("slice the tomato")
    seq = build_sequence(cfg, words, [0, 5, 143])
    expected = [cfg.cls_token_id, *words, cfg.special_token_id("[>]"), cfg.visual_offset, cfg.visual_offset + 5,
                cfg.visual_offset + 143, cfg.sep_token_id]
    assert seq["input_ids"].tolist() == expected
    n = len(words)
    assert seq["token_type_ids"].tolist() == [TEXT] * (n + 2) + [VIDEO] * 3 + [TEXT]
    assert set(seq) == {"input_ids", "token_type_ids"}  # positions are 0..T-1 inside the model
    assert describe(seq["input_ids"], cfg, wordpiece) == ["[CLS]", "slice", "the", "tomato", "[>]", "v0", "v5", "v143", "[SEP]"]


def test_audio_variant_and_single_modalities(cfg):
    seq = build_sequence(cfg, [2000], [1, 2], audio=[3, 19])
    assert describe(seq["input_ids"], cfg) == ["[CLS]", "w2000", "[>]", "v1", "v2", "[>]", "a3", "a19", "[SEP]"]
    assert seq["token_type_ids"].tolist() == [TEXT, TEXT, TEXT, VIDEO, VIDEO, TEXT, AUDIO, AUDIO, TEXT]
    assert describe(build_sequence(cfg, [], [7])["input_ids"], cfg) == ["[CLS]", "[>]", "v7", "[SEP]"]
    assert describe(build_sequence(cfg, [2000])["input_ids"], cfg) == ["[CLS]", "w2000", "[SEP]"]


def test_truncation_and_bad_ids(cfg):
    seq = build_sequence(cfg, list(range(2000, 2040)), list(range(50)), max_len=30)
    assert len(seq["input_ids"]) == 30
    kinds = seq["token_type_ids"].tolist()
    assert kinds.count(VIDEO) in (13, 14)  # the longer part was cut first, both stay
    with pytest.raises(ValueError, match="144 visual tokens"):
        build_sequence(cfg, [2000], [144])
    with pytest.raises(ValueError, match="all three are empty"):
        build_sequence(cfg)


def test_masking_rates_per_modality_and_80_10_10(cfg):
    g = torch.Generator().manual_seed(0)
    seq = build_sequence(cfg, list(range(2000, 2030)), list(range(30)), max_len=64)["input_ids"]
    ids = seq.repeat(4000, 1)  # (4000, 64)
    masked, labels = mask_tokens(ids, cfg, text_rate=0.3, video_rate=0.1, generator=g)
    is_text = (ids >= 2000) & (ids < cfg.vocab_size)
    is_video = ids >= cfg.visual_offset
    picked = labels != IGNORE_INDEX
    assert picked[is_text].float().mean() == pytest.approx(0.3, abs=0.01)
    assert picked[is_video].float().mean() == pytest.approx(0.1, abs=0.01)
    special = ~(is_text | is_video)
    assert not picked[special].any()  # [CLS] [>] [SEP] never masked
    assert torch.equal(labels[picked], ids[picked])
    became_mask = masked[picked] == cfg.mask_token_id
    unchanged = masked[picked] == ids[picked]
    assert became_mask.float().mean() == pytest.approx(0.8, abs=0.01)
    assert unchanged.float().mean() == pytest.approx(0.1 + 0.1 / 30, abs=0.01)
    replaced = picked & (masked != cfg.mask_token_id) & (masked != ids)
    assert (masked[replaced & is_video] >= cfg.visual_offset).all()  # random tokens stay in their modality
    assert (masked[replaced & is_video] < cfg.audio_offset).all()
    assert (masked[replaced & is_text] < cfg.vocab_size).all()
    assert torch.equal(masked[~picked], ids[~picked])


def test_noise_join_neighbours_and_stride(cfg):
    rng = random.Random(0)
    segs = [TokenSegment("a", [i], [10 * i, 10 * i + 1]) for i in range(6)] + [TokenSegment("b", [9], [99])]
    joined = join_neighbours(segs, rng, p_join=1.0, max_join=3)
    assert [w for s in joined for w in s.text] == [0, 1, 2, 3, 4, 5, 9]  # nothing lost, order kept
    assert all(len({*map(lambda x: x // 10, s.visual)}) == len(s.text) for s in joined if s.video_id == "a")
    assert any(len(s.text) > 1 for s in joined)
    assert joined[-1].video_id == "b" and joined[-1].text == [9]  # never joined across videos
    strides = set()
    for _ in range(200):
        sub, stride, offset = subsample_stride(list(range(20)), rng)
        assert sub == list(range(20))[offset::stride]
        strides.add(stride)
    assert strides == {1, 2, 3, 4, 5}


def test_alignment_pairs_swap_in_another_videos_tokens():
    rng = random.Random(0)
    segs = [TokenSegment(f"v{i}", [i + 2000], [i]) for i in range(50)]
    pairs = alignment_pairs(segs, rng, p_misaligned=0.5)
    labels = [label for _, label in pairs]
    assert 15 < sum(labels) < 35
    for (seg, label), original in zip(pairs, segs):
        assert seg.text == original.text
        assert (seg.visual == original.visual) == (label == 1)


def test_alignment_pairs_keep_the_number_of_video_tokens_so_length_gives_nothing_away():
    rng = random.Random(0)
    segs = [TokenSegment(f"v{i}", [2000 + i] * (1 + i % 5), [10 * i + j for j in range(1 + i % 5)]) for i in range(60)]
    pairs = alignment_pairs(segs, rng, p_misaligned=0.5)
    assert 15 < sum(label for _, label in pairs) < 45
    for (seg, label), original in zip(pairs, segs):
        assert len(seg.visual) == len(original.visual)
        assert (seg.visual == original.visual) == (label == 1)
        if label == 0:
            assert len({v // 10 for v in seg.visual}) == 1 and seg.visual[0] // 10 != original.visual[0] // 10


def test_a_misaligned_segment_is_a_window_of_the_other_repeated_where_it_is_shorter():
    own = TokenSegment("a", [2000, 2001], [1, 2, 3], [7, 8, 9])
    longer = TokenSegment("b", [2002], [10, 11, 12, 13, 14], [20, 21, 22, 23, 24])
    shorter = TokenSegment("c", [2003], [30, 31], [40, 41])
    starts = []
    seg = misaligned_segment(own, longer, lambda n: starts.append(n) or 2)
    assert starts == [3]  # windows of 3 in 5 tokens start at 0, 1 or 2
    assert (seg.video_id, seg.text, seg.visual, seg.audio) == ("a", [2000, 2001], [12, 13, 14], [22, 23, 24])
    seg = misaligned_segment(own, shorter, lambda n: n - 1)
    assert seg.visual == [31, 30, 31] and seg.audio == [41, 40, 41]


def test_collate_pads_masks_and_feeds_the_model(cfg):
    examples = [dict(build_sequence(cfg, [2000, 2001, 2002], [1, 2, 3, 4]), alignment_label=1),
                dict(build_sequence(cfg, [2003], [5]), alignment_label=0)]
    batch = Collator(cfg, seed=0, text_rate=0.5, video_rate=0.5)(examples)
    assert batch["input_ids"].shape == (2, 10)
    assert batch["attention_mask"].tolist() == [[1] * 10, [1] * 5 + [0] * 5]
    assert (batch["input_ids"][1, 5:] == cfg.pad_token_id).all()
    assert (batch["mlm_labels"][1, 5:] == IGNORE_INDEX).all()
    assert batch["alignment_labels"].tolist() == [1, 0]
    model = VideoBert(cfg)
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                mlm_labels=batch["mlm_labels"], alignment_labels=batch["alignment_labels"])
    assert torch.isfinite(out.loss)


def test_token_files_round_trip_and_segments(tmp_path, wordpiece):
    sentences = [Sentence(0.2, 2.0, "slice the tomato"), Sentence(3.2, 4.6, "fry it")]
    video = make_video_tokens("tc00001", [4, 5, 6, 7], sentences, wordpiece, audio=[1, 1, 2, 2])
    path = save_video_tokens(video, tmp_path)
    assert path.name == "tc00001.tokens.json"
    back = load_video_tokens(path)
    assert back == video
    segs = segments_of(back)
    assert [(s.visual, s.audio) for s in segs] == [([4, 5], [1, 1]), ([6, 7], [2, 2])]
    assert segs[0].text == wordpiece.encode("slice the tomato")
    silent = VideoTokens("tc00002", list(range(20)))
    save_video_tokens(silent, tmp_path)
    assert [len(s.visual) for s in segments_of(silent)] == [16, 4]
    assert [v.video_id for v in load_token_dir(tmp_path)] == ["tc00001", "tc00002"]
    (tmp_path / "bad.tokens.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.tokens.json: cannot read"):
        load_token_dir(tmp_path)
