"""Smaller, and maybe faster: int8 quantisation, magnitude pruning and low-rank factorisation, measured.

Taught in ``10_efficiency_and_scale``, on the fine-tuned model of ``09_fine_tuning``.
Each function works on any :class:`~vbert_lab.model.VideoBert`, and on any
``nn.Module`` built of ``nn.Linear`` (and ``nn.Embedding``) layers.

Three ways to shrink a trained model
------------------------------------
- :func:`quantize_int8`: 8-bit integer weights. ``nn.Linear`` layers get
  *dynamic* quantisation: each output row of ``W`` becomes ``int8`` with one
  float scale, ``W[i] ~ s_i q_i``; at run time each input row is quantised
  too and the product is an int8 matmul. ``nn.Embedding`` tables get
  *weight-only* int8 per row (a lookup has no matmul to speed up, only bytes
  to save) -- and in VideoBERT the word table (30,522 WordPiece rows plus the
  visual and audio words) is most of the file. The Linear layers go through
  torchao (``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``),
  PyTorch's maintained quantisation library; where torchao is not installed,
  through PyTorch's own ``torch.ao.quantization.quantize_dynamic``
  (per-channel), deprecated in favour of torchao (it says so when called;
  :func:`quantize_int8` repeats it once, clearly). The tables become
  :class:`Int8Embedding` (gather the int8 rows, then scale them): torchao's
  weight-only int8 (``IntxWeightOnlyConfig``) dequantises the *whole* table at
  every lookup, 0.24 s per batch for a 51k-row table on one CPU core against
  under a millisecond in fp32, and PyTorch's own quantised embedding is part
  of the deprecated ``torch.ao`` and asymmetric.
- :func:`prune_magnitude`: set the smallest-magnitude weights to zero
  (``torch.nn.utils.prune``, global or per layer). A zero costs as many bytes
  as any other number in a dense file and as much time in a dense matmul:
  :func:`save_compressed` with ``sparse=True`` stores such weights as a
  bitmask plus the non-zero values, which is where the saving shows.
- :func:`low_rank`: replace ``W`` (out x in) by the product of two thin
  matrices from its SVD (:class:`LowRankLinear`), ``r (in + out)`` numbers
  instead of ``in x out``; the rank per layer from a fixed ``rank``, a
  fraction of the singular values' ``energy``, or a ``param_fraction`` of the
  layer's weights (:func:`choose_ranks`).

Measuring
---------
:func:`parameter_count` (stored values and non-zeros), :func:`model_size_mb`
(the bytes of the weights file :func:`save_compressed` writes: MB = 10^6
bytes), :func:`measure_latency` and :func:`compare_latency` (warm-up, then
the median of repeats, several models interleaved repeat by repeat so that a
busy machine slows them alike, at a stated batch and thread count).

On disk
-------
:func:`save_compressed` writes ``config.json`` (the VideoBert config),
``compression.json`` (what was done, tensor by tensor) and
``model.safetensors`` in which an int8 weight is really int8: ``<name>.int8``
(``int8``, the weight's shape) and ``<name>.scale`` (``float32``, one per
row); a sparse one is ``<name>.mask`` (bits, packed 8 per byte) and
``<name>.values``. :func:`load_compressed` rebuilds a working model from it
(with whichever backend is installed: the file does not depend on it).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .attention import torch_threads

__all__ = [
    "BACKENDS",
    "quant_backend",
    "quantize_int8",
    "Int8Embedding",
    "is_quantized",
    "int8_weight",
    "linear_layers",
    "prune_magnitude",
    "sparsity",
    "LowRankLinear",
    "layer_svds",
    "choose_ranks",
    "low_rank",
    "parameter_count",
    "save_compressed",
    "load_compressed",
    "model_size_mb",
    "Latency",
    "measure_latency",
    "compare_latency",
]

BACKENDS = ("torchao", "torch")
FORMAT = "vbert_lab.compressed"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SPEC_FILE = "compression.json"
MB = 1e6  # bytes in a megabyte, as file sizes are usually given
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")  # what measure_latency passes to a VideoBert


# --------------------------------------------------------------------------- backends


def _import_torchao():
    """``torchao.quantization``, or ``None``; its import-time notice about pytree registration is silenced."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as aoq
    except Exception:  # not installed, or built for another torch
        return None
    finally:
        pytree_log.setLevel(level)
    if not all(hasattr(aoq, name) for name in ("quantize_", "Int8DynamicActivationInt8WeightConfig", "Int8Tensor")):
        return None  # a torchao older than the Int8Tensor (qdata, scale) this module reads and writes
    return aoq


