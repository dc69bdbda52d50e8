"""vbert_lab.evaluate: the zero-shot template, ranking, alignment, generation and the captioning metrics."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from vbert_lab import evaluate as ev
from vbert_lab.model import VideoBert, VideoBertConfig
from vbert_lab.sequences import Collator, build_sequence
from vbert_lab.text import load_wordpiece
from vbert_lab.tinycook import INGREDIENTS, VERBS


@pytest.fixture(scope="module")
def tok():
    return load_wordpiece()


def small_config(**kw) -> VideoBertConfig:
    args = dict(vocab_size=30522, n_visual_tokens=len(VERBS), hidden_size=8, num_layers=1, num_heads=2,
                intermediate_size=16, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    args.update(kw)
    return VideoBertConfig(**args)


def test_template_has_the_two_masks_where_the_paper_puts_them(tok):
    ids, where = ev.template_ids(tok)
    assert tok.tokens(ids) == ["now", "let", "me", "show", "you", "how", "to", "[MASK]", "the", "[MASK]"]
    assert where == [7, 9]
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        ev.template_ids(tok, "a template without masks")


def test_every_label_is_one_wordpiece_token_and_a_longer_word_is_refused(tok):
    verbs, nouns = ev.label_token_ids(tok, VERBS), ev.label_token_ids(tok, INGREDIENTS)
    assert tok.tokens(verbs) == list(VERBS) and tok.tokens(nouns) == list(INGREDIENTS)
    with pytest.raises(ValueError, match="'zucchinification' is .* WordPiece tokens"):
        ev.label_token_ids(tok, ["zucchinification"])


def test_inputs_put_the_template_first_and_the_video_after_the_joiner(tok):
    cfg = small_config()
    words, where = ev.template_ids(tok)
    batch = ev.zero_shot_inputs(cfg, words, visual=[[1, 2], [3]])
    ids = batch["input_ids"]
    assert ids.shape == (2, 1 + len(words) + 1 + 2 + 1)
    assert (ids[:, 1 + where[0]] == cfg.mask_token_id).all() and (ids[:, 1 + where[1]] == cfg.mask_token_id).all()
    assert ids[0, 1 + len(words)] == cfg.special_token_id("[>]")
    assert ids[0, -3:].tolist() == [cfg.visual_token_id(1), cfg.visual_token_id(2), cfg.sep_token_id]
    assert batch["attention_mask"][1].tolist() == [1] * (ids.shape[1] - 1) + [0]  # one visual token: one pad


class VideoNamesTheAnswer(nn.Module):
    """A hand-made model: visual token k makes VERBS[k] and INGREDIENTS[k] the likeliest words at the masks,
    then VERBS[k+1], VERBS[k+2] ... (so the target's rank is known); without video every row ranks index 0 first."""

    def __init__(self, tok):
        super().__init__()
        self.config = small_config()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.verbs, self.nouns = ev.label_token_ids(tok, VERBS), ev.label_token_ids(tok, INGREDIENTS)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.config
        is_vis = input_ids >= cfg.visual_offset
        first = torch.where(is_vis.any(1), (input_ids - cfg.visual_offset).masked_fill(~is_vis, 10**6).min(1).values, 0)
        pos = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return torch.stack([first[:, None].expand_as(input_ids).float(), pos.float()], -1)  # (B, T, 2)

    def masked_logits(self, hidden, where):
        h = hidden[where]  # (M, 2)
        logits = torch.full((h.shape[0], self.config.joint_vocab_size), -1e9)
        for m, (k, pos) in enumerate(h.long().tolist()):
            labels = self.verbs if pos == 8 else self.nouns  # template masks sit at 1 + 7 and 1 + 9
            for rank, j in enumerate(range(k, k + len(labels))):
                logits[m, labels[j % len(labels)]] = 100.0 - rank
        return logits


def test_ranking_reads_the_right_mask_and_scores_top1_and_top5(tok):
    model = VideoNamesTheAnswer(tok)
    segs = [ev.HeldOutSegment("v", 0, 1, VERBS[k], INGREDIENTS[k], [k], None, "", "validation") for k in range(4)]
    acc = ev.zero_shot_accuracy(model, tok, segs, use_video=True)
    assert acc == {"verb_top1": 1.0, "noun_top1": 1.0, "verb_top5": 1.0, "noun_top5": 1.0}
    # the labels one, three and six places on: rank 2, 4 and 7 -> top-1 0, top-5 2/3
    shifted = [ev.HeldOutSegment("v", 0, 1, VERBS[k + d], INGREDIENTS[k + d], [k], None, "", "testing")
               for k, d in ((0, 1), (1, 3), (2, 6))]
    acc = ev.zero_shot_accuracy(model, tok, shifted, use_video=True)
    assert acc["verb_top1"] == 0.0 and acc["noun_top1"] == 0.0
    assert acc["verb_top5"] == pytest.approx(2 / 3) and acc["noun_top5"] == pytest.approx(2 / 3)
    # without video every row sees k = 0: only the label at index 0 is right
    acc = ev.zero_shot_accuracy(model, tok, segs, use_video=False)
    assert acc["verb_top1"] == 0.25 and acc["noun_top1"] == 0.25


def test_topk_accuracy_and_chance():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    assert ev.topk_accuracy(scores, [1, 1, 0], k=1) == pytest.approx(1 / 3)
    assert ev.topk_accuracy(scores, [1, 1, 0], k=2) == pytest.approx(2 / 3)
    assert ev.topk_accuracy(scores, [1, 1, 0], k=3) == 1.0
    assert ev.chance_accuracy(15, 1) == pytest.approx(1 / 15) and ev.chance_accuracy(24, 5) == pytest.approx(5 / 24)
    with pytest.raises(ValueError, match="N = len\\(targets\\)"):
        ev.topk_accuracy(scores, [0, 1])


def test_alignment_accuracy_reads_the_head_on_cls():
    torch.manual_seed(0)
    model = VideoBert(small_config(vocab_size=120)).eval()
    cfg = model.config
    examples = []
    for label in (1, 1, 1, 0):
        ex = build_sequence(cfg, [110, 111], [1, 2])
        ex["alignment_label"] = label
        examples.append(ex)
    with torch.no_grad():
        model.alignment_head.bias.copy_(torch.tensor([0.0, 50.0]))  # always "aligned"
    assert ev.alignment_accuracy(model, examples) == 0.75
    with torch.no_grad():
        model.alignment_head.bias.copy_(torch.tensor([50.0, 0.0]))
    assert ev.alignment_accuracy(model, examples, batch_size=3) == 0.25
    scores, labels = ev.alignment_scores(model, examples, batch_size=3)  # the head's logit[1] - logit[0]
    with torch.no_grad():
        logits = model(**Collator(cfg, mask=False)([{k: v for k, v in e.items() if k != "alignment_label"} for e in examples])).alignment_logits
    torch.testing.assert_close(scores, logits[:, 1] - logits[:, 0])
    assert labels.tolist() == [1, 1, 1, 0] and (scores < -40).all()


def _by_hand_logp(model, words, visual, word_ids):
    """log p(every word of ``words`` in ``word_ids`` | the rest, visual), one unpadded sequence at a time."""
    cfg = model.config
    ex = build_sequence(cfg, words, visual)
    ids = ex["input_ids"].clone()
    at = torch.tensor([i > 0 and i <= len(words) and int(t) in word_ids for i, t in enumerate(ids)])
    truth = ids[at]
    ids[at] = cfg.mask_token_id
    with torch.no_grad():
        hidden = model.encode(ids[None], token_type_ids=ex["token_type_ids"][None])
        lp = torch.log_softmax(model.masked_logits(hidden, at[None]), -1)
    return float(lp[torch.arange(len(truth)), truth].sum())


def test_mlm_alignment_scores_are_the_pmi_of_words_and_video_computed_by_hand():
    torch.manual_seed(0)
    model = VideoBert(small_config(vocab_size=120)).eval()
    with torch.no_grad():  # BERT's initialisation (std 0.02) barely lets the video move the words: make it matter
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    cfg, cooking = model.config, {110, 112}
    sentences = [[110, 101, 112], [102, 110, 103, 104], [105, 106]]  # the last names no cooking word
    videos = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    refs = [[0, 1], [2, 3, 4, 5], [6], [7, 8, 9, 10, 11]]
    examples = []
    for i, words in enumerate(sentences):
        for j, label in ((i, 1), ((i + 1) % 3, 0)):
            ex = build_sequence(cfg, words, videos[j])
            ex["alignment_label"] = label
            examples.append(ex)
    scores, labels = ev.mlm_alignment_scores(model, examples, cooking, refs, batch_size=3)  # rows padded, split
    assert labels.tolist() == [1, 0, 1, 0, 1, 0]
    for n, ex in enumerate(examples[:4]):
        words, video = sentences[n // 2], videos[(n // 2 + n % 2) % 3]
        ref = torch.tensor([_by_hand_logp(model, words, r, cooking) for r in refs])
        expected = _by_hand_logp(model, words, video, cooking) - (torch.logsumexp(ref, 0) - math.log(len(refs)))
        assert scores[n].item() == pytest.approx(expected.item(), abs=1e-4)
    assert scores[4:].tolist() == [0.0, 0.0]  # no cooking word: no evidence
    assert scores[:4].abs().min() > 0.01  # a random model tells the videos apart
    # the marginal is a mean over the references: repeating them changes nothing; the pair's own video as the
    # only reference scores exactly 0
    again, _ = ev.mlm_alignment_scores(model, examples, cooking, refs + refs)
    torch.testing.assert_close(again, scores, atol=1e-5, rtol=0)
    own, _ = ev.mlm_alignment_scores(model, examples[:1], cooking, [videos[0]])
    assert own.abs().item() < 1e-5
    assert ev.score_accuracy(scores, labels) == pytest.approx(((scores > 0).long() == labels).float().mean().item())


class VideoNamesTheVerb(nn.Module):
    """A hand-made model: wherever a word is masked, visual token k makes VERBS[k] e^4 times likelier than any other."""

    def __init__(self, tok):
        super().__init__()
        self.config = small_config()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.verbs = ev.label_token_ids(tok, VERBS)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.config
        is_vis = input_ids >= cfg.visual_offset
        first = torch.where(is_vis.any(1), (input_ids - cfg.visual_offset).masked_fill(~is_vis, 10**6).min(1).values, 0)
        return first[:, None, None].expand(*input_ids.shape, 1).float()  # (B, T, 1)

    def masked_logits(self, hidden, where):
        k = hidden[where][:, 0].long()  # (M,)
        logits = torch.zeros(len(k), self.config.joint_vocab_size)
        logits[torch.arange(len(k)), torch.tensor(self.verbs)[k]] = 4.0
        return logits


def test_mlm_alignment_score_is_positive_for_the_video_that_names_the_words(tok):
    model = VideoNamesTheVerb(tok)
    cfg = model.config
    sentence = tok.encode(f"now {VERBS[2]} it slowly")
    examples = [build_sequence(cfg, sentence, [2, 5]), build_sequence(cfg, sentence, [7, 9])]
    scores, labels = ev.mlm_alignment_scores(model, examples, ev.label_token_ids(tok, VERBS), [[k] for k in range(6)])
    assert labels.tolist() == [-1, -1]
    V = cfg.joint_vocab_size
    p_named, p_other = math.e**4 / (math.e**4 + V - 1), 1 / (math.e**4 + V - 1)
    marginal = (p_named + 5 * p_other) / 6  # one reference in six names the verb
    assert scores[0].item() == pytest.approx(math.log(p_named / marginal), rel=1e-4) and scores[0] > 0
    assert scores[1].item() == pytest.approx(math.log(p_other / marginal), rel=1e-4) and scores[1] < 0


def test_mlm_alignment_scores_refuse_what_they_cannot_read(tok):
    torch.manual_seed(0)
    model = VideoBert(small_config(vocab_size=120, n_audio_tokens=4)).eval()
    cfg = model.config
    pair = build_sequence(cfg, [110, 111], [1, 2])
    with pytest.raises(ValueError, match="at least one reference video"):
        ev.mlm_alignment_scores(model, [pair], {110}, [])
    with pytest.raises(ValueError, match="one \\[>\\], no audio"):
        ev.mlm_alignment_scores(model, [build_sequence(cfg, [110], [1], audio=[2])], {110}, [[1]])
    with pytest.raises(ValueError, match="word_ids must be"):
        ev.mlm_alignment_scores(model, [pair], {500}, [[1]])
    with pytest.raises(ValueError, match="of no examples"):
        ev.mlm_alignment_scores(model, [], {110}, [[1]])


def test_text_to_video_and_forecast_return_the_likeliest_visual_tokens(tok):
    torch.manual_seed(0)
    model = VideoBert(small_config()).eval()
    with torch.no_grad():
        model.mlm_head.bias[model.config.visual_token_id(3)] = 1e4
        model.mlm_head.bias[tok.token_id("onion")] = 2e4  # a word is likelier still: generation must skip it
    assert ev.text_to_video(model, tok, "slice the onion", n=3) == [3, 3, 3]
    assert ev.forecast(model, [0, 1], n=2) == [3, 3]


@pytest.fixture(scope="module")
def captions():
    refs = ["slice the onion into thin slices", "boil the pasta in salted water", "grill the corn until it is dark",
            "peel the banana from the top"]
    return refs


def test_caption_metrics_of_identical_and_disjoint_captions(captions):
    same = ev.caption_scores([[c] for c in captions], captions, meteor=False)
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] == pytest.approx(1.0)
    assert same["cider"] == pytest.approx(10.0, rel=1e-6)  # CIDEr-D is scaled by 10
    other = ev.caption_scores([[c] for c in captions], ["xx yy zz ww vv"] * len(captions), meteor=False)
    assert other["bleu4"] < 1e-6 and other["rouge_l"] == 0.0 and other["cider"] == 0.0


def test_rouge_l_is_the_lcs_f_measure():
    # LCS("slice the onion", "slice the red onion now") = 3: P = 3/5, R = 3/3, beta = 1.2 (coco-caption's)
    p, r, b = 3 / 5, 1.0, 1.2
    expected = (1 + b * b) * p * r / (r + b * b * p)
    got = ev.caption_scores([["slice the onion"]], ["slice the red onion now"], meteor=False)["rouge_l"]
    assert got == pytest.approx(expected)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR 1.5 is a Java program; no java on the PATH")
def test_meteor_ranks_a_close_caption_above_a_far_one(captions):
    close = ev.caption_scores([[c] for c in captions], captions)["meteor"]
    far = ev.caption_scores([[c] for c in captions], ["the cat sat on the mat"] * len(captions))["meteor"]
    assert close > 0.95 and far < 0.2


def test_caption_scores_wants_one_reference_list_per_hypothesis():
    with pytest.raises(ValueError, match="one list per hypothesis"):
        ev.caption_scores([["a b"]], ["a b", "c d"], meteor=False)


def test_linear_probe_agrees_with_scikit_learn():
    """The frozen-feature probe against an independent implementation: sklearn's L2 logistic regression with
    the same objective (C = 1 / (2 * l2 * n), as sklearn sums the loss where the probe averages it)."""
    from sklearn.linear_model import LogisticRegression

    from vbert_lab.evaluate import linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    y = (x[:, :3] @ torch.tensor([1.0, -1.0, 0.5])).mul(2).round().clamp(-2, 2).long()  # 5 classes
    labels = [f"c{v}" for v in y.tolist()]
    ours = linear_probe(x[:300], labels[:300], x[300:], labels[300:], l2=1e-3)
    mu, sd = x[:300].mean(0), x[:300].std(0) + 1e-6
    ref = LogisticRegression(C=1 / (2 * 1e-3 * 300), max_iter=2000).fit(((x[:300] - mu) / sd).numpy(), labels[:300])
    theirs = ref.score(((x[300:] - mu) / sd).numpy(), labels[300:])
    assert abs(ours - theirs) <= 0.02 and ours > 0.7, (ours, theirs)
    assert linear_probe(x[:300], labels[:300], x[300:], ["unseen"] * 100) == 0.0
