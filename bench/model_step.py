"""One pretraining step of VideoBert against transformers' BertForMaskedLM of the same size.

Forward and backward on the same batch: ``[CLS] text [>] video [SEP]``, 15%
of the tokens masked, a joint vocabulary of BERT's 30,522 WordPiece ids, the
``[>]`` token and 20,736 visual tokens (12^4, the paper's). Both models have
the same sizes (on the CPU all-MiniLM-L6-v2's, the checkpoint the course
loads; on a GPU BERT-base's, the paper's, at 32 x 256 tokens), the same
dropout, and the same weights (copied with ``vbert_lab.hf``), and the losses
are checked equal before anything is timed.
The two are timed in alternation (warm-up, then the median of the reps).

Where the gain comes from: ``BertForMaskedLM`` computes the MLM head over
every position, (B*T, V) logits; ``VideoBert`` only at the masked 15%.
On CUDA, model FLOPs utilisation is reported too (bf16 autocast): the FLOPs
the step needs (6 per weight per token, attention, the head at the masked
positions) over the time, over the GPU's dense bf16 peak — for both models,
so ``hf_mfu`` counts only the useful part of what BertForMaskedLM computes.

``python -m bench.model_step [--quick] [--device cuda]`` prints the JSON.
"""

from __future__ import annotations

import statistics
import time

import torch

# (hidden, layers, heads, intermediate, batch, seq_len, reps)
SIZES = {
    "quick": dict(hidden=128, layers=2, heads=4, intermediate=512, batch=4, seq_len=64, reps=5),
    "full": dict(hidden=384, layers=6, heads=12, intermediate=1536, batch=8, seq_len=128, reps=9),
    # on a GPU, MiniLM at 8 x 128 tokens only measures kernel launches (MFU 0.6 % on an H200, 2026-11-27):
    # the paper's BERT-base at a batch that fills the device
    "cuda": dict(hidden=768, layers=12, heads=12, intermediate=3072, batch=32, seq_len=256, reps=10),
}
N_VISUAL = 20736
MASK_RATE = 0.15

# Dense bf16 tensor-core peaks (FLOP/s) for the MFU denominator; others: a measured matmul peak.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12, "L40S": 362e12}


def _batch(cfg, batch: int, seq_len: int, device: str, seed: int = 0):
    """``[CLS] words [>] visual tokens [SEP]``, 15% masked: (input_ids, token_type_ids, mlm_labels)."""
    g = torch.Generator().manual_seed(seed)
    n_text = seq_len // 3
    ids = torch.empty(batch, seq_len, dtype=torch.long)
    ids[:, 0] = cfg.cls_token_id
    ids[:, 1 : n_text + 1] = torch.randint(1000, cfg.vocab_size, (batch, n_text), generator=g)
    ids[:, n_text + 1] = cfg.special_token_id("[>]")
    n_vis = seq_len - n_text - 3
    ids[:, n_text + 2 : n_text + 2 + n_vis] = cfg.visual_token_id(torch.randint(0, cfg.n_visual_tokens, (batch, n_vis), generator=g))
    ids[:, -1] = cfg.sep_token_id
    types = cfg.modality(ids)
    masked = torch.rand(batch, seq_len, generator=g) < MASK_RATE
    masked[:, 0] = masked[:, -1] = False
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = torch.where(masked, torch.full_like(ids, cfg.mask_token_id), ids)
    return inputs.to(device), types.to(device), labels.to(device)


def _models(size: dict, device: str):
    from transformers import BertConfig, BertForMaskedLM

    from vbert_lab.hf import load_bert_weights
    from vbert_lab.model import VideoBert, VideoBertConfig

    cfg = VideoBertConfig(
        hidden_size=size["hidden"], num_layers=size["layers"], num_heads=size["heads"],
        intermediate_size=size["intermediate"], n_visual_tokens=N_VISUAL, n_audio_tokens=0,
    )
    hf_cfg = BertConfig(
        vocab_size=cfg.joint_vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
        type_vocab_size=cfg.type_vocab_size, max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
    )
    torch.manual_seed(0)
    theirs = BertForMaskedLM(hf_cfg)
    ours = VideoBert(cfg)
    load_bert_weights(ours, theirs.state_dict(), "BertForMaskedLM")  # same weights
    return ours.to(device), theirs.to(device), cfg


def _matmul_flops(cfg, tokens: int, predicted: int, seq_len: int) -> float:
    """Model FLOPs of a forward+backward step: 6 per weight per token, plus attention, plus the head where it runs."""
    H, L, I, V = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.joint_vocab_size
    per_token_layer = 4 * H * H + 2 * H * I  # qkv, out, up, down weights
    attention = 2 * 2 * seq_len * H  # Q K^T and A V, forward, per token per layer
    head = H * H + H * V
    return 6 * tokens * L * per_token_layer + 3 * tokens * L * attention + 6 * predicted * head


def _peak_flops(device: str) -> tuple[float, str]:
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak, f"{key} bf16 dense spec"
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0), "measured bf16 matmul"


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Tokens/s of a pretraining step, ours vs ``BertForMaskedLM`` (``model_step.*`` keys)."""
    cuda = str(device).startswith("cuda")
    size = SIZES["quick" if quick else "cuda" if cuda else "full"]
    ours, theirs, cfg = _models(size, device)
    ids, types, labels = _batch(cfg, size["batch"], size["seq_len"], device)

    # the same computation: equal losses without dropout
    ours.eval(), theirs.eval()
    with torch.no_grad():
        a = ours(ids, token_type_ids=types, mlm_labels=labels).losses["masked_tokens"]
        b = theirs(input_ids=ids, token_type_ids=types, labels=labels).loss
    loss_diff = abs(float(a) - float(b))
    if loss_diff > 1e-3:
        raise AssertionError(f"the two models disagree (loss {float(a)} vs {float(b)}): the comparison would be unfair")
    ours.train(), theirs.train()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step_ours():
        ours.zero_grad(set_to_none=True)
        with autocast:
            loss = ours(ids, token_type_ids=types, mlm_labels=labels).losses["masked_tokens"]
        loss.backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        with autocast:
            loss = theirs(input_ids=ids, token_type_ids=types, labels=labels).loss
        loss.backward()

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up
        step_ours(), step_theirs()
    t_ours, t_theirs = [], []
    for _ in range(size["reps"]):  # alternate, so that drift in the machine hits both alike
        t_ours.append(timed(step_ours))
        t_theirs.append(timed(step_theirs))
    tokens = ids.numel()
    s_ours, s_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    out = {
        "model_step.ours_tokens_per_s": tokens / s_ours,
        "model_step.hf_tokens_per_s": tokens / s_theirs,
        "model_step.ratio": s_theirs / s_ours,
        # best-of-reps ratio: the runs least disturbed by other work on a shared machine
        "model_step.ratio_best": min(t_theirs) / min(t_ours),
        "model_step.loss_abs_diff": loss_diff,
        "model_step.joint_vocab_size": cfg.joint_vocab_size,
        "model_step.shape": f"H{cfg.hidden_size} L{cfg.num_layers} B{size['batch']} T{size['seq_len']}",
    }
    if cuda:
        peak, source = _peak_flops(device)
        predicted = int((labels != -100).sum())
        out["model_step.mfu"] = _matmul_flops(cfg, tokens, predicted, size["seq_len"]) / s_ours / peak
        out["model_step.hf_mfu"] = _matmul_flops(cfg, tokens, predicted, size["seq_len"]) / s_theirs / peak
        out["model_step.mfu_peak"] = source
    return out


if __name__ == "__main__":
    from bench.common import main

    main(run, __doc__)