def quant_backend(backend: str = "auto") -> str:
    """The quantisation backend ``backend`` resolves to: ``"torchao"`` where it imports, else ``"torch"``.

    Taught in ``10_efficiency_and_scale``.
    """
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend={backend!r}: choose 'auto', 'torchao' or 'torch'")
    if backend == "torch":
        return "torch"
    if _import_torchao() is not None:
        return "torchao"
    if backend == "torchao":
        raise ImportError("backend='torchao' but torchao cannot be imported; install it with: pip install torchao")
    return "torch"


def _is_dynamic_qlinear(module: nn.Module) -> bool:
    """PyTorch's own dynamically quantised Linear (``torch.ao.nn.quantized.dynamic.Linear``)."""
    return type(module).__name__ == "Linear" and type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def _is_ao_tensor(t) -> bool:
    """A torchao quantised tensor: a tensor subclass carrying ``qdata`` and ``scale``."""
    return isinstance(t, torch.Tensor) and type(t) is not torch.Tensor and type(t) is not nn.Parameter \
        and hasattr(t, "qdata") and hasattr(t, "scale")


def _rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8, as torchao does it: ``q = round(w / s)`` in [-128, 127], ``s = max|w_row| / 127.5``."""
    scale = w.detach().float().abs().amax(dim=1).clamp_min(1e-12) / 127.5  # (rows,): 255 steps span [-max, max]
    q = torch.round(w.detach().float() / scale[:, None]).clamp_(-128, 127).to(torch.int8)
    return q, scale


class Int8Embedding(nn.Module):
    """An ``nn.Embedding`` kept as int8 rows and one float scale per row (weight-only quantisation).

    A lookup gathers the int8 rows first and scales only those (torchao's
    weight-only int8 tensor dequantises the whole table per lookup).
    ``weight`` gives the dequantised table, so a head tied to it (VideoBERT's
    masked-token head) keeps working. Taught in ``10_efficiency_and_scale``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("qdata", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> "Int8Embedding":
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        new.qdata, new.scale = _rows_int8(emb.weight)
        return new

    @property
    def weight(self) -> torch.Tensor:
        return self.qdata.float() * self.scale[:, None]  # (rows, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qdata[ids].float() * self.scale[ids].unsqueeze(-1)  # (..., dim): only the rows looked up

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def _get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(_get_module(model, parent), child, new)


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` holds int8 weights (either backend)."""
    for module in model.modules():
        if _is_dynamic_qlinear(module) or isinstance(module, Int8Embedding):
            return True
        if any(_is_ao_tensor(p) for p in module.parameters(recurse=False)):
            return True
    return False


def quantize_int8(model: nn.Module, backend: str = "auto", embeddings: bool = True, linear: bool = True,
                  only: Iterable[str] | None = None, inplace: bool = False) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference (eval mode); ``model`` itself is untouched unless ``inplace``.

    ``nn.Linear`` layers (``linear``): dynamic quantisation, int8 weights per
    output row and int8 activations, computed at run time; ``backend``:
    ``"torchao"`` (``quantize_``), ``"torch"`` (PyTorch's own, deprecated
    ``quantize_dynamic``) or ``"auto"`` (torchao where installed).
    ``nn.Embedding`` tables (``embeddings``): weight-only int8 per row,
    :class:`Int8Embedding`. ``only``: restrict to these module names.
    Taught in ``10_efficiency_and_scale``.
    """
    backend = quant_backend(backend)
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    keep = None if only is None else set(only)
    names = {id(m): n for n, m in model.named_modules()}

    def chosen(module: nn.Module, kind: type) -> bool:
        if not isinstance(module, kind) or _is_ao_tensor(getattr(module, "weight", None)):
            return False  # not that kind of layer, or quantised already
        return keep is None or names.get(id(module)) in keep

    if embeddings:  # either backend: torchao's weight-only int8 dequantises the whole table at every lookup
        for name, module in list(model.named_modules()):
            if chosen(module, nn.Embedding):
                _set_module(model, name, Int8Embedding.from_embedding(module))
    if linear and backend == "torchao":
        aoq = _import_torchao()
        targets = [m for m in model.modules() if chosen(m, nn.Linear)]
        aoq.quantize_(model, aoq.Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: chosen(m, nn.Linear))
        missed = [type(m.weight).__name__ for m in targets if int8_weight(m) is None]
        if missed:
            raise RuntimeError(f"torchao left {len(missed)} Linear weight(s) as {missed[0]}, not int8 per row; "
                               "use backend='torch' or the torchao version in pyproject.toml")
    elif linear:
        targets = {n for n, m in model.named_modules() if chosen(m, nn.Linear)}
        if targets:
            _torch_quantize_dynamic(model, targets)
    return model


_warned_deprecated = False


def _torch_quantize_dynamic(model: nn.Module, names: set[str]) -> None:
    global _warned_deprecated
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns several times per call; we say it once, below
        quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, inplace=True)
    if not _warned_deprecated:
        _warned_deprecated = True
        warnings.warn("quantize_int8 used PyTorch's own torch.ao.quantization.quantize_dynamic (backend='torch', or no "
                      "usable torchao), which is deprecated in favour of torchao (pip install torchao; backend='auto' then "
                      "uses it); the int8 model is the same idea and save_compressed writes the same file",
                      DeprecationWarning, stacklevel=3)


# --------------------------------------------------------------------------- which layers


def linear_layers(model: nn.Module, heads: bool = False) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers pruning and low-rank work on, by name.

    A VideoBert: the encoder's (attention and feed-forward; with ``heads``
    also the pooler and the heads). Any other module: all its Linear layers.
    """
    from .model import VideoBert

    found = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if isinstance(model, VideoBert) and not heads:
        found = {n: m for n, m in found.items() if n.startswith("blocks.")}
    return found


def _pick(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Linear]:
    if layers is None:
        return linear_layers(model)
    found = {}
    for name in layers:
        module = _get_module(model, name)
        if type(module) is not nn.Linear:
            raise ValueError(f"layer {name!r} is a {type(module).__name__}, not an nn.Linear")
        found[name] = module
    return found


# --------------------------------------------------------------------------- pruning


def prune_magnitude(model: nn.Module, sparsity: float, layers: Iterable[str] | None = None, scope: str = "global",
                    inplace: bool = False) -> nn.Module:
    """A copy of ``model`` with the fraction ``sparsity`` of its Linear weights set to zero, smallest |w| first.

    ``scope="global"``: one threshold across all chosen layers
    (``torch.nn.utils.prune.global_unstructured``); ``"layer"``: each layer
    pruned to ``sparsity`` on its own. Exactly ``round(sparsity * n)`` weights
    are zeroed (``n`` per layer, or in all); the pruning is made permanent
    (no masks or hooks remain). ``layers``: names (default
    :func:`linear_layers`). Taught in ``10_efficiency_and_scale``.
    """
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must be in [0, 1)")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r}: choose 'global' or 'layer'")
    model = model if inplace else copy.deepcopy(model)
    chosen = _pick(model, layers)
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to prune")
    targets = [(m, "weight") for m in chosen.values()]
    with torch.no_grad():
        if scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(sparsity))
        else:
            for m, name in targets:
                prune.l1_unstructured(m, name, amount=float(sparsity))
        for m, name in targets:
            prune.remove(m, name)  # weight = weight_orig * mask, for good
    return model


def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> float:
    """The fraction of zeros in the weights of ``layers`` (default :func:`linear_layers`)."""
    chosen = _pick(model, layers)
    zeros = sum(int((m.weight == 0).sum()) for m in chosen.values())
    total = sum(m.weight.numel() for m in chosen.values())
    return zeros / total if total else 0.0


# --------------------------------------------------------------------------- low rank


class LowRankLinear(nn.Module):
    """``y = B (A x) + b``: a Linear layer's ``W`` (out x in) as ``B`` (out x r) times ``A`` (r x in).

    ``r (in + out)`` weights instead of ``in x out``, and as many
    multiply-adds per token. :meth:`from_linear` takes ``A`` and ``B`` from
    the SVD ``W = U S V^T``: ``A = sqrt(S_r) V_r^T``, ``B = U_r sqrt(S_r)``,
    the best rank-``r`` approximation of ``W`` (Eckart-Young). Taught in
    ``10_efficiency_and_scale``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank={rank} must be in 1..min(in, out) = {min(in_features, out_features)}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)  # A: (r, in)
        self.second = nn.Linear(rank, out_features, bias=bias)  # B: (out, r), and the bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, svd: tuple[torch.Tensor, ...] | None = None) -> "LowRankLinear":
        """The rank-``rank`` factors of ``linear`` (``svd``: its ``(U, S, Vh)`` if already computed, see :func:`layer_svds`)."""
        new = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        if svd is None:
            svd = _svd(linear.weight)
        U, S, Vh = svd  # (out, k), (k,), (k, in)
        root = S[:rank].sqrt()
        dtype, device = linear.weight.dtype, linear.weight.device
        with torch.no_grad():
            new.first.weight.copy_((root[:, None] * Vh[:rank]).to(dtype))  # (r, in)
            new.second.weight.copy_((U[:, :rank] * root).to(dtype))  # (out, r)
            if linear.bias is not None:
                new.second.bias.copy_(linear.bias.detach())
        return new.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))  # (..., in) -> (..., r) -> (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def layer_svds(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, tuple[torch.Tensor, ...]]:
    """``(U, S, Vh)`` of each chosen Linear layer's weight (float64): factorise once, truncate at many ranks.

    Pass it as ``svd=`` to :func:`low_rank` or :func:`choose_ranks`. Taught in ``10_efficiency_and_scale``.
    """
    return {name: _svd(m.weight) for name, m in _pick(model, layers).items()}


def _svd(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # One thread: LAPACK's threads wait for each other by spinning, and on a busy machine with fewer free cores
    # than threads the twelve SVDs of a three-layer MiniLM took 20-70 s instead of 0.6 s (measured).
    with torch_threads(1):
        return torch.linalg.svd(weight.detach().double(), full_matrices=False)


def choose_ranks(model: nn.Module, rank: int | None = None, energy: float | None = None,
                 param_fraction: float | None = None, layers: Iterable[str] | None = None,
                 svd: Mapping[str, tuple[torch.Tensor, ...]] | None = None) -> dict[str, int]:
    """A rank for each chosen Linear layer, from exactly one rule.

    ``rank``: the same rank everywhere (capped at ``min(in, out)``);
    ``energy``: the smallest ``r`` keeping that fraction of ``sum(S**2)``;
    ``param_fraction``: ``r = floor(f * in * out / (in + out))``, so the two
    factors hold about ``f`` of the layer's weights. Layers whose factors would
    hold at least as many weights as ``W`` are left out (nothing to gain).
    Taught in ``10_efficiency_and_scale``.
    """
    rules = [x is not None for x in (rank, energy, param_fraction)]
    if sum(rules) != 1:
        raise ValueError("give exactly one of rank=, energy= or param_fraction=")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy={energy} must be in (0, 1]")
    if param_fraction is not None and not 0 < param_fraction <= 1:
        raise ValueError(f"param_fraction={param_fraction} must be in (0, 1]")
    if rank is not None and rank < 1:
        raise ValueError(f"rank={rank} must be at least 1")
    ranks = {}
    for name, m in _pick(model, layers).items():
        n_out, n_in = m.weight.shape
        if rank is not None:
            r = min(rank, n_in, n_out)
        elif param_fraction is not None:
            r = max(1, math.floor(param_fraction * n_in * n_out / (n_in + n_out)))
        else:
            s2 = (svd[name] if svd is not None and name in svd else _svd(m.weight))[1] ** 2
            kept = torch.cumsum(s2, 0) / s2.sum()
            r = int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12)) + 1
            r = min(r, len(s2))
        if r * (n_in + n_out) < n_in * n_out:
            ranks[name] = r
    return ranks


def low_rank(model: nn.Module, rank: int | Mapping[str, int] | None = None, *, energy: float | None = None,
             param_fraction: float | None = None, layers: Iterable[str] | None = None,
             svd: Mapping[str, tuple[torch.Tensor, ...]] | None = None, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` whose Linear layers are :class:`LowRankLinear` (SVD) at the ranks :func:`choose_ranks` picks.

    ``rank`` may also be a dict ``layer name -> rank`` (used as given).
    ``svd``: :func:`layer_svds` of ``model``, to factorise once for several
    ranks. Taught in ``10_efficiency_and_scale``.
    """
    if isinstance(rank, Mapping):
        ranks = dict(rank)
    else:
        ranks = choose_ranks(model, rank=rank, energy=energy, param_fraction=param_fraction, layers=layers, svd=svd)
    model = model if inplace else copy.deepcopy(model)
    for name, r in ranks.items():
        layer = _get_module(model, name)
        if type(layer) is not nn.Linear:
            raise ValueError(f"layer {name!r} is a {type(layer).__name__}, not an nn.Linear")
        _set_module(model, name, LowRankLinear.from_linear(layer, r, svd=None if svd is None else svd.get(name)))
    return model


# --------------------------------------------------------------------------- what is stored


def int8_weight(module: nn.Module, attr: str = "weight") -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(int8 values (rows, cols), float32 scale (rows,))`` of a quantised layer's weight (either backend), else ``None``.

    ``values * scale[:, None]`` is the weight the layer computes with.
    Taught in ``10_efficiency_and_scale``.
    """
    if _is_dynamic_qlinear(module):
        w = module.weight()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            if bool(w.q_per_channel_zero_points().ne(0).any()):
                raise ValueError("an asymmetric per-channel int8 weight cannot be stored as int8 rows with scales")
            scale = w.q_per_channel_scales().float()
        else:
            if w.q_zero_point() != 0:
                raise ValueError("an asymmetric per-tensor int8 weight cannot be stored as int8 rows with scales")
            scale = torch.full((w.shape[0],), w.q_scale(), dtype=torch.float32)
        return w.int_repr(), scale
    if isinstance(module, Int8Embedding):
        return module.qdata, module.scale
    w = getattr(module, attr, None)
    if _is_ao_tensor(w):
        zero = getattr(w, "zero_point", None)
        if zero is not None and bool(zero.ne(0).any()):
            raise ValueError("an asymmetric int8 weight (non-zero zero points) cannot be stored as int8 rows with scales")
        if w.qdata.dtype != torch.int8 or w.scale.numel() != w.qdata.shape[0]:
            raise ValueError(f"a {type(w).__name__} weight with qdata {w.qdata.dtype} {tuple(w.qdata.shape)} and "
                             f"{w.scale.numel()} scales is not int8 per row")
        return w.qdata, w.scale.reshape(-1).float()
    return None


def _set_int8(module: nn.Module, attr: str, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    if _is_dynamic_qlinear(module):
        zeros = torch.zeros(qdata.shape[0], dtype=torch.long)
        weight = torch._make_per_channel_quantized_tensor(qdata, scale.double(), zeros, 0)
        module.set_weight_bias(weight, bias if bias is not None else module.bias())
        return
    if isinstance(module, Int8Embedding):
        module.qdata, module.scale = qdata.clone(), scale.float().clone()
        return
    w = getattr(module, attr)
    inner, meta = w.__tensor_flatten__()
    parts = {k: getattr(w, k) for k in inner}
    parts["qdata"] = qdata.to(w.qdata.device)
    parts["scale"] = scale.to(w.scale.dtype).reshape(w.scale.shape).to(w.scale.device)
    new = type(w).__tensor_unflatten__(parts, meta, w.size(), w.stride())
    setattr(module, attr, nn.Parameter(new, requires_grad=False))


def _entries(model: nn.Module) -> Iterable[tuple[str, nn.Module, str, str]]:
    """``(key, module, attribute, kind)`` for every stored tensor; kind "int8" or "tensor"."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if _is_dynamic_qlinear(module):
            yield f"{dot}weight", module, "weight", "int8"
            if module.bias() is not None:
                yield f"{dot}bias", module, "bias", "tensor"
            continue
        if isinstance(module, Int8Embedding):
            yield f"{dot}weight", module, "weight", "int8"
            continue
        if type(module).__module__.startswith("torch.ao.nn.quantized"):
            continue  # the packed-parameter holders inside PyTorch's quantised Linear
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield f"{dot}{name}", module, name, "int8" if _is_ao_tensor(p) else "tensor"
        for name, b in module.named_buffers(recurse=False):
            if b is not None and name not in module._non_persistent_buffers_set and id(b) not in seen:
                seen.add(id(b))
                yield f"{dot}{name}", module, name, "tensor"


def _plain(module: nn.Module, attr: str) -> torch.Tensor:
    value = getattr(module, attr)
    return value() if callable(value) else value  # PyTorch's quantised Linear: bias() is a method


def parameter_count(model: nn.Module) -> dict[str, int]:
    """``{"total": stored weight values (int8 or float), "nonzero": those that are not 0}``.

    Quantised weights count once (not their scales); a low-rank layer counts
    its two factors. Taught in ``10_efficiency_and_scale``.
    """
    total = nonzero = 0
    for _, module, attr, kind in _entries(model):
        t = int8_weight(module, attr)[0] if kind == "int8" else _plain(module, attr)
        if t is None or not (t.is_floating_point() or kind == "int8"):
            continue
        total += t.numel()
        nonzero += int(t.count_nonzero())
    return {"total": total, "nonzero": nonzero}


# --------------------------------------------------------------------------- save and load


def _sparse_is_smaller(t: torch.Tensor) -> bool:
    n, nnz = t.numel(), int(t.count_nonzero())
    return t.dim() >= 2 and math.ceil(n / 8) + nnz * t.element_size() < n * t.element_size()


def save_compressed(model: nn.Module, directory: str | os.PathLike, sparse: bool = False) -> Path:
    """Write ``model`` (quantised, pruned, low-rank or plain) to ``directory``; :func:`load_compressed` reads it.

    ``model.safetensors``: int8 weights as ``<name>.int8`` + ``<name>.scale``;
    with ``sparse``, every float matrix that is smaller so as
    ``<name>.mask`` (1 bit per entry, packed) + ``<name>.values`` (the
    non-zeros in row-major order); everything else as it is.
    ``compression.json`` lists what each tensor is; ``config.json`` is the
    model's config (a VideoBert's, or none). Taught in ``10_efficiency_and_scale``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    spec: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": type(model).__name__,
                            "tensors": {}, "low_rank": {}, "int8_modules": {}}
    for name, module in model.named_modules():
        if isinstance(module, LowRankLinear):
            spec["low_rank"][name] = {"in_features": module.in_features, "out_features": module.out_features,
                                      "rank": module.rank, "bias": module.second.bias is not None}
    for key, module, attr, kind in _entries(model):
        if kind == "int8":
            q, s = int8_weight(module, attr)
            tensors[f"{key}.int8"], tensors[f"{key}.scale"] = q.detach().cpu().contiguous(), s.detach().cpu().float().contiguous()
            owner = key.rpartition(".")[0]
            spec["tensors"][key] = {"storage": "int8_rows", "shape": list(q.shape)}
            spec["int8_modules"][owner] = "embedding" if q.dim() == 2 and _is_embedding_like(module) else "linear"
            continue
        t = _plain(module, attr).detach().cpu().contiguous()
        if sparse and t.is_floating_point() and _sparse_is_smaller(t):
            flat = t.reshape(-1)
            mask = flat != 0
            tensors[f"{key}.mask"] = torch.from_numpy(np.packbits(mask.numpy()))
            tensors[f"{key}.values"] = flat[mask].contiguous()
            spec["tensors"][key] = {"storage": "sparse_bitmask", "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            tensors[key] = t
            spec["tensors"][key] = {"storage": "dense"}
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        from .model import FORMAT as MODEL_FORMAT, FORMAT_VERSION as MODEL_VERSION

        meta = {"model_type": MODEL_FORMAT, "format_version": MODEL_VERSION, **config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    return directory


def _is_embedding_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Embedding, Int8Embedding))


