"""vbert_lab.model: the joint vocabulary, the heads, input checks, save and load."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vbert_lab.model import AUDIO, TEXT, VIDEO, VideoBert, VideoBertConfig, project_centroids


def tiny_config(**kw):
    args = dict(vocab_size=100, n_visual_tokens=40, n_audio_tokens=10, hidden_size=32, num_layers=2, num_heads=4,
                intermediate_size=64, max_position_embeddings=24, dropout=0.0, attention_dropout=0.0)
    args.update(kw)
    return VideoBertConfig(**args)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoBert(tiny_config(num_labels=3, num_token_labels=5)).eval()


def test_joint_vocabulary_layout():
    cfg = VideoBertConfig()  # defaults: BERT uncased + [>] + 12^4 visual words
    assert cfg.special_token_id("[>]") == 30522
    assert cfg.visual_offset == 30523 and cfg.visual_token_id(0) == 30523
    assert cfg.audio_offset == 30523 + 20736 == cfg.joint_vocab_size
    cfg = tiny_config(special_tokens=("[>]", "[AUDIO]"))
    assert [cfg.special_token_id("[>]"), cfg.special_token_id("[AUDIO]")] == [100, 101]
    assert (cfg.visual_offset, cfg.audio_offset, cfg.joint_vocab_size) == (102, 142, 152)
    assert cfg.audio_token_id(9) == 151
    ids = torch.tensor([[5, 100, 101, 102, 141, 142, 151]])
    assert cfg.modality(ids).tolist() == [[TEXT, TEXT, TEXT, VIDEO, VIDEO, AUDIO, AUDIO]]
    with pytest.raises(KeyError, match=r"\[SEP2\]"):
        cfg.special_token_id("[SEP2]")


def test_config_checks_and_roundtrip():
    cfg = tiny_config(hidden_act="gelu_new")
    assert VideoBertConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="multiple of num_heads"):
        tiny_config(num_heads=5)
    with pytest.raises(ValueError, match="hidden_act='gelu2'"):
        tiny_config(hidden_act="gelu2")
    with pytest.raises(ValueError, match="unknown VideoBertConfig field"):
        VideoBertConfig.from_dict({**cfg.to_dict(), "n_layer": 3})


def test_input_errors(model):
    cfg = model.config
    ids = torch.randint(0, cfg.joint_vocab_size, (2, 6))
    with pytest.raises(ValueError, match=rf"ids 0\.\.{cfg.joint_vocab_size - 1}"):
        model.encode(torch.tensor([[1, cfg.joint_vocab_size]]))
    with pytest.raises(ValueError, match=r"\[-1, "):
        model.encode(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask should have the shape of input_ids, \(batch, seq_len\) = \(2, 6\)"):
        model.encode(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="token_type_ids should have the shape"):
        model.encode(ids, token_type_ids=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="type_vocab_size=3"):
        model.encode(ids, token_type_ids=torch.full((2, 6), 3))
    with pytest.raises(ValueError, match="max_position_embeddings=24"):
        model.encode(torch.ones(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model.encode(torch.ones(2, 6))
    with pytest.raises(ValueError, match="mlm_labels"):
        model(ids, mlm_labels=torch.zeros(2, 5, dtype=torch.long))


def test_padding_is_ignored_and_types_default_to_modality(model):
    cfg = model.config
    torch.manual_seed(1)
    ids = torch.randint(1, cfg.joint_vocab_size, (2, 10))
    am = torch.ones(2, 10, dtype=torch.long)
    am[1, 6:] = 0
    h = model.encode(ids, am)
    ids2 = ids.clone()
    ids2[1, 6:] = torch.randint(1, cfg.joint_vocab_size, (4,))  # change only what is padded
    assert_close(model.encode(ids2, am)[1, :6], h[1, :6])
    assert_close(model.encode(ids[1:, :6]), h[1:, :6], atol=1e-6, rtol=1e-5)  # padding == truncation
    assert_close(h, model.encode(ids, am, cfg.modality(ids)))
    assert not torch.allclose(h, model.encode(ids, am, torch.zeros_like(ids)))


def test_masked_logits_only_at_masked_positions(model):
    cfg = model.config
    torch.manual_seed(2)
    ids = torch.randint(1, cfg.joint_vocab_size, (3, 12))
    labels = torch.full_like(ids, -100)
    where = torch.rand(ids.shape) < 0.3
    where[0, 0] = True
    labels[where] = ids[where]
    out = model(ids, mlm_labels=labels, alignment_labels=torch.tensor([0, 1, 1]), labels=torch.tensor([0, 2, 1]),
                token_labels=torch.randint(0, 5, (3, 12)))
    assert out.masked_logits.shape == (int(where.sum()), cfg.joint_vocab_size)
    full = model.mlm_head(out.hidden, model.embeddings.word.weight)  # (B, T, V): what BertForMaskedLM computes
    assert_close(out.masked_logits, full[where])
    ref = F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert_close(out.losses["masked_tokens"], ref)
    assert out.alignment_logits.shape == (3, 2) and out.logits.shape == (3, 3) and out.token_logits.shape == (3, 12, 5)
    assert set(out.losses) == {"masked_tokens", "alignment", "classification", "token_classification"}
    assert_close(out.loss, sum(out.losses.values()))


def test_backward_reaches_every_parameter():
    torch.manual_seed(3)
    m = VideoBert(tiny_config(num_labels=2, num_token_labels=2))
    ids = torch.randint(1, m.config.joint_vocab_size, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    out = m(ids, mlm_labels=labels, alignment_labels=torch.tensor([0, 1]), labels=torch.tensor([1, 0]),
            token_labels=torch.zeros_like(ids))
    out.loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert no_grad == []


def test_attention_maps(model):
    ids = torch.randint(1, 100, (2, 7))
    am = torch.ones(2, 7, dtype=torch.long)
    am[0, 4:] = 0
    maps = model.attention_maps(ids, am)
    cfg = model.config
    assert maps.shape == (cfg.num_layers, 2, cfg.num_heads, 7, 7)
    assert_close(maps.sum(-1), torch.ones(cfg.num_layers, 2, cfg.num_heads, 7))
    assert (maps[:, 0, :, :, 4:] == 0).all()


def test_visual_embeddings_from_centroids():
    torch.manual_seed(4)
    m = VideoBert(tiny_config())
    cfg = m.config
    text_norm = m.embeddings.word.weight[: cfg.vocab_size].norm(dim=1).mean()
    before = m.embeddings.word.weight.detach().clone()

    same = torch.randn(cfg.n_visual_tokens, cfg.hidden_size)  # D == H: copied, rescaled
    m.init_visual_embeddings(same)
    rows = m.embeddings.word.weight[cfg.visual_offset : cfg.audio_offset].detach()
    assert_close(F.normalize(rows, dim=1), F.normalize(same, dim=1), atol=1e-5, rtol=1e-5)
    assert_close(rows.norm(dim=1).mean(), text_norm)
    assert torch.equal(m.embeddings.word.weight[: cfg.visual_offset], before[: cfg.visual_offset])  # words untouched

    for D in (8, 1024):  # smaller (orthonormal lift) and larger (PCA) than H=32, rank <= 8: distances kept up to scale
        feats = torch.randn(cfg.n_visual_tokens, 8, dtype=torch.float64) @ torch.randn(8, D, dtype=torch.float64)
        m.init_visual_embeddings(feats)
        rows = m.embeddings.word.weight[cfg.visual_offset : cfg.audio_offset].detach().double()
        d_rows, d_feats = torch.cdist(rows, rows), torch.cdist(feats, feats)
        scale = d_rows.sum() / d_feats.sum()
        assert_close(d_rows, scale * d_feats, atol=1e-4, rtol=1e-4)
    m.init_audio_embeddings(torch.randn(cfg.n_audio_tokens, 16))
    with pytest.raises(ValueError, match=r"visual centroids should be \(40, D\)"):
        m.init_visual_embeddings(torch.randn(39, 32))
    rows, proj = project_centroids(torch.randn(50, 64), 16)
    assert rows.shape == (50, 16) and proj.shape == (64, 16)
    assert_close(proj.T @ proj, torch.eye(16, dtype=proj.dtype))


def test_save_and_load_keep_outputs(model, tmp_path):
    ids = torch.randint(1, model.config.joint_vocab_size, (2, 9))
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = VideoBert.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    labels = torch.where(torch.rand(ids.shape) < 0.5, ids, -100)
    labels[0, 0] = ids[0, 0]
    a, b = model(ids, mlm_labels=labels), loaded(ids, mlm_labels=labels)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.masked_logits, b.masked_logits)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.alignment_logits, b.alignment_logits)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoBert.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(ValueError, match="load_bert"):
        VideoBert.from_pretrained(tmp_path)


def test_mean_pooling_reads_the_non_padding_states_only():
    torch.manual_seed(0)
    cls_model = VideoBert(tiny_config(num_labels=3)).eval()
    mean_model = VideoBert(tiny_config(num_labels=3, pooling="mean")).eval()
    mean_model.load_state_dict(cls_model.state_dict())  # same weights: only what the pooler reads differs
    cfg = cls_model.config
    ids = torch.randint(1, cfg.joint_vocab_size, (2, 10))
    am = torch.ones(2, 10, dtype=torch.long)
    am[1, 7:] = 0
    out = mean_model(ids, am)
    h = mean_model.encode(ids, am)
    by_hand = torch.tanh(mean_model.pooler.dense(torch.stack([h[0].mean(0), h[1, :7].mean(0)])))
    assert_close(out.alignment_logits, mean_model.alignment_head(by_hand))
    assert_close(out.logits, mean_model.classifier(by_hand))
    ids2 = ids.clone()
    ids2[1, 7:] = torch.randint(1, cfg.joint_vocab_size, (3,))  # padding changes nothing
    assert_close(mean_model(ids2, am).logits[1], out.logits[1])
    assert_close(mean_model(ids[1:, :7]).logits, out.logits[1:], atol=1e-6, rtol=1e-5)  # padding == truncation
    assert_close(cls_model(ids, am).logits, cls_model.classifier(torch.tanh(cls_model.pooler.dense(h[:, 0]))))
    assert not torch.allclose(cls_model(ids, am).logits, out.logits)
    with pytest.raises(ValueError, match="pooling='max'"):
        tiny_config(pooling="max")


def test_contrastive_alignment_loss_matches_a_by_hand_infonce_and_weighs_positives_as_negatives():
    import math

    from vbert_lab.model import contrastive_alignment_loss

    torch.manual_seed(0)
    n = 3
    logits = torch.randn(2 * n * n + 2, 2, dtype=torch.float64)  # two 3 x 3 groups, one binary row, one ignored
    eye = torch.eye(n, dtype=torch.long).flatten().tolist()
    labels = torch.tensor(eye + eye + [0, -100])
    groups = torch.tensor([5] * 9 + [2] * 9 + [-1, -1])
    binary, contrastive = contrastive_alignment_loss(logits, labels, groups)

    def ce(row, k):  # -log softmax(row)[k], in plain Python
        return math.log(sum(math.exp(x) for x in row)) - row[k]

    x = logits.tolist()
    expect_c = 0.0
    for start in (0, 9):
        s = [[x[start + i * n + j][1] - x[start + i * n + j][0] for j in range(n)] for i in range(n)]
        expect_c += sum(ce(s[i], i) for i in range(n)) / n + sum(ce([s[j][i] for j in range(n)], i) for i in range(n)) / n
    expect_c /= 2  # the groups' mean
    rows = list(range(19))  # the ignored row takes no part
    w = [(n - 1) if r < 18 and (r % 9) // n == (r % 9) % n else 1 for r in rows]
    expect_b = sum(wi * ce(x[r], int(labels[r])) for wi, r in zip(w, rows)) / sum(w)
    assert float(contrastive) == pytest.approx(expect_c, rel=1e-9)
    assert float(binary) == pytest.approx(expect_b, rel=1e-9)

    # scores that pick every sentence's own video lose less than scores that pick another's
    good = torch.zeros(9, 2, dtype=torch.float64)
    good[:, 1] = 4 * torch.eye(n, dtype=torch.float64).flatten() - 2
    bad = good.clone()
    bad[:, 1] = good[:, 1].view(n, n).roll(1, dims=1).flatten()
    loss = lambda lg: contrastive_alignment_loss(lg, labels[:9], groups[:9])  # noqa: E731
    assert float(loss(good)[1]) < 0.1 < 4 < float(loss(bad)[1])

    for bad_rows, why in ((8, "8 rows"), (9, None)):
        bad_labels = labels[:9].clone()
        if why is None:
            bad_labels[0] = 0  # the diagonal must be aligned
        with pytest.raises(ValueError, match="n x n pairs"):
            contrastive_alignment_loss(logits[:bad_rows], bad_labels[:bad_rows], groups[:bad_rows])


def test_forward_with_alignment_groups_adds_the_contrastive_loss(model):
    from vbert_lab.model import contrastive_alignment_loss

    torch.manual_seed(1)
    ids = torch.randint(5, 100, (4, 7))
    labels, groups = torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 0, 0])
    out = model(ids, alignment_labels=labels, alignment_groups=groups)
    assert set(out.losses) == {"alignment", "alignment_contrastive"}
    binary, contrastive = contrastive_alignment_loss(out.alignment_logits, labels, groups)
    assert_close(out.losses["alignment_contrastive"], contrastive)
    assert_close(out.losses["alignment"], binary)
    assert_close(out.loss, binary + contrastive)
    plain = model(ids, alignment_labels=labels)
    assert set(plain.losses) == {"alignment"}
    assert_close(plain.losses["alignment"], F.cross_entropy(plain.alignment_logits, labels))
