"""Attention, from the frame-similarity formula to the module the model uses.

Taught in ``01_attention_from_scratch``. The functions here come in the order
the lesson builds them:

1. :func:`bilinear_attention` — the form the VideoBERT article starts from:
   frame ``i`` attends to frame ``j`` with weight ``softmax_j(v_i^T W v_j)``.
2. :func:`scaled_dot_product_attention` — queries, keys and values,
   ``softmax(Q K^T / sqrt(d) + mask) V``, written out (it returns the weights,
   so they can be drawn).
3. :func:`multi_head_attention` — the same per head, on projected inputs.
4. :class:`SelfAttention` — the module :mod:`vbert_lab.model` uses: one fused
   Q/K/V projection and ``torch.nn.functional.scaled_dot_product_attention``
   (the fast path); it falls back to the explicit math only when asked for the
   weights.

Mask convention (the same as ``F.scaled_dot_product_attention``): a boolean
mask is ``True`` where a query MAY attend to a key; a float mask is added to
the scores (``-inf`` blocks). ``nn.MultiheadAttention``'s ``key_padding_mask``
is the opposite (``True`` = ignore): :func:`padding_mask_to_attn_mask` turns a
BERT-style ``attention_mask`` (1 = token, 0 = padding) into ours.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "bilinear_attention",
    "scaled_dot_product_attention",
    "multi_head_attention",
    "padding_mask_to_attn_mask",
    "SelfAttention",
    "measure_attention_cost",
    "torch_threads",
    "fit_power_law",
]


def _as_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean (True = attend) or additive float mask, as an additive float mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def bilinear_attention(
    frames: torch.Tensor, W: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as frame similarity: ``a_ij = softmax_j(v_i^T W v_j)``, output ``sum_j a_ij v_j``.

    ``frames`` is ``(N, D)`` or ``(B, N, D)``; ``W`` is ``(D, D)`` (identity
    when ``None``: plain dot-product similarity). Returns ``(output, weights)``
    with shapes ``(..., N, D)`` and ``(..., N, N)``. With ``W = W_q^T W_k / sqrt(d)``
    and values ``v_j`` this *is* scaled dot-product attention — the lesson's
    first step. Taught in ``01_attention_from_scratch``.
    """
    if W is None:
        W = torch.eye(frames.shape[-1], dtype=frames.dtype, device=frames.device)
    scores = frames @ W @ frames.transpose(-2, -1)  # (..., N, N): v_i^T W v_j
    mask = _as_additive(mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)  # each row sums to 1
    return weights @ frames, weights  # (..., N, D), (..., N, N)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q K^T / sqrt(d) + mask) V`` written out; returns ``(output, weights)``.

    ``q`` is ``(..., Nq, d)``, ``k`` ``(..., Nk, d)``, ``v`` ``(..., Nk, dv)``;
    ``mask`` broadcasts to ``(..., Nq, Nk)`` (bool: True = may attend; float:
    added). Same result as ``torch.nn.functional.scaled_dot_product_attention``
    (no dropout), plus the attention weights ``(..., Nq, Nk)``. Taught in
    ``01_attention_from_scratch``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Nq, Nk)
    if is_causal:
        n_q, n_k = scores.shape[-2:]
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    mask = _as_additive(mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)  # (..., Nq, Nk)
    return weights @ v, weights  # (..., Nq, dv)