def load_compressed(directory: str | os.PathLike, model: nn.Module | None = None, backend: str = "auto",
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """The model :func:`save_compressed` wrote to ``directory``, rebuilt and ready to run (eval mode).

    ``model``: a fresh instance of the same architecture to fill (default: a
    :class:`~vbert_lab.model.VideoBert` from ``config.json``). Low-rank layers
    are rebuilt at their ranks, int8 layers quantised with ``backend`` (any:
    the file does not depend on it) and their int8 values and scales put back
    exactly; sparse weights are made dense again in memory.
    Taught in ``10_efficiency_and_scale``.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    spec_path, weights = directory / SPEC_FILE, directory / WEIGHTS_FILE
    if not spec_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory}: needs {SPEC_FILE} and {WEIGHTS_FILE}, as written by vbert_lab.compress.save_compressed")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{spec_path}: not a {FORMAT} v{FORMAT_VERSION} file (format {spec.get('format')!r}, "
                         f"version {spec.get('format_version')!r})")
    if model is None:
        from .model import VideoBert, VideoBertConfig

        cfg_path = directory / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: missing; pass model= (a fresh instance of the saved architecture)")
        meta = {k: v for k, v in json.loads(cfg_path.read_text()).items() if k not in ("model_type", "format_version")}
        model = VideoBert(VideoBertConfig.from_dict(meta))
    for name, info in spec["low_rank"].items():
        _set_module(model, name, LowRankLinear(info["in_features"], info["out_features"], info["rank"], info["bias"]))
    int8 = spec["int8_modules"]
    if int8:
        linear = [n for n, kind in int8.items() if kind == "linear"]
        emb = [n for n, kind in int8.items() if kind == "embedding"]
        model = quantize_int8(model, backend, only=linear + emb, inplace=True)
    state = load_file(str(weights))
    found = {key: (module, attr, kind) for key, module, attr, kind in _entries(model)}
    missing = sorted(set(spec["tensors"]) - set(found))
    extra = sorted(set(found) - set(spec["tensors"]))
    if missing or extra:
        raise ValueError(f"{directory}: the file and the model disagree: in the file only {missing[:5]}, "
                         f"in the model only {extra[:5]}; pass model= of the architecture that was saved")
    with torch.no_grad():
        for key, info in spec["tensors"].items():
            module, attr, kind = found[key]
            storage = info["storage"]
            if storage == "int8_rows":
                if kind != "int8":
                    raise ValueError(f"{directory}: {key} is int8 in the file but not quantised in the model")
                bias = state.get(key.rpartition(".")[0] + ".bias") if _is_dynamic_qlinear(module) else None
                _set_int8(module, attr, state[f"{key}.int8"], state[f"{key}.scale"], bias)
                continue
            if storage == "sparse_bitmask":
                shape, n = info["shape"], math.prod(info["shape"])
                mask = torch.from_numpy(np.unpackbits(state[f"{key}.mask"].numpy(), count=n).astype(bool))
                value = torch.zeros(n, dtype=getattr(torch, info["dtype"]))
                value[mask] = state[f"{key}.values"]
                value = value.reshape(shape)
            else:
                value = state[key]
            if _is_dynamic_qlinear(module):
                continue  # PyTorch's quantised Linear: its bias was set together with its weight, above
            target = getattr(module, attr)
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"{directory}: {key} has shape {tuple(value.shape)} in the file, {tuple(target.shape)} in the model")
            target.copy_(value)
    return model.to(map_location).eval()


def model_size_mb(obj: nn.Module | str | os.PathLike, sparse: bool = False) -> float:
    """Megabytes (10^6 bytes) of a weights file: of ``obj`` saved by :func:`save_compressed`, or of a path.

    A path may be a file or a folder (its ``model.safetensors``). Taught in
    ``10_efficiency_and_scale``.
    """
    if isinstance(obj, nn.Module):
        with tempfile.TemporaryDirectory() as tmp:
            return os.path.getsize(save_compressed(obj, tmp, sparse=sparse) / WEIGHTS_FILE) / MB
    path = Path(obj)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return os.path.getsize(path) / MB


# --------------------------------------------------------------------------- latency


@dataclass
class Latency:
    """What :func:`measure_latency` measured: the median and quartiles of one forward pass, and its conditions."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    warmup: int
    threads: int
    batch_size: int
    seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.median_ms:.1f} ms (IQR {self.q1_ms:.1f}-{self.q3_ms:.1f}; batch {self.batch_size} x {self.seq_len} "
                f"tokens, {self.threads} thread(s), median of {self.repeats})")


