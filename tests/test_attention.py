"""vbert_lab.attention against PyTorch: F.scaled_dot_product_attention and nn.MultiheadAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from vbert_lab.attention import (
    SelfAttention,
    bilinear_attention,
    fit_power_law,
    measure_attention_cost,
    multi_head_attention,
    padding_mask_to_attn_mask,
    scaled_dot_product_attention,
)


def _padding(B, T, lengths):
    m = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        m[b, :n] = 1
    return m


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_explicit_sdpa_equals_torch(mask_kind):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g) for _ in range(3))
    kw, mask = {}, None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 7, 7, generator=g) > 0.3
        mask[..., 0] = True  # every query keeps one key
    elif mask_kind == "float":
        mask = torch.randn(2, 3, 7, 7, generator=g)
    elif mask_kind == "causal":
        kw = {"is_causal": True}
    ours, weights = scaled_dot_product_attention(q, k, v, mask, **kw)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
    assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert_close(weights.sum(-1), torch.ones(2, 3, 7))
    if mask_kind == "bool":
        assert (weights[~mask.expand_as(weights)] == 0).all()


def test_bilinear_form_is_attention_with_w_equal_wq_wk():
    """softmax(v_i^T W v_j) with W = W_q^T W_k / sqrt(d) is scaled dot-product attention with values v."""
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 9, 12, generator=g)  # (B, N, D)
    Wq, Wk = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    out, weights = bilinear_attention(frames, Wq.T @ Wk / math.sqrt(5))
    ref = F.scaled_dot_product_attention(frames @ Wq.T, frames @ Wk.T, frames)
    assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 9, 9)
    # W = identity: plain dot-product similarity, each row a distribution
    out1, w1 = bilinear_attention(frames[0])
    assert_close(w1, (frames[0] @ frames[0].T).softmax(-1))
    assert_close(out1, w1 @ frames[0])


@pytest.mark.parametrize("H,nh,bias", [(32, 4, True), (48, 3, False), (24, 24, True)])
def test_self_attention_equals_multihead_attention(H, nh, bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(H, nh, bias=bias, batch_first=True).eval()
    ours = SelfAttention.from_multihead_attention(mha).eval()
    B, T = 3, 11
    x = torch.randn(B, T, H)
    am = _padding(B, T, [11, 6, 1])

    ref, ref_w = mha(x, x, x, key_padding_mask=am == 0, need_weights=True, average_attn_weights=False)
    got = ours(x, padding_mask_to_attn_mask(am))
    got2, got_w = ours(x, padding_mask_to_attn_mask(am), need_weights=True)
    assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert_close(got2, ref, atol=1e-5, rtol=1e-5)
    assert_close(got_w, ref_w, atol=1e-6, rtol=1e-5)
    assert (got_w[1, :, :, 6:] == 0).all()  # padded keys get no attention

    # no mask, and a (T, T) attention mask (True = may attend) as MHA's (True = blocked)
    assert_close(ours(x), mha(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    assert_close(ours(x, allowed), mha(x, x, x, attn_mask=~allowed, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_functional_multi_head_equals_module():
    torch.manual_seed(2)
    att = SelfAttention(40, 5).eval()
    x = torch.randn(2, 8, 40)
    mask = padding_mask_to_attn_mask(_padding(2, 8, [8, 3]))
    out, w = multi_head_attention(x, att.qkv.weight, att.qkv.bias, att.out.weight, att.out.bias, 5, mask)
    assert_close(out, att(x, mask), atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 5, 8, 8)


def test_dropout_only_in_training():
    torch.manual_seed(3)
    att = SelfAttention(16, 2, dropout=0.5)
    x = torch.randn(2, 30, 16)
    att.eval()
    assert_close(att(x), att(x))
    att.train()
    assert not torch.allclose(att(x), att(x))


def test_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        SelfAttention(30, 4)
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        padding_mask_to_attn_mask(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        multi_head_attention(torch.randn(1, 2, 6), torch.randn(18, 6), None, torch.randn(6, 6), None, 4)


def test_power_law_fit_and_cost_measurement():
    x = [64, 128, 256, 512]
    p, c = fit_power_law(x, [3.0 * n**2 for n in x])
    assert p == pytest.approx(2.0) and c == pytest.approx(3.0)
    times = measure_attention_cost([32, 64], dim=8, reps=2)
    assert len(times) == 2 and all(t > 0 for t in times)
