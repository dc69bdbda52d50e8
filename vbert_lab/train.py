"""One training loop for pretraining and fine-tuning, generic over the batches it is given.

Taught in ``07_videobert_pretraining`` (pretraining: text-only, video-only and
text-video regimes mixed by weight); used again in ``09_fine_tuning``.

Read it top to bottom, nanoGPT-style:

1. :class:`TrainConfig` — every knob, with its default; saved as JSON beside
   the run, so ``vbert-lab pretrain --config FILE`` is a thin wrapper.
2. Data: :class:`ResumableLoader` (a map-style dataset cut into rank-sharded,
   epoch-shuffled batches that can start at any batch without touching the
   ones before) and :class:`MixedBatches` (several named loaders, one regime
   drawn per step with a seeded generator).
3. Optimisation: :func:`param_groups` (AdamW without weight decay on biases
   and LayerNorm), :class:`WarmupDecay` (linear warm-up, cosine or linear decay,
   a ``torch.optim.lr_scheduler.LambdaLR`` factor).
4. Checkpoints: weights in safetensors, optimizer, scheduler, grad scaler,
   every RNG state of every rank and the data position; written atomically
   (temp folder + ``os.replace``), the last N kept. :func:`latest_checkpoint`.
5. :func:`train` — the loop: mixed precision, gradient accumulation and
   clipping, DistributedDataParallel under ``torchrun``, ``tqdm.auto``
   progress, metrics to JSONL (:func:`read_metrics`, :func:`plot_metrics`), an
   evaluation hook, and a stop with a clear message at the first NaN or inf.

The model contract
------------------
``train`` accepts any ``nn.Module`` whose ``forward`` takes a batch — a dict
is passed as keyword arguments (``model(**batch)``), a tuple or list as
positional arguments, anything else as the one argument — and returns an
object with a ``.losses`` attribute (or a mapping with a ``"losses"`` key):
a dict ``name -> scalar tensor``. The loop minimises
``sum(loss_weights.get(name, 1.0) * loss)``; it never looks inside the
batch except to move tensors to the device and to count tokens
(``attention_mask``, else ``input_ids``). :class:`~vbert_lab.model.VideoBert`
fulfils it (losses ``"masked_tokens"``, ``"alignment"``, ``"classification"``,
``"token_classification"``). A model with ``save_pretrained(dir)`` is saved
with it (so a checkpoint folder is also a ``VideoBert.from_pretrained``
folder); any other model as ``model.safetensors``.

Exact resume
------------
A run resumed from a checkpoint follows the loss curve of the uninterrupted
run (bit for bit on CPU with ``torch.use_deterministic_algorithms(True)``)
when its batches come from :class:`ResumableLoader`\\ s: each batch is a
function of ``(seed, epoch, batch index, rank)``, a ``collate_fn`` with a
``generator`` attribute (a ``torch.Generator``, such as
:class:`vbert_lab.sequences.Collator`'s masking generator) is re-seeded from
that position before each batch, and resuming starts at the next batch
without loading the ones before. Any other iterable (a plain ``DataLoader``)
also works; on resume its first batches of the epoch are drawn again and
dropped (a warning says how many), which replays their side effects.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "TrainConfig",
    "TrainResult",
    "ResumableLoader",
    "MixedBatches",
    "WarmupDecay",
    "param_groups",
    "NonFiniteLossError",
    "latest_checkpoint",
    "read_json_object",
    "claim_run_dir",
    "list_checkpoints",
    "train",
    "read_metrics",
    "plot_metrics",
]

CHECKPOINT_DIR = "checkpoints"  # under out_dir: one folder per checkpoint, step-00000042
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
STATE_FILE = "trainer_state.pt"  # optimizer, scheduler, scaler, RNG and data position (torch.save, loaded weights_only)
STATE_JSON = "trainer_state.json"  # written last: a readable summary and the mark of a complete checkpoint
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FORMAT = "vbert_lab.train_checkpoint"


# --------------------------------------------------------------------------- config


def read_json_object(path: str | os.PathLike, what: str, shape: str) -> dict:
    """The JSON object in the config file ``path``; errors name the file, the ``what`` and the expected ``shape``."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {shape}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: {shape}; got {type(d).__name__}")
    return d


