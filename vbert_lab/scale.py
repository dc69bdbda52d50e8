"""Running VideoBERT at scale: what the speed knobs buy, what a real corpus costs, and keeping a corpus clean.

Taught in ``10_efficiency_and_scale``.

Speed knobs (each a variant of one model, to time with
:func:`vbert_lab.compress.compare_latency` or :func:`time_train_step`):

- :func:`explicit_attention`: every :class:`~vbert_lab.attention.SelfAttention`
  runs the explicit ``softmax(Q K^T / sqrt(d)) V`` of ``01_attention_from_scratch``
  instead of ``F.scaled_dot_product_attention`` (SDPA), to see what the fused
  kernel buys;
- :func:`autocast`: the model under ``torch.autocast`` (bf16 on CPU or GPU;
  fp16 on GPU), matmuls in 16 bits, reductions kept in fp32;
- :func:`compile_encoder`: a copy whose encoder layers are ``torch.compile``\\ d
  (the input checks stay eager: they read values out of tensors, which would
  break the graph).

Costs of a corpus (:func:`corpus_estimates`): clips, disk, time and memory of
the path ``data_scripts`` -> features -> visual words -> pretraining, for the
corpora in :data:`CORPORA`, from per-clip costs measured on this machine
(:func:`measure_extraction`, :func:`time_clip_model`, :func:`time_train_step`)
and a few stated assumptions. They are estimates, and say so.

Corpus hygiene: :func:`video_embeddings` and :func:`near_duplicates` (a
cheap first pass over whole videos), then :func:`ordered_overlap` (clip by
clip, in order) find videos that are copies of each other (re-uploads,
trims), which must not sit on both sides of a train/test split.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .attention import SelfAttention, multi_head_attention, torch_threads

__all__ = [
    "explicit_attention",
    "autocast",
    "compile_encoder",
    "time_train_step",
    "time_clip_model",
    "measure_extraction",
    "Corpus",
    "CORPORA",
    "CLIP_SECONDS",
    "corpus_estimates",
    "video_embeddings",
    "near_duplicates",
    "ordered_overlap",
]

CLIP_SECONDS = 1.5  # the paper's clip: 30 frames at 20 fps


# --------------------------------------------------------------------------- speed knobs


def _explicit_forward(module: SelfAttention):
    def forward(x, mask=None, need_weights=False):
        out, weights = multi_head_attention(x, module.qkv.weight, module.qkv.bias, module.out.weight, module.out.bias,
                                            module.num_heads, mask)  # (B, T, H), (B, nh, T, T): the matrix is stored
        return (out, weights) if need_weights else out

    return forward


@contextlib.contextmanager
def explicit_attention(model: nn.Module):
    """Within this block every ``SelfAttention`` of ``model`` runs the explicit math (no SDPA); restored after.

    The explicit path has no attention dropout: use it on a model in eval
    mode. Taught in ``10_efficiency_and_scale``.
    """
    patched = [m for m in model.modules() if isinstance(m, SelfAttention)]
    if not patched:
        raise ValueError(f"{type(model).__name__} has no vbert_lab.attention.SelfAttention layers")
    for m in patched:
        m.forward = _explicit_forward(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward  # back to the class's SDPA forward


def autocast(model: Callable, dtype: torch.dtype = torch.bfloat16, device_type: str | None = None) -> Callable:
    """``model`` wrapped so that each call runs under ``torch.autocast(device_type, dtype)``.

    ``device_type``: default the model's parameters' device type. Taught in
    ``10_efficiency_and_scale``.
    """
    if device_type is None:
        p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        device_type = p.device.type if p is not None else "cpu"

    def call(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return model(*args, **kwargs)

    return call


def compile_encoder(model: nn.Module, **compile_kwargs) -> nn.Module:
    """A copy of a VideoBert whose encoder layers are compiled (``nn.Module.compile``, in place on the copy).

    The layers share their code, so it is compiled once (and again for a
    new sequence length, until dynamo marks it dynamic). The first call
    pays the compilation. Taught in ``10_efficiency_and_scale``.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks (encoder layers) to compile")
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.compile(**compile_kwargs)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train_step(model: nn.Module, batch: Mapping[str, torch.Tensor], steps: int = 3, warmup: int = 1,
                    dtype: torch.dtype | None = None, threads: int | None = None) -> dict[str, float]:
    """Seconds per training step (forward, backward, AdamW update) of ``model`` on ``batch``: median of ``steps``.

    ``dtype``: autocast dtype (``None``: fp32). The model is trained on a
    copy (the weights of ``model`` do not change). Returns ``{"seconds",
    "tokens_per_s", "tokens"}`` (tokens: the batch's ``attention_mask`` sum).
    Taught in ``10_efficiency_and_scale``.
    """
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    with torch_threads(threads):
        for i in range(warmup + steps):
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    seconds = statistics.median(times)
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "tokens": tokens}


