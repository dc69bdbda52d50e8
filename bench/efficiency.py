"""What the speed knobs of ``10_efficiency_and_scale`` buy, on this machine: SDPA, mixed precision, torch.compile, int8, S3D.

A VideoBert of MiniLM's size (6 layers, hidden 384, 12 heads) over BERT's
30,522 WordPiece ids and the paper's 20,736 visual words, randomly
initialised (the weights do not change the time), one pretraining batch
(``[CLS] text [>] video [SEP]``, 15% masked, from ``bench.model_step``).
Each variant is timed against the plain fp32 model in the same run, the two
alternating step by step (warm-up, then the median), so results are ratios:

* ``efficiency.sdpa_speedup``: training step with the explicit attention
  math (``vbert_lab.scale.explicit_attention``) / with
  ``F.scaled_dot_product_attention``;
* ``efficiency.bf16_speedup``: fp32 step / bf16-autocast step (on CPU only
  where the processor has bf16 instructions does this win);
* ``efficiency.compile_speedup``: eager step / ``torch.compile``\\ d step
  (full mode only: compiling takes tens of seconds), and
  ``efficiency.compile_seconds``, the first compiled step;
* on CPU, ``efficiency.int8_speedup`` and ``efficiency.int8_size_ratio``:
  fp32 / int8 (``vbert_lab.compress.quantize_int8``) inference latency at one
  thread and weights-file size;
* ``efficiency.s3d_clips_per_s`` (and ``_bf16``): the paper's clip network
  (torchvision S3D, random weights) on 30-frame 224 x 224 clips, the cost
  that dominates extracting a real corpus.

``python -m bench.efficiency [--quick] [--device cuda]`` prints the JSON.
"""

from __future__ import annotations

import statistics
import time

import torch

SIZES = {  # quick: checks the code in seconds; full: MiniLM's size, a smaller batch on the CPU so `make bench` stays short
    "quick": dict(hidden=64, layers=1, heads=4, intermediate=128, batch=2, seq_len=32, reps=2, s3d_clips=0),
    "cpu": dict(hidden=384, layers=6, heads=12, intermediate=1536, batch=8, seq_len=64, reps=5, s3d_clips=1),
    "cuda": dict(hidden=384, layers=6, heads=12, intermediate=1536, batch=64, seq_len=128, reps=10, s3d_clips=16),
}
N_VISUAL = 20736


def _model(size: dict, device: str):
    from vbert_lab.model import VideoBert, VideoBertConfig

    cfg = VideoBertConfig(hidden_size=size["hidden"], num_layers=size["layers"], num_heads=size["heads"],
                          intermediate_size=size["intermediate"], n_visual_tokens=N_VISUAL, dropout=0.0,
                          attention_dropout=0.0)
    torch.manual_seed(0)
    return VideoBert(cfg).to(device), cfg


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _alternate(steps: dict, reps: int, device: str, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each step function, timed in turns after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _train_step(model, ids, types, labels, dtype=None):
    device_type = ids.device.type

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(ids, token_type_ids=types, mlm_labels=labels).losses["masked_tokens"]
        loss.backward()

    return step


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Speed-ups of SDPA, bf16, compile (and int8 on CPU) for a pretraining step (``efficiency.*`` keys)."""
    from bench.model_step import _batch
    from vbert_lab import compress, scale

    cuda = str(device).startswith("cuda")
    size = SIZES["quick" if quick else "cuda" if cuda else "cpu"]
    model, cfg = _model(size, device)
    ids, types, labels = _batch(cfg, size["batch"], size["seq_len"], device)
    model.train()
    tokens = ids.numel()
    out = {"efficiency.shape": f"H{cfg.hidden_size} L{cfg.num_layers} B{size['batch']} T{size['seq_len']} V{cfg.joint_vocab_size}"}

    fp32 = _train_step(model, ids, types, labels)
    t = _alternate({"fp32": fp32, "bf16": _train_step(model, ids, types, labels, torch.bfloat16)}, size["reps"], device)
    out["efficiency.fp32_tokens_per_s"] = tokens / t["fp32"]
    out["efficiency.bf16_tokens_per_s"] = tokens / t["bf16"]
    out["efficiency.bf16_speedup"] = t["fp32"] / t["bf16"]

    def explicit():
        with scale.explicit_attention(model):
            fp32()

    t = _alternate({"sdpa": fp32, "explicit": explicit}, size["reps"], device)
    out["efficiency.sdpa_speedup"] = t["explicit"] / t["sdpa"]

    if not quick:
        compiled = scale.compile_encoder(model)
        _sync(device)
        t0 = time.perf_counter()
        _train_step(compiled, ids, types, labels, torch.bfloat16 if cuda else None)()
        _sync(device)
        out["efficiency.compile_seconds"] = time.perf_counter() - t0
        dtype = torch.bfloat16 if cuda else None  # on the GPU, compile what one would run: bf16
        t = _alternate({"eager": _train_step(model, ids, types, labels, dtype),
                        "compiled": _train_step(compiled, ids, types, labels, dtype)}, size["reps"], device)
        out["efficiency.compile_speedup"] = t["eager"] / t["compiled"]
        out["efficiency.compile_dtype"] = "bf16" if cuda else "fp32"

    if not cuda:
        model.eval()
        q = compress.quantize_int8(model)
        batch = {"input_ids": ids, "token_type_ids": types}
        lat = compress.compare_latency({"fp32": model, "int8": q}, batch, repeats=size["reps"], warmup=1, threads=1)
        out["efficiency.int8_speedup"] = lat["fp32"].median_ms / lat["int8"].median_ms
        out["efficiency.int8_size_ratio"] = compress.model_size_mb(q) / compress.model_size_mb(model)

    if size["s3d_clips"]:
        from vbert_lab.features import S3DExtractor

        s3d = S3DExtractor("random")
        out["efficiency.s3d_clips_per_s"] = 1 / scale.time_clip_model(s3d, size["s3d_clips"], repeats=2, device=device)
        out["efficiency.s3d_bf16_clips_per_s"] = 1 / scale.time_clip_model(s3d, size["s3d_clips"], repeats=2,
                                                                              dtype=torch.bfloat16, device=device)
    return out


if __name__ == "__main__":
    from bench.common import main

    main(run, __doc__)