def claim_run_dir(out_dir: str | os.PathLike, stamp: Mapping[str, Any], stamp_file: str, force: bool = False) -> tuple[Path, dict]:
    """Make ``out_dir`` a folder for the run described by ``stamp`` (a JSON-able dict of everything it depends on).

    The folder is kept (so a finished run is reused and an unfinished one
    resumes) when its ``stamp_file`` equals ``stamp``, or when it is empty;
    it is emptied when the stamp differs, when files are there without a stamp,
    or with ``force``. Returns ``(out_dir, stamp as it reads back from JSON)``;
    the caller writes the stamp once it starts training. Used by
    :func:`vbert_lab.pretrain.ensure_pretrained` and :func:`vbert_lab.finetune.ensure_finetuned`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = json.loads(json.dumps(stamp))
    path = out_dir / stamp_file
    saved = json.loads(path.read_text()) if path.is_file() else None
    if force or (saved is not None and saved != stamp) or (saved is None and any(out_dir.iterdir())):
        shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
    return out_dir, stamp


@dataclass
class TrainConfig:
    """Every setting of :func:`train`; ``TrainConfig.from_json(path)`` reads one from a JSON file.

    Taught in ``07_videobert_pretraining``; fine-tuning in ``09_fine_tuning``.
    """

    # how long
    max_steps: int = 1000  # optimizer steps; the schedule decays to the end of these
    grad_accum_steps: int = 1  # micro-batches per optimizer step (all from the step's regime)
    # AdamW and the learning-rate schedule
    lr: float = 1e-4  # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 100  # linear warm-up from lr/warmup_steps to lr
    decay: str = "cosine"  # after warm-up: "cosine", "linear" or "constant"
    min_lr_ratio: float = 0.0  # the learning rate at max_steps is lr * min_lr_ratio
    weight_decay: float = 0.01  # not applied to biases, LayerNorm weights and other 1-d parameters
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6  # BERT's Adam epsilon
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 = no clipping
    # what to train on
    regime_weights: dict[str, float] = field(default_factory=dict)  # regime name -> weight; missing = 1; 0 = never
    loss_weights: dict[str, float] = field(default_factory=dict)  # loss name -> weight in the total; missing = 1
    seed: int = 0  # seeds the regime draws, the data order and (on a fresh start) python/numpy/torch
    # numerics and devices
    precision: str = "auto"  # "auto" (bf16 on CUDA if supported, else fp16 + GradScaler; fp32 on CPU), "fp32", "bf16", "fp16"
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK where CUDA is present, else cpu
    find_unused_parameters: bool = True  # DDP: regimes use different heads, so some parameters get no gradient
    # bookkeeping
    log_every: int = 1  # write a metrics record every this many steps
    eval_every: int = 0  # call the evaluate hook every this many steps (0 = never)
    checkpoint_every: int = 100  # write a checkpoint every this many steps (and always at max_steps)
    keep_last: int = 3  # checkpoints kept (older ones are deleted); 0 = keep all
    resume: bool | str = True  # True: continue from the latest valid checkpoint in out_dir; a path: from that one
    progress: bool = True  # tqdm.auto progress bar (rank 0)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.regime_weights = dict(self.regime_weights)
        self.loss_weights = dict(self.loss_weights)
        for name in ("max_steps", "grad_accum_steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be at least 1")
        for name in ("warmup_steps", "eval_every", "keep_last", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 0")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be positive")
        if self.decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"TrainConfig.decay={self.decay!r}: choose 'cosine', 'linear' or 'constant'")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"TrainConfig.precision={self.precision!r}: choose 'auto', 'fp32', 'bf16' or 'fp16'")
        for what, weights in (("regime_weights", self.regime_weights), ("loss_weights", self.loss_weights)):
            bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v))}
            if bad:
                raise ValueError(f"TrainConfig.{what}: weights must be finite numbers >= 0, got {bad}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "TrainConfig") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a config written by :meth:`to_json` (or by hand: any subset of the fields)."""
        d = read_json_object(path, "training config", "a training config is a JSON object of TrainConfig fields")
        return cls.from_dict(d, source=str(path))

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    step: int  # optimizer steps done in all (including those before a resume)
    checkpoint: Path | None  # the last checkpoint written (or resumed from)
    metrics_path: Path  # the JSONL file; read it with read_metrics, draw it with plot_metrics
    resumed_from: Path | None = None  # the checkpoint this call started from, if any


class NonFiniteLossError(RuntimeError):
    """A loss (or the gradient norm) became NaN or inf; training stopped and the last good checkpoint was kept."""

    def __init__(self, message: str, step: int, name: str, value: float, last_checkpoint: Path | None):
        super().__init__(message)
        self.step, self.name, self.value, self.last_checkpoint = step, name, value, last_checkpoint


# --------------------------------------------------------------------------- data