def time_clip_model(extractor: nn.Module, n_clips: int = 2, repeats: int = 3, dtype: torch.dtype | None = None,
                    device: str = "cpu") -> float:
    """Seconds per clip of a clip-feature network's forward pass (its ``prepare`` then ``forward``), median of repeats.

    Random uint8 clips of the extractor's ``clip_frames`` x ``frame_size``
    (the weights do not change the time: ``S3DExtractor("random")`` times
    the paper's network without its download). Taught in ``10_efficiency_and_scale``.
    """
    from .features import CLIP_FRAMES

    frames = getattr(extractor, "clip_frames", CLIP_FRAMES)
    size = extractor.frame_size
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (n_clips, frames, size, size, 3), dtype=torch.uint8, generator=g).to(device)
    extractor = extractor.to(device).eval()
    dev = torch.device(device)
    times = []
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(repeats + 1):
            _sync(dev)
            t0 = time.perf_counter()
            extractor.embed(clips)
            _sync(dev)
            if i:  # the first is the warm-up
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / n_clips


def measure_extraction(run, n_videos: int = 2, workers: int = 0) -> dict[str, float]:
    """Per-clip cost of the whole extraction step (decode, resample, clip, embed, write) on ``n_videos`` of this run's videos.

    Runs :func:`vbert_lab.features.extract` with the run's extractor (and
    audio features) into a temporary folder. Returns ``{"clips",
    "seconds_per_clip", "bytes_per_clip", "feature_dim"}``. Taught in
    ``10_efficiency_and_scale``.
    """
    from .features import ensure_extractor, extract

    videos = sorted((run.tinycook() / "videos").glob("*.mp4"))[:n_videos]
    model = ensure_extractor(run, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        summary = extract(videos, tmp, model, device=run.device, audio=True, workers=workers, progress=False)
        size = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.is_file())
    if not summary.clips:
        raise RuntimeError(f"no clips extracted from {[v.name for v in videos]}: {summary}")
    return {"clips": summary.clips, "seconds_per_clip": summary.seconds / summary.clips,
            "bytes_per_clip": size / summary.clips, "feature_dim": model.dim}


# --------------------------------------------------------------------------- what a corpus costs


@dataclass(frozen=True)
class Corpus:
    """A video corpus by the numbers its paper gives."""

    name: str
    videos: int
    hours: float
    source: str

    @property
    def clips(self) -> int:
        return int(self.hours * 3600 / CLIP_SECONDS)


CORPORA = {
    "YouCook2": Corpus("YouCook2", 2_000, 176, "Zhou, Xu and Corso, AAAI 2018: 2,000 videos, 89 recipes, 176 h"),
    "VideoBERT": Corpus("VideoBERT cooking", 312_000, 23_186, "Sun et al., ICCV 2019: 312K YouTube videos, 23,186 h"),
    "HowTo100M": Corpus("HowTo100M", 1_221_000, 134_472, "Miech et al., ICCV 2019: 1.22M videos, 136M clips, 134,472 h"),
}

# Assumptions, each stated where it is used (not measured here).
VIDEO_MB_PER_HOUR = 225.0  # a 360p H.264 + AAC download at about 0.5 Mbit/s (what youcook2.py asks yt-dlp for)
S3D_DIM = 1024  # the paper's clip feature
ADAM_BYTES_PER_PARAM = 16  # fp32 weight, gradient and AdamW's two moments