def _forward_fn(model: Callable, batch) -> Callable[[], Any]:
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k in _INPUT_KEYS} or dict(batch)
        return lambda: model(**inputs)
    if isinstance(batch, (tuple, list)):
        return lambda: model(*batch)
    return lambda: model(batch)


def _shape_of(batch) -> tuple[int, int]:
    t = batch.get("input_ids") if isinstance(batch, Mapping) else (batch[0] if isinstance(batch, (tuple, list)) else batch)
    if isinstance(t, torch.Tensor) and t.dim() >= 2:
        return int(t.shape[0]), int(t.shape[1])
    return (int(t.shape[0]), 1) if isinstance(t, torch.Tensor) and t.dim() == 1 else (1, 1)


def compare_latency(models: Mapping[str, Callable], batch, repeats: int = 20, warmup: int = 3,
                    threads: int | None = None) -> dict[str, Latency]:
    """Latency of one forward pass of each model on ``batch``, measured in turns (inference mode, no grad).

    Each model gets ``warmup`` untimed calls; then every repeat times each
    model once, in turn, so that whatever else the machine does slows all of
    them alike; the median and quartiles over ``repeats`` are reported.
    ``threads``: torch's intra-op threads during the measurement (default:
    as set). ``batch``: a dict (only ``input_ids``, ``attention_mask``,
    ``token_type_ids`` are passed), a tuple, or one tensor. Taught in
    ``10_efficiency_and_scale``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    fns = {name: _forward_fn(m, batch) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch_threads(threads) as used, torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    B, T = _shape_of(batch)
    out = {}
    for name, ts in times.items():
        ms = [1000 * t for t in ts]
        q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
        out[name] = Latency(statistics.median(ms), q[0], q[2], repeats, warmup, used, B, T)
    return out


def measure_latency(model: Callable, batch, repeats: int = 20, warmup: int = 3, threads: int | None = None) -> Latency:
    """Latency of one forward pass of ``model`` on ``batch``: warm-up, then the median of ``repeats``.

    See :func:`compare_latency` (to compare models, measure them together).
    Taught in ``10_efficiency_and_scale``.
    """
    return compare_latency({"model": model}, batch, repeats, warmup, threads)["model"]