def _mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (splitmix64-style), so nearby positions get unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Positioned(torch.utils.data.Dataset):
    """Wraps a dataset so that worker processes know which batch an example belongs to."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, batch_index, i = key
        return epoch, batch_index, self.dataset[i]


class ResumableLoader:
    """Batches of a map-style dataset, as a function of ``(seed, epoch, batch index, rank)``.

    ``batch_size`` is the *global* batch: under ``torchrun`` with ``W``
    processes each rank gets every ``W``-th example of it, so the examples
    seen per step are the same for any number of processes. Each epoch has
    its own permutation (``shuffle``, seeded by ``seed`` and the epoch). A
    ``collate_fn`` with a ``generator`` attribute (a ``torch.Generator``) is
    re-seeded before every batch, so random masking is also a function of
    the position. :meth:`iter_from` starts at any batch without loading the
    ones before. ``rank``/``world_size`` default to torch.distributed's when
    iteration starts. Taught in ``07_videobert_pretraining``.
    """

    def __init__(self, dataset, batch_size: int, collate_fn: Callable | None = None, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, num_workers: int = 0, rank: int | None = None,
                 world_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"ResumableLoader: batch_size={batch_size} must be at least 1")
        self.dataset, self.batch_size = dataset, batch_size
        self.collate_fn = collate_fn if collate_fn is not None else torch.utils.data.default_collate
        self.shuffle, self.seed, self.drop_last, self.num_workers = shuffle, seed, drop_last, num_workers
        self.rank, self.world_size = rank, world_size
        if len(self) == 0:
            raise ValueError(
                f"ResumableLoader: a dataset of {len(dataset)} examples gives no batch of {batch_size} "
                "(drop_last=True); use a smaller batch_size or drop_last=False"
            )

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _rank_world(self) -> tuple[int, int]:
        rank, world = _dist_rank_world()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        if self.batch_size % world:
            raise ValueError(
                f"ResumableLoader: the global batch_size={self.batch_size} does not split over {world} processes; "
                "choose a batch_size that is a multiple of the number of processes"
            )
        return rank, world

    def global_batch_indices(self, epoch: int, batch_index: int) -> list[int]:
        """Dataset indices of batch ``batch_index`` of ``epoch``, all ranks together."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size].tolist()

    def batch_indices(self, epoch: int, batch_index: int) -> list[int]:
        """This rank's share of :meth:`global_batch_indices`: every ``world_size``-th example."""
        rank, world = self._rank_world()
        return self.global_batch_indices(epoch, batch_index)[rank::world]

    def _collate(self, epoch: int, batch_index: int, examples: list):
        generator = getattr(self.collate_fn, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(_mix_seed(self.seed, epoch, batch_index, self._rank_world()[0], 1))
        return self.collate_fn(examples)

    def _collate_positioned(self, items: list):
        epoch, batch_index, _ = items[0]
        return self._collate(epoch, batch_index, [example for _, _, example in items])

    def iter_from(self, epoch: int, batch_index: int = 0) -> Iterator:
        """The batches of ``epoch`` from ``batch_index`` on; the earlier ones are not loaded."""
        positions = range(batch_index, len(self))
        if self.num_workers == 0:
            for b in positions:
                yield self._collate(epoch, b, [self.dataset[i] for i in self.batch_indices(epoch, b)])
            return
        batches = [[(epoch, b, i) for i in self.batch_indices(epoch, b)] for b in positions]
        loader = torch.utils.data.DataLoader(
            _Positioned(self.dataset), batch_sampler=batches, collate_fn=self._collate_positioned,
            num_workers=self.num_workers, generator=torch.Generator().manual_seed(_mix_seed(self.seed, epoch, 2)),
        )  # its own generator: creating workers does not draw from the global torch RNG
        yield from loader

    def __iter__(self) -> Iterator:
        return self.iter_from(0, 0)


class _Stream:
    """An endless walk through one loader's epochs that knows where it is: (epoch, batch index)."""

    def __init__(self, name: str, loader: Iterable):
        self.name, self.loader = name, loader
        self.epoch, self.batch_index = 0, 0  # batch_index = batches already taken from this epoch
        self.iterator: Iterator | None = None

    def _open(self) -> Iterator:
        if isinstance(self.loader, ResumableLoader):
            return self.loader.iter_from(self.epoch, self.batch_index)
        for sampler in (getattr(self.loader, "sampler", None), getattr(getattr(self.loader, "batch_sampler", None), "sampler", None)):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle per epoch
                sampler.set_epoch(self.epoch)
        iterator = iter(self.loader)
        if self.batch_index:
            warnings.warn(
                f"regime {self.name!r}: its loader is not a ResumableLoader, so resuming draws again and drops "
                f"{self.batch_index} batch(es) of epoch {self.epoch} (their side effects happen again); "
                "wrap the dataset in vbert_lab.train.ResumableLoader to skip them without loading",
                stacklevel=4,
            )
            for taken in range(self.batch_index):
                if next(iterator, None) is None:
                    raise RuntimeError(
                        f"regime {self.name!r}: resuming needs {self.batch_index} batches of epoch {self.epoch} "
                        f"but its loader now gives only {taken}; the data changed since the checkpoint"
                    )
        return iterator

    def next_batch(self):
        while True:
            if self.iterator is None:
                self.iterator = self._open()
            try:
                batch = next(self.iterator)
            except StopIteration:
                if self.batch_index == 0:
                    raise ValueError(f"regime {self.name!r}: its loader yields no batches") from None
                self.epoch, self.batch_index, self.iterator = self.epoch + 1, 0, None
                continue
            self.batch_index += 1
            return batch


class MixedBatches:
    """Several named loaders (regimes), one drawn per step by weight with a seeded generator.

    ``loaders``: regime name -> a :class:`ResumableLoader` or any re-iterable
    (a ``DataLoader``); ``weights``: regime name -> weight (missing = 1,
    0 = never drawn). Each loader is walked epoch after epoch without end.
    :meth:`state_dict` is the data position: the generator and each regime's
    epoch and batch index. Taught in ``07_videobert_pretraining``.
    """

    def __init__(self, loaders: Mapping[str, Iterable], weights: Mapping[str, float] | None = None, seed: int = 0):
        if not loaders:
            raise ValueError("MixedBatches needs at least one loader (regime name -> loader)")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(loaders))
        if unknown:
            raise ValueError(f"regime weights name {unknown}, which are not loaders; the loaders are {sorted(loaders)}")
        self.names = list(loaders)
        self.weights = torch.tensor([float(weights.get(name, 1.0)) for name in self.names], dtype=torch.float64)
        if (self.weights < 0).any() or not torch.isfinite(self.weights).all() or self.weights.sum() <= 0:
            raise ValueError(f"regime weights {dict(zip(self.names, self.weights.tolist()))} must be >= 0 with a positive sum")
        self.probabilities = self.weights / self.weights.sum()
        self.generator = torch.Generator().manual_seed(_mix_seed(seed, 3))
        self.streams = {name: _Stream(name, loader) for name, loader in loaders.items()}

    def choose_regime(self) -> str:
        """The next regime, drawn with :attr:`probabilities` from the seeded generator."""
        if len(self.names) == 1:
            return self.names[0]
        return self.names[int(torch.multinomial(self.probabilities, 1, generator=self.generator))]

    def next_batch(self, regime: str):
        return self.streams[regime].next_batch()

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "streams": {name: {"epoch": s.epoch, "batch_index": s.batch_index} for name, s in self.streams.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        missing = sorted(set(state["streams"]) - set(self.streams))
        if missing:
            raise ValueError(f"the checkpoint's data position has regimes {missing} that are not among the loaders {self.names}")
        self.generator.set_state(state["generator"])
        for name, pos in state["streams"].items():
            stream = self.streams[name]
            stream.epoch, stream.batch_index, stream.iterator = int(pos["epoch"]), int(pos["batch_index"]), None


# --------------------------------------------------------------------------- optimisation


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weight matrices, none on biases, LayerNorm and other 1-d parameters.

    As in BERT. Taught in ``07_videobert_pretraining``.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or name.endswith("bias") or p.ndim < 2:
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupDecay:
    """Learning-rate factor after ``s`` scheduler steps: linear warm-up, then cosine or linear decay.

    Optimizer step ``k`` (1-based) runs at ``lr * self(k - 1)``: warm-up goes
    ``1/W, 2/W, ..., 1`` over ``W = warmup_steps`` steps, then the factor
    falls to ``min_lr_ratio`` at ``max_steps``. Used as the ``lr_lambda`` of
    ``torch.optim.lr_scheduler.LambdaLR`` (an object, so it is saved in the
    scheduler's state). Taught in ``07_videobert_pretraining``.
    """

    def __init__(self, warmup_steps: int, max_steps: int, decay: str = "cosine", min_lr_ratio: float = 0.0):
        self.warmup_steps, self.max_steps, self.decay, self.min_lr_ratio = warmup_steps, max_steps, decay, min_lr_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (s - self.warmup_steps + 1) / span)  # the last step (s = max_steps - 1) runs at min_lr_ratio
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