def corpus_estimates(corpus: Corpus, *, extract_s_per_clip: float, tokens_per_clip: float, train_tokens_per_s: float,
                     params: int, feature_dim: int = S3D_DIM, epochs: float = 1.0, workers: int = 1) -> dict[str, Any]:
    """Estimated clips, disk, time and memory of the worked path for ``corpus``, from per-clip costs.

    ``extract_s_per_clip``: seconds to decode and embed one clip;
    ``tokens_per_clip``: sequence tokens per clip (visual, audio and words);
    ``train_tokens_per_s``: pretraining throughput; ``params``: the model's
    parameters; ``workers``: machines (or GPUs) working in parallel, assumed
    to scale linearly (``torchrun``'s rank sharding for extraction, DDP for
    training). Disk for the videos assumes :data:`VIDEO_MB_PER_HOUR`.
    Taught in ``10_efficiency_and_scale``.
    """
    clips = corpus.clips
    feature_gb = clips * feature_dim * 4 / 1e9
    return {
        "corpus": corpus.name,
        "videos": corpus.videos,
        "hours": corpus.hours,
        "clips": clips,
        "video_disk_gb": corpus.hours * VIDEO_MB_PER_HOUR / 1e3,
        "feature_disk_gb": feature_gb,
        "extract_hours": clips * extract_s_per_clip / 3600 / workers,
        "kmeans_in_memory_gb": feature_gb,  # the whole matrix; HierarchicalKMeans.fit_chunks streams it instead
        "train_tokens": clips * tokens_per_clip * epochs,
        "train_hours": clips * tokens_per_clip * epochs / train_tokens_per_s / 3600 / workers,
        "train_state_gb": params * ADAM_BYTES_PER_PARAM / 1e9,
    }


# --------------------------------------------------------------------------- near-duplicate videos


def video_embeddings(features: torch.Tensor, rows: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, list[str]]:
    """One unit vector per video: the mean of its clips' features (``rows``: the features' manifest rows).

    Returns ``(embeddings (V, D), video ids)`` in sorted id order. Taught in
    ``10_efficiency_and_scale``.
    """
    ids = sorted({r["video"] for r in rows})
    index = {v: i for i, v in enumerate(ids)}
    which = torch.tensor([index[r["video"]] for r in rows])
    X = torch.as_tensor(features).double()
    X = X - X.mean(dim=0)  # centre: what all videos share says nothing about which are alike
    sums = torch.zeros(len(ids), X.shape[1], dtype=X.dtype).index_add_(0, which, X)
    means = sums / torch.bincount(which, minlength=len(ids)).clamp_min(1)[:, None]
    return torch.nn.functional.normalize(means, dim=1).float(), ids


def ordered_overlap(A: torch.Tensor, B: torch.Tensor, threshold: float = 0.95) -> float:
    """The longest run of consecutive clips of ``A`` matching consecutive clips of ``B`` in order, as a share of the shorter.

    ``A`` ``(n, D)`` and ``B`` ``(m, D)``: two videos' clip features (centre
    them first, as :func:`video_embeddings` does); clips match when their
    cosine is at least ``threshold``. A copy, trimmed or not, scores 1; two
    videos that merely show the same kind of step score the length of that
    step. Taught in ``10_efficiency_and_scale``.
    """
    A, B = (torch.nn.functional.normalize(torch.as_tensor(x).float(), dim=1) for x in (A, B))
    match = (A @ B.T) >= threshold  # (n, m)
    run = torch.zeros(match.shape[1] + 1)  # run[j + 1]: matches ending at (row i, column j) on one diagonal
    best = 0.0
    for row in match:
        run = torch.cat([torch.zeros(1), (run[:-1] + 1) * row])
        best = max(best, float(run.max()))
    return best / max(1, min(match.shape))


def near_duplicates(embeddings: torch.Tensor, ids: Sequence[str], threshold: float = 0.95) -> list[tuple[str, str, float]]:
    """Pairs of videos whose embeddings have cosine similarity >= ``threshold``, most similar first.

    Taught in ``10_efficiency_and_scale``.
    """
    E = torch.nn.functional.normalize(torch.as_tensor(embeddings).float(), dim=1)
    sim = E @ E.T  # (V, V)
    i, j = torch.triu_indices(len(ids), len(ids), offset=1)
    keep = sim[i, j] >= threshold
    pairs = [(ids[a], ids[b], float(s)) for a, b, s in zip(i[keep].tolist(), j[keep].tolist(), sim[i, j][keep].tolist())]
    return sorted(pairs, key=lambda p: -p[2])