def multi_head_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    num_heads: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention written out; returns ``(output (B, T, H), weights (B, nh, T, T))``.

    ``w_qkv`` is ``(3H, H)`` with the query, key and value projections stacked
    in that order (the layout of ``nn.MultiheadAttention.in_proj_weight``);
    ``w_out`` is ``(H, H)``. ``mask`` broadcasts to ``(B, nh, T, T)``
    (bool: True = may attend). Taught in ``01_attention_from_scratch``.
    """
    B, T, H = x.shape
    if H % num_heads:
        raise ValueError(f"hidden size {H} is not a multiple of num_heads={num_heads}")
    hs = H // num_heads
    qkv = F.linear(x, w_qkv, b_qkv)  # (B, T, 3H)
    q, k, v = qkv.split(H, dim=-1)  # 3 x (B, T, H)
    q, k, v = (t.view(B, T, num_heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, nh, T, hs), (B, nh, T, T)
    out = out.transpose(1, 2).reshape(B, T, H)  # heads side by side again: (B, T, H)
    return F.linear(out, w_out, b_out), weights


def padding_mask_to_attn_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT's ``attention_mask`` ``(B, T)`` (1 = token, 0 = padding) as a boolean ``(B, 1, 1, T)`` SDPA mask.

    Every query may attend to every real key; padded keys are hidden. Taught in
    ``01_attention_from_scratch``.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask should be (batch, seq_len) with 1 for tokens and 0 for padding, got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` (the model's attention).

    One fused ``qkv`` projection ``(H -> 3H)``, laid out like
    ``nn.MultiheadAttention.in_proj_weight`` (query, key, value rows), and an
    output projection ``out``. Taught in ``01_attention_from_scratch``.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
        self.hidden_size, self.num_heads, self.dropout = hidden_size, num_heads, dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, T, H)``; ``mask`` broadcastable to ``(B, nh, T, T)``, bool True = may attend.

        Returns ``(B, T, H)``, or ``(output, weights (B, nh, T, T))`` with
        ``need_weights=True`` (explicit math, no dropout on the weights).
        """
        B, T, H = x.shape
        nh, hs = self.num_heads, H // self.num_heads
        if need_weights:
            return multi_head_attention(x, self.qkv.weight, self.qkv.bias, self.out.weight, self.out.bias, nh, mask)
        q, k, v = self.qkv(x).split(H, dim=-1)  # 3 x (B, T, H)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.out(y)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> "SelfAttention":
        """The same attention as a ``batch_first`` ``nn.MultiheadAttention`` (shared in/out projection sizes)."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError("from_multihead_attention needs an nn.MultiheadAttention with kdim = vdim = embed_dim and no bias_k/bias_v")
        has_bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=has_bias)
        new = new.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            new.out.weight.copy_(mha.out_proj.weight)
            if has_bias:
                new.qkv.bias.copy_(mha.in_proj_bias)
                new.out.bias.copy_(mha.out_proj.bias)
        return new


def measure_attention_cost(
    lengths, dim: int = 64, batch: int = 1, reps: int = 5, device: str = "cpu", explicit: bool = False
) -> list[float]:
    """Seconds of one attention call ``(Q K^T) V`` for each sequence length in ``lengths``.

    The best of ``reps`` runs (after a warm-up) on one CPU thread: the run
    least disturbed by whatever else the machine is doing. By default it times
    ``F.scaled_dot_product_attention`` (fused: N² work, no N x N matrix in
    memory); ``explicit=True`` times :func:`scaled_dot_product_attention`,
    which stores the full matrix, so it slows down further once that matrix
    outgrows the CPU caches. Taught in ``01_attention_from_scratch``.
    """
    gen = torch.Generator().manual_seed(0)
    # One CPU thread: a multi-threaded call on a busy machine waits for a free core
    # (a scheduler time slice, milliseconds), which would hide the N^2 growth.
    with torch_threads(1 if device == "cpu" else None):
        return _time_lengths(lengths, dim, batch, reps, device, explicit, gen)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Within this block torch uses ``n`` intra-op threads (``None`` or 0: as set); restored after.

    Yields the count in force. Used wherever the course times something.
    """
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _time_lengths(lengths, dim, batch, reps, device, explicit, gen) -> list[float]:
    out = []
    for n in lengths:
        q, k, v = (torch.randn(batch, n, dim, generator=gen).to(device) for _ in range(3))
        fn = (lambda: scaled_dot_product_attention(q, k, v)) if explicit else (lambda: F.scaled_dot_product_attention(q, k, v))
        times = []
        with torch.no_grad():
            fn(), fn()  # warm-up
            for _ in range(reps):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        out.append(float(min(times)))
    return out


def fit_power_law(x, y) -> tuple[float, float]:
    """Fit ``y = c * x**p`` by least squares in log-log space; returns ``(p, c)``.

    Taught in ``01_attention_from_scratch`` (the N² cost of attention).
    """
    p, log_c = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(p), float(np.exp(log_c))