def _resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("TrainConfig.precision='bf16': this GPU does not support bfloat16; use 'fp16' or 'auto'")
        return torch.bfloat16, False
    if not cuda:
        raise ValueError("TrainConfig.precision='fp16' needs a CUDA device; on CPU use 'bf16' or 'fp32'")
    return torch.float16, True


# --------------------------------------------------------------------------- checkpoints


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, _LossesOnly)):
        model = model.module
    return model


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step-"):
        return None
    try:
        return int(name[len("step-"):])
    except ValueError:
        return None


def _is_complete(path: Path) -> bool:
    try:
        meta = json.loads((path / STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("format") == CHECKPOINT_FORMAT and (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file()


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints under ``out_dir/checkpoints``, oldest first (by step).

    Taught in ``07_videobert_pretraining``.
    """
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _step_of(p) is not None and _is_complete(p)]
    return sorted(found, key=_step_of)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``out_dir`` (``None`` if there is none).

    A folder cut short by a crash has no ``trainer_state.json`` and is
    skipped. Taught in ``07_videobert_pretraining``.
    """
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _rng_state() -> dict:
    bit_generator, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_checkpoint(out_dir: Path, step: int, model: nn.Module, trainer_state: dict, summary: dict, keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically: everything into a temp folder, then ``os.replace`` into place."""
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(tmp)  # VideoBert: config.json + model.safetensors, a from_pretrained folder
    else:
        from safetensors.torch import save_model

        save_model(model, str(tmp / WEIGHTS_FILE))
    if not (tmp / WEIGHTS_FILE).is_file():
        raise RuntimeError(f"{type(model).__name__}.save_pretrained wrote no {WEIGHTS_FILE} in {tmp}; the trainer needs safetensors weights")
    torch.save(trainer_state, tmp / STATE_FILE)
    (tmp / STATE_JSON).write_text(json.dumps({"format": CHECKPOINT_FORMAT, **summary}, indent=2) + "\n")
    if final.exists():  # the same step written again (after a resume): swap, then delete the old one
        old = folder / f".old-step-{step:08d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if keep_last:
        for stale in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


# settings that change the numbers of a run (the others only change what is written and shown)
_BOOKKEEPING = {"resume", "progress", "log_every", "eval_every", "checkpoint_every", "keep_last", "max_steps"}


def _warn_if_config_changed(checkpoint: Path, config: TrainConfig) -> None:
    saved = json.loads((checkpoint / STATE_JSON).read_text()).get("config", {})
    now = config.to_dict()
    changed = {k: (saved[k], now[k]) for k in saved if k in now and k not in _BOOKKEEPING and saved[k] != now[k]}
    if changed:
        warnings.warn(
            f"{checkpoint}: resumed with changed settings {changed} (saved, now); the optimizer state and the base "
            "learning rate continue as saved, so the run is not a continuation of either configuration",
            stacklevel=4,
        )


def _load_weights(model: nn.Module, checkpoint: Path) -> None:
    from safetensors.torch import load_file, load_model

    path = checkpoint / WEIGHTS_FILE
    if hasattr(model, "save_pretrained"):
        model.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)))
    else:
        load_model(model, str(path), device=str(next(model.parameters()).device))


# --------------------------------------------------------------------------- metrics


def read_metrics(path: str | os.PathLike, kind: str | None = "train") -> list[dict]:
    """The records of a metrics JSONL file (only those of ``kind``: "train", "eval", "stop"; None = all).

    Taught in ``07_videobert_pretraining``.
    """
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if kind is None or record.get("kind") == kind:
                    records.append(record)
    return records


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records after ``step`` (written by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path, kind=None) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def plot_metrics(path: str | os.PathLike, smooth: int = 1):
    """A matplotlib figure of a run: each loss, the learning rate, the gradient norm and the eval metrics.

    ``smooth``: a running mean over this many logged steps for the losses.
    Taught in ``07_videobert_pretraining``.
    """
    import matplotlib.pyplot as plt

    train_records, eval_records = read_metrics(path, "train"), read_metrics(path, "eval")
    if not train_records:
        raise ValueError(f"{path}: no training records to plot")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (ax_loss, ax_lr), (ax_grad, ax_eval) = axes
    names = sorted({name for r in train_records for name in r["losses"]})
    for name in ["loss", *names]:
        rows = [(r["step"], r["loss"] if name == "loss" else r["losses"][name]) for r in train_records
                if name == "loss" or name in r["losses"]]
        steps, values = zip(*rows)
        values = np.convolve(values, np.ones(smooth) / smooth, mode="valid") if smooth > 1 and len(values) >= smooth else values
        ax_loss.plot(steps[len(steps) - len(values):], values, label="total (weighted)" if name == "loss" else name,
                     linewidth=2 if name == "loss" else 1)
    ax_loss.set(title="losses", xlabel="step", ylabel="loss")
    ax_loss.legend()
    steps = [r["step"] for r in train_records]
    ax_lr.plot(steps, [r["lr"] for r in train_records])
    ax_lr.set(title="learning rate", xlabel="step")
    ax_grad.plot(steps, [r["grad_norm"] for r in train_records])
    ax_grad.set(title="gradient norm (before clipping)", xlabel="step")
    eval_names = sorted({k for r in eval_records for k, v in r.items() if k not in ("kind", "step") and isinstance(v, (int, float))})
    for name in eval_names:
        rows = [(r["step"], r[name]) for r in eval_records if name in r]
        ax_eval.plot(*zip(*rows), marker="o", label=name)
    ax_eval.set(title="evaluation" if eval_names else "evaluation (none logged)", xlabel="step")
    if eval_names:
        ax_eval.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the loop


class _LossesOnly(nn.Module):
    """Calls the model on a batch and returns only its losses: what DDP should trace for unused parameters."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self._checked = False

    def _check_keys(self, batch: Mapping) -> None:
        params = inspect.signature(self.module.forward).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        extra = sorted(set(batch) - {p.name for p in params})
        if extra:
            raise ValueError(
                f"the batch has key(s) {extra} that {type(self.module).__name__}.forward does not take "
                f"(it takes {[p.name for p in params]}); drop them in the collate_fn or give forward those arguments"
            )

    def forward(self, batch):
        if isinstance(batch, Mapping):
            if not self._checked:
                self._check_keys(batch)
                self._checked = True
            out = self.module(**batch)
        elif isinstance(batch, (tuple, list)):
            out = self.module(*batch)
        else:
            out = self.module(batch)
        losses = out.get("losses") if isinstance(out, Mapping) else getattr(out, "losses", None)
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(
                f"{type(self.module).__name__}.forward returned {type(out).__name__} without losses; the trainer needs an "
                "object with .losses (or a mapping with 'losses'): a non-empty dict name -> scalar tensor. "
                "Does the batch carry the labels (mlm_labels, alignment_labels, labels)?"
            )
        return dict(losses)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _count_tokens(batch) -> int:
    if isinstance(batch, Mapping):
        if isinstance(batch.get("attention_mask"), torch.Tensor):
            return int(batch["attention_mask"].sum())
        if isinstance(batch.get("input_ids"), torch.Tensor):
            return batch["input_ids"].numel()
    return 0


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _rng_untouched():
    """Run a block (the evaluation hook) without moving any global RNG: resume stays exact."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


def train(
    model: nn.Module,
    loaders: Mapping[str, Iterable] | Iterable,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike = "runs/train",
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> TrainResult:
    """Train ``model`` on ``loaders`` for ``config.max_steps`` optimizer steps; checkpoints and metrics in ``out_dir``.

    ``model``: any ``nn.Module`` that follows the contract in this module's
    docstring (``forward(**batch).losses``: a dict of scalar losses).
    ``loaders``: regime name -> loader (mixed by ``config.regime_weights``),
    or one loader (regime ``"default"``). ``evaluate(model) -> dict``, if
    given, runs every ``config.eval_every`` steps on rank 0 (model in eval
    mode, no grad, global RNGs untouched); its dict is logged to the JSONL.
    Under ``torchrun`` each process calls ``train`` the same way: it joins the
    process group (NCCL on GPU, gloo on CPU), wraps the model in
    DistributedDataParallel, and only rank 0 writes checkpoints and metrics.
    A group it joined it also leaves. If you join one yourself before calling
    ``train``, import ``torch._dynamo`` first: imported after the group exists
    (DistributedDataParallel does so), it keeps the group alive past
    ``destroy_process_group``, and gloo's threads can then abort the process
    as it exits.

    Writes ``out_dir/train_config.json``, ``out_dir/metrics.jsonl`` and
    ``out_dir/checkpoints/step-NNNNNNNN/``. With ``config.resume`` it continues
    from the latest complete checkpoint. A NaN or inf loss raises
    :class:`NonFiniteLossError` before it can reach the weights; the last good
    checkpoint is kept. On a fresh start python, numpy and torch are seeded
    from ``config.seed`` and the rank (after the model was built: its
    initialisation is the caller's); on resume every RNG state is the
    checkpoint's. Taught in ``07_videobert_pretraining``; fine-tuning in
    ``09_fine_tuning``.
    """
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    if not isinstance(loaders, Mapping):
        loaders = {"default": loaders}

    # ---- processes and device
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(config.device, local_rank)
    owns_process_group = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # DistributedDataParallel imports torch._dynamo on first use, and an import of torch._dynamo after the group
        # exists keeps a reference to it: destroy_process_group then cannot free it, gloo's worker threads outlive
        # it, and one that drops its last collective's tensors while the interpreter shuts down aborts the process
        # ("terminate called without an active exception", SIGABRT; 1 run in 20 on a loaded 2-core machine, after
        # train() had returned and every file was written). Imported first, the group is freed and its threads
        # joined by destroy_process_group below (tests/test_train.py checks that none is left)
        import torch._dynamo  # noqa: F401
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns_process_group = True
    rank, world_size = _dist_rank_world()
    is_main = rank == 0
    try:
        result = _train(model, loaders, config, out_dir, evaluate, device, rank, world_size, is_main)
        if owns_process_group:
            # every rank past its last collective (and rank 0 past its last checkpoint) before any rank tears the
            # group down. Not on an exception: the other rank may never arrive
            dist.barrier()
        return result
    finally:
        if owns_process_group:
            dist.destroy_process_group()


def _train(model, loaders, config, out_dir, evaluate, device, rank, world_size, is_main) -> TrainResult:
    from tqdm.auto import tqdm

    distributed = world_size > 1
    model = model.to(device)
    autocast_dtype, use_scaler = _resolve_precision(config.precision, device)
    # the fused kernel: one pass over all parameters instead of a loop of small ops (7.5 vs 53 ms per step on
    # 2 CPU cores for the cpu profile's 17.7M-parameter model); the same update, to float rounding
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps,
                                  fused=device.type in ("cpu", "cuda"))
    schedule = WarmupDecay(config.warmup_steps, config.max_steps, config.decay, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    batches = MixedBatches(loaders, config.regime_weights, seed=config.seed)
    metrics_path = out_dir / METRICS_FILE

    # ---- start fresh or resume
    resumed_from = None
    if isinstance(config.resume, (str, os.PathLike)):
        resumed_from = Path(config.resume)
        if not _is_complete(resumed_from):
            raise FileNotFoundError(f"{resumed_from}: not a complete training checkpoint (it needs {STATE_JSON}, {WEIGHTS_FILE} and {STATE_FILE})")
    elif config.resume:
        resumed_from = latest_checkpoint(out_dir)
    elif list_checkpoints(out_dir):
        raise FileExistsError(
            f"{out_dir}: holds checkpoints of an earlier run and resume=False; pass resume=True to continue it, "
            "or choose another out_dir (or delete this one) to start afresh"
        )
    start_step = 0
    rng_to_restore = None
    if resumed_from is not None:
        state = torch.load(resumed_from / STATE_FILE, map_location="cpu", weights_only=True)
        _load_weights(model, resumed_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # the schedule's shape comes from this config (loading overwrote it with the saved one), so a longer
        # max_steps stretches the decay; with the same config these are the very numbers of the saved run
        schedule = WarmupDecay(config.warmup_steps, config.max_steps, config.decay, config.min_lr_ratio)
        scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * schedule(scheduler.last_epoch)
        _warn_if_config_changed(resumed_from, config)
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        start_step = int(state["step"])
        saved_ranks = state["rng"]
        if len(saved_ranks) != world_size:
            warnings.warn(f"{resumed_from}: saved by {len(saved_ranks)} process(es), resumed by {world_size}; "
                          "every process takes rank 0's RNG state, so the run is no longer an exact continuation", stacklevel=3)
        rng_to_restore = saved_ranks[rank] if rank < len(saved_ranks) else saved_ranks[0]
    else:
        random.seed(_mix_seed(config.seed, rank, 4))
        np.random.seed(_mix_seed(config.seed, rank, 5) % 2**32)
        torch.manual_seed(_mix_seed(config.seed, rank, 6))
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.to_json(out_dir / CONFIG_FILE)
        if resumed_from is not None:
            _truncate_metrics(metrics_path, start_step)  # records after the checkpoint are written again
        else:
            metrics_path.unlink(missing_ok=True)
    last_checkpoint = resumed_from

    net = _LossesOnly(model)
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    model.train()
    if rng_to_restore is not None:
        _set_rng_state(rng_to_restore)  # last, so nothing above moves the generators
    if start_step >= config.max_steps:
        return TrainResult(start_step, last_checkpoint, metrics_path, resumed_from)

    def all_ranks_finite(values: torch.Tensor) -> bool:
        ok = torch.isfinite(values).all().to(device=device, dtype=torch.int32)
        if distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank stops together, none waits in a collective
        return bool(ok)

    def stop(step, regime, name, value, extra=""):
        where = str(last_checkpoint) if last_checkpoint is not None else "none (no checkpoint was written yet)"
        message = (
            f"step {step} (regime {regime!r}): {name} is {value}; training stopped before the update.{extra} "
            f"The last good checkpoint is {where} and was kept. Try a lower learning rate (lr={config.lr} now), "
            f"a longer warm-up (warmup_steps={config.warmup_steps}), gradient clipping (max_grad_norm={config.max_grad_norm}), "
            f"or precision='fp32' (precision={config.precision!r} now); resume=True restarts from that checkpoint."
        )
        if is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"kind": "stop", "step": step, "regime": regime, "reason": f"{name} is {value}"}) + "\n")
        raise NonFiniteLossError(message, step, name, value, last_checkpoint)

    progress = tqdm(total=config.max_steps, initial=start_step, desc="train", disable=not (config.progress and is_main))
    step = start_step
    try:
        for step in range(start_step + 1, config.max_steps + 1):
            t0 = time.perf_counter()
            regime = batches.choose_regime()  # one regime per optimizer step, the same on every rank
            step_losses: dict[str, torch.Tensor] = {}
            tokens = 0
            for micro in range(config.grad_accum_steps):
                batch = _to_device(batches.next_batch(regime), device)
                tokens += _count_tokens(batch)
                last_micro = micro == config.grad_accum_steps - 1
                sync = contextlib.nullcontext() if (last_micro or not distributed) else net.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        losses = net(batch)
                        total = sum(config.loss_weights.get(name, 1.0) * loss.float() for name, loss in losses.items())
                    values = torch.stack([total.detach(), *(loss.detach().float() for loss in losses.values())])
                    if not all_ranks_finite(values):
                        bad = next((n for n, l in losses.items() if not torch.isfinite(l.detach()).all()), "the total loss")
                        value = float(losses[bad].detach()) if bad in losses else float(total.detach())
                        stop(step, regime, f"loss {bad!r}" if bad in losses else bad, value)
                    scaler.scale(total / config.grad_accum_steps).backward()
                for name, loss in losses.items():
                    step_losses[name] = step_losses.get(name, 0.0) + loss.detach().float() / config.grad_accum_steps
                step_losses["__total__"] = step_losses.get("__total__", 0.0) + total.detach() / config.grad_accum_steps

            scaler.unscale_(optimizer)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if not use_scaler and not all_ranks_finite(grad_norm.detach().reshape(1)):
                stop(step, regime, "the gradient norm", float(grad_norm))  # fp16 skips such steps itself (GradScaler)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()

            # ---- log: losses averaged over micro-batches and ranks, tokens summed over ranks
            names = [n for n in step_losses if n != "__total__"]
            summary = torch.stack([step_losses["__total__"], *(step_losses[n] for n in names),
                                   torch.tensor(float(tokens), device=device)])
            if distributed:
                dist.all_reduce(summary)
                summary[:-1] /= world_size
            summary = summary.tolist()
            elapsed = time.perf_counter() - t0
            record = {"kind": "train", "step": step, "regime": regime, "loss": summary[0],
                      "losses": dict(zip(names, summary[1:-1])), "lr": lr, "grad_norm": float(grad_norm),
                      "tokens": int(summary[-1]), "tokens_per_s": summary[-1] / elapsed if elapsed > 0 else None}
            if is_main:
                if step % config.log_every == 0 or step == config.max_steps:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                progress.update(1)
                progress.set_postfix(loss=f"{summary[0]:.4f}", regime=regime)

            if evaluate is not None and config.eval_every and step % config.eval_every == 0 and is_main:
                model.eval()
                with _rng_untouched(), torch.no_grad():
                    results = dict(evaluate(model))
                model.train()
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"kind": "eval", "step": step, **results}) + "\n")

            if step % config.checkpoint_every == 0 or step == config.max_steps:
                if not all_ranks_finite(torch.stack([p.detach().float().abs().max() for p in model.parameters()])):
                    stop(step, regime, "a parameter", float("nan"), " The weights stopped being finite; this state was not saved.")
                rng_states = [None] * world_size
                if distributed:
                    dist.all_gather_object(rng_states, _rng_state())
                else:
                    rng_states = [_rng_state()]
                if is_main:
                    trainer_state = {
                        "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if use_scaler else {}, "data": batches.state_dict(),
                        "rng": rng_states, "world_size": world_size,
                    }
                    summary_json = {"step": step, "world_size": world_size, "regime": regime, "loss": record["loss"],
                                    "losses": record["losses"], "lr": lr, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "config": config.to_dict()}
                    last_checkpoint = _write_checkpoint(out_dir, step, model, trainer_state, summary_json, config.keep_last)
                if distributed:
                    dist.barrier()
                    last_checkpoint = out_dir / CHECKPOINT_DIR / f"step-{step:08d}"
    finally:
        progress.close()
    return TrainResult(step, last_checkpoint, metrics_path, resumed_from)
