"""Clip features: one vector per 1.5 s clip, extracted in batches, cached on disk, resumable.

VideoBERT turns every clip (30 frames at 20 fps) into a feature vector with a
video network pretrained on a large labelled action data set, then quantises
the vectors into visual words (notebook 05). Two extractors sit behind one
interface, :class:`Extractor` (``prepare`` uint8 clips, ``forward`` to
``(B, dim)``):

- ``s3d``: the paper's extractor, torchvision's S3D with its Kinetics-400
  weights, pooled before the classifier (1024-d). The weights (32 MB) come
  from the torch hub cache or the internet; where neither has them,
  :class:`WeightsNotFound` says which file to fetch and where to put it.
- ``tinycook3d``: the offline default, a small 3D CNN (256-d) trained in about
  a minute on the CPU with the hidden verb, noun and scene labels of *part of
  TinyCook's training videos* (:func:`extractor_split`), disjoint from every
  video a later notebook evaluates on, as Kinetics is disjoint from YouCook2.

:func:`extract` runs an extractor over a folder of videos: clips are decoded
in DataLoader workers (streaming, one clip at a time, so memory stays flat in
the length of a video), embedded in batches on the GPU where present, and
written as safetensors shards with a JSONL manifest (video id, clip index,
start and end seconds, shard, row). It is resumable after a crash or
``kill -9``: shards are written to a temporary file and moved into place
(``os.replace``), manifest lines are appended only after their shard exists,
and a restart skips every finished video and repairs a torn manifest tail.
Unreadable files are recorded in the manifest with their error and skipped.
Under ``torchrun`` each rank takes every ``WORLD_SIZE``-th video and writes its
own shards and manifest; :func:`load_features` reads the union, in a canonical
order (video id, clip index), so the result does not depend on the number of
ranks, workers or restarts: bit for bit at a given torch thread count (torchrun
sets one thread per process; other thread counts change the last bits, about
1e-7 relative, as reductions are summed in another order). CLI:
``vbert-lab extract --videos DIR --out DIR``.

Taught in ``04_clip_features``; the features feed ``05_visual_and_audio_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

FPS = 20.0  # the paper's sampling rate
CLIP_FRAMES = 30  # 30 frames at 20 fps = 1.5 s
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv")
FORMAT_VERSION = 1
CONFIG_FILE = "extract.json"
AUDIO_MELS = 64  # log-mel bands of the per-clip audio features (mean and std over time: 2 * AUDIO_MELS)
AUDIO_RATE = 16000
EXTRACTORS = ("tinycook3d", "s3d")
OFFLINE_ENV = "VBERT_LAB_OFFLINE"


class WeightsNotFound(FileNotFoundError):
    """An extractor's weights are not here; the message says which file to get and where to put it."""


class ExtractError(RuntimeError):
    """Extraction cannot start (an output folder made by another extractor, no videos...); the message says what to do."""


# --------------------------------------------------------------------------- the interface


class Extractor(nn.Module):
    """A clip feature extractor: ``embed(uint8 (B, T, H, W, C)) -> float (B, dim)``.

    Clips are decoded at ``fps`` with ``clip_frames`` frames of
    ``frame_size`` x ``frame_size`` pixels; :meth:`prepare` turns them into the
    network's input on the clips' device (crop, frame stride, normalisation),
    :meth:`forward` maps that input to one pooled vector per clip. Taught in
    ``04_clip_features``.
    """

    name: str = ""
    dim: int = 0
    fps: float = FPS
    clip_frames: int = CLIP_FRAMES
    frame_size: int = 64

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 clips ``(B, T, H, W, C)`` to features ``(B, dim)`` (no gradients, eval mode)."""
        was_training = self.training
        self.eval()
        try:
            return self(self.prepare(clips))
        finally:
            self.train(was_training)

    def fingerprint(self) -> str:
        """A short hash of the weights and of the input settings: features from equal fingerprints are comparable."""
        digest = hashlib.sha256(json.dumps([self.name, self.fps, self.clip_frames, self.frame_size]).encode())
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "dim": self.dim, "fps": self.fps, "clip_frames": self.clip_frames,
                "frame_size": self.frame_size, "fingerprint": self.fingerprint()}


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, H, W, C)`` -> float ``(B, C, T, H, W)`` standardised per colour channel."""
    x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, C, T, H, W)
    return (x - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)


# --------------------------------------------------------------------------- S3D, the paper's extractor


def s3d_weights_file() -> Path:
    """Where torch looks for S3D's Kinetics-400 weights: ``<torch.hub.get_dir()>/checkpoints/s3d-d76dad2f.pth``."""
    from torchvision.models.video import S3D_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(S3D_Weights.KINETICS400_V1.url).name


def _offline() -> bool:
    return any(os.environ.get(var, "") not in ("", "0") for var in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def _s3d_missing_message(reason: str) -> str:
    from torchvision.models.video import S3D_Weights

    url = S3D_Weights.KINETICS400_V1.url
    target = s3d_weights_file()
    return (
        f"S3D's Kinetics-400 weights are not available here ({reason}). They are one 32 MB file: download\n"
        f"    {url}\n"
        f"on a machine with internet (e.g. `curl -LO {url}`) and copy it to\n"
        f"    {target}\n"
        f"(the torch hub cache: set $TORCH_HOME to move it), or pass weights='/path/to/{target.name}'. "
        "Without them, use the offline extractor: extractor='tinycook3d'."
    )


def load_s3d_state(download: bool | None = None) -> dict[str, torch.Tensor]:
    """S3D's Kinetics-400 state dict, from the torch hub cache or (where allowed and possible) the internet.

    ``download=None`` downloads unless ``$VBERT_LAB_OFFLINE`` or ``$HF_HUB_OFFLINE``
    is set. Raises :class:`WeightsNotFound` naming the URL and the cache path.
    Taught in ``04_clip_features``.
    """
    from torchvision.models.video import S3D_Weights

    weights = S3D_Weights.KINETICS400_V1
    target = s3d_weights_file()
    if target.is_file():
        expected = re.search(r"-([0-9a-f]{8,})\.", target.name)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if expected and not digest.startswith(expected.group(1)):
            raise WeightsNotFound(_s3d_missing_message(f"{target} is there but its SHA-256 starts {digest[:8]}, "
                                                       f"not {expected.group(1)}: a partial or corrupt download; delete it"))
        return torch.load(target, map_location="cpu", weights_only=True)
    if download is False or (download is None and _offline()):
        raise WeightsNotFound(_s3d_missing_message(f"{target} does not exist and downloads are off"))
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: no internet
        raise WeightsNotFound(_s3d_missing_message(f"{target} does not exist and the download failed: {err}")) from None


class S3DExtractor(Extractor):
    """torchvision's S3D, pooled before the classifier: 1024-d per clip (the paper's extractor).

    Frames are decoded at 256 x 256 and centre-cropped to 224 (S3D's Kinetics
    recipe), standardised with Kinetics' mean and std. ``weights``:
    ``"kinetics400"`` (the hub cache or the internet, see :func:`load_s3d_state`),
    ``"random"`` (untrained, to check shapes and the pipeline) or a path to the
    ``.pth`` file. Taught in ``04_clip_features``.
    """

    name = "s3d"
    dim = 1024
    frame_size = 256
    crop = 224
    MEAN = (0.43216, 0.394666, 0.37645)
    STD = (0.22803, 0.22145, 0.216989)

    def __init__(self, weights: str | os.PathLike = "kinetics400", download: bool | None = None, seed: int = 0):
        super().__init__()
        from torchvision.models.video import s3d

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = s3d(weights=None)
        if weights == "kinetics400":
            state = load_s3d_state(download)
        elif weights == "random":
            state = None
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsNotFound(_s3d_missing_message(f"{path} does not exist"))
            state = torch.load(path, map_location="cpu", weights_only=True)
        if state is not None:
            self.backbone.load_state_dict(state)
        self.weights = str(weights)
        self.register_buffer("mean", torch.tensor(self.MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD), persistent=False)
        self.eval()

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:
        h, w = clips.shape[2], clips.shape[3]
        top, left = max(0, (h - self.crop) // 2), max(0, (w - self.crop) // 2)
        clips = clips[:, :, top:top + self.crop, left:left + self.crop]
        return _normalise(clips, self.mean, self.std)  # (B, 3, T, 224, 224)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone.features(x)  # (B, 1024, T/8, H/32, W/32)
        if f.shape[2] >= 2 and f.shape[3] >= 7 and f.shape[4] >= 7:
            f = self.backbone.avgpool(f)  # torchvision's own pooling, so classifier(pooled) gives its logits
        return f.mean(dim=(2, 3, 4))  # (B, 1024)


# --------------------------------------------------------------------------- the offline extractor


@dataclass
class TinyCook3DConfig:
    """Sizes of :class:`TinyCook3D` (the defaults train in about a minute on two CPU cores)."""

    frame_size: int = 64  # frames are decoded at frame_size x frame_size
    frame_stride: int = 2  # the network sees every other frame of a 30-frame clip: 15 frames, 10 fps
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)  # the last is the feature size
    # how the last feature map (B, C, T', H', W') becomes one vector: "max" averages over time, then takes the
    # largest response over space (an ingredient fills an eighth of the frame: averaged with the background
    # it faded, and a probe read the noun at 0.20 against 0.43 with "max" after 16 epochs, 2026-11-27);
    # "mean" averages over everything (files saved before this field existed)
    pooling: str = "max"
    verbs: tuple[str, ...] = ()  # label vocabularies of the training heads (TinyCook's by default)
    nouns: tuple[str, ...] = ()
    scenes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from .tinycook import INGREDIENTS, SCENES, VERBS

        self.channels = tuple(int(c) for c in self.channels)
        if self.pooling not in ("max", "mean"):
            raise ValueError(f"TinyCook3DConfig.pooling={self.pooling!r}: use 'max' (over space) or 'mean'")
        self.verbs = tuple(self.verbs) or VERBS
        self.nouns = tuple(self.nouns) or INGREDIENTS
        self.scenes = tuple(self.scenes) or SCENES


def _conv_block(c_in: int, c_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> nn.Sequential:
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class TinyCook3D(Extractor):
    """A small 3D CNN (C3D-like: 3x3x3 convolutions; average over time, max over space), 256-d per clip.

    Trained by :func:`train_tinycook3d` to predict the verb (or "no step"),
    noun and scene of a clip from its frames; the heads are kept in the
    weights file but :meth:`forward` returns the pooled features only.
    Taught in ``04_clip_features``.
    """

    name = "tinycook3d"

    def __init__(self, config: TinyCook3DConfig | None = None):
        super().__init__()
        self.config = config or TinyCook3DConfig()
        c = self.config.channels
        self.frame_size = int(self.config.frame_size)
        self.dim = int(c[-1])
        # (B, 3, 15, 64, 64) -> stem (B, c0, 8, 32, 32) -> (c1, 8, 16, 16) -> (c2, 4, 8, 8) -> (c3, 4, 4, 4)
        strides = [(1, 2, 2), (2, 2, 2), (1, 2, 2)] + [(1, 1, 1)] * max(0, len(c) - 4)
        layers = [_conv_block(3, c[0], (3, 5, 5), (2, 2, 2))]
        layers += [_conv_block(c[i], c[i + 1], (3, 3, 3), strides[i]) for i in range(len(c) - 2)]
        layers.append(_conv_block(c[-2], c[-1], (1, 1, 1), (1, 1, 1)))  # pointwise: widen to the feature size
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            "verb": nn.Sequential(nn.Dropout(0.3), nn.Linear(self.dim, len(self.config.verbs) + 1)),  # + "no step"
            "noun": nn.Sequential(nn.Dropout(0.3), nn.Linear(self.dim, len(self.config.nouns))),
            "scene": nn.Sequential(nn.Dropout(0.3), nn.Linear(self.dim, len(self.config.scenes))),
        })
        self.register_buffer("mean", torch.full((3,), 0.45), persistent=False)
        self.register_buffer("std", torch.full((3,), 0.225), persistent=False)
        self.meta: dict[str, Any] = {}

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:
        clips = clips[:, :: self.config.frame_stride]  # (B, 15, H, W, C)
        return _normalise(clips, self.mean, self.std)  # (B, 3, 15, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, dim, T', H', W')
        if self.config.pooling == "mean":
            return h.mean(dim=(2, 3, 4))  # (B, dim)
        return h.mean(dim=2).amax(dim=(2, 3))  # (B, dim): average over time, strongest place in the frame

    def fingerprint(self) -> str:  # the same weights pooled another way give other features
        return hashlib.sha256(f"{super().fingerprint()}:{self.config.pooling}".encode()).hexdigest()[:16]

    def logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}


def save_extractor(model: TinyCook3D, path: str | os.PathLike) -> Path:
    """Write a :class:`TinyCook3D` (weights, config, training record) as one safetensors file, atomically.
    Taught in ``04_clip_features``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"extractor": model.name, "config": asdict(model.config), "meta": model.meta}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"vbert_lab": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_tinycook3d(path: str | os.PathLike) -> TinyCook3D:
    """A :class:`TinyCook3D` saved by :func:`save_extractor`. Taught in ``04_clip_features``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(
            f"{path}: no tinycook3d weights here. Train them with vbert_lab.features.train_tinycook3d "
            "(or run notebook 04_clip_features, which saves them under <DATA_DIR>/derived/extractor/), "
            "then pass that file (--weights in `vbert-lab extract`)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = json.loads((fh.metadata() or {}).get("vbert_lab", "{}"))
        state = load_file(str(path))
    except Exception as err:
        raise WeightsNotFound(f"{path}: not a readable tinycook3d weights file ({err}); delete it and train again") from None
    if header.get("extractor") != TinyCook3D.name:
        raise WeightsNotFound(f"{path}: holds {header.get('extractor')!r} weights, not tinycook3d; pass the right file")
    # the weights are the file's: building the network must not move the caller's generator (its random
    # initialisation is thrown away), or whatever the caller draws next would depend on loading an extractor
    with torch.random.fork_rng(devices=[]):
        model = TinyCook3D(TinyCook3DConfig(**{"pooling": "mean", **header["config"]}))  # older files pooled by mean
    model.load_state_dict(state)
    model.meta = header.get("meta", {})
    return model.eval()


def load_extractor(name: str | Extractor = "tinycook3d", weights: str | os.PathLike | None = None,
                   download: bool | None = None) -> Extractor:
    """An extractor by name: ``"tinycook3d"`` (``weights``: a file from :func:`save_extractor`,
    or ``"random"``) or ``"s3d"`` (``weights``: ``None``/``"kinetics400"``, ``"random"`` or a
    ``.pth`` path). Taught in ``04_clip_features``.
    """
    if isinstance(name, Extractor):
        return name
    if name == "tinycook3d":
        if weights is None:
            raise WeightsNotFound(
                "the tinycook3d extractor needs its trained weights: pass weights=<file> (made by "
                "vbert_lab.features.train_tinycook3d or notebook 04_clip_features, saved under "
                "<DATA_DIR>/derived/extractor/tinycook3d.safetensors), or weights='random' for an untrained one")
        if str(weights) == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return TinyCook3D().eval()
        return load_tinycook3d(weights)
    if name == "s3d":
        return S3DExtractor("kinetics400" if weights is None else weights, download=download)
    raise ValueError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")


def extractor_weights_for(name: str, videos: str | os.PathLike) -> str | None:
    """Default weights for ``vbert-lab extract``: for ``tinycook3d`` on a TinyCook ``videos/`` folder,
    the file notebook 04 saved beside it (``<set>/derived/extractor/tinycook3d.safetensors``)."""
    if name != "tinycook3d":
        return None
    path = Path(videos).parent / "derived" / "extractor" / "tinycook3d.safetensors"
    if path.is_file():
        return str(path)
    raise WeightsNotFound(
        f"no tinycook3d weights for {videos}: looked for {path}. Pass --weights FILE (made by "
        "vbert_lab.features.train_tinycook3d, or by notebook 04_clip_features under <DATA_DIR>/derived/extractor/), "
        "--weights random for an untrained net, or --extractor s3d")


# --------------------------------------------------------------------------- decoding clips (DataLoader workers)


def list_videos(videos: str | os.PathLike | Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(video id, path)`` for a folder (every entry with a video suffix, folders and
    broken links included, so they are reported) or an explicit list of paths, sorted by id.
    The id is the file name without its suffix. Taught in ``04_clip_features``.
    """
    if isinstance(videos, (str, os.PathLike)):
        folder = Path(videos)
        if not folder.is_dir():
            raise ExtractError(f"{folder}: not a folder of videos; check --videos (it must be a folder)")
        paths = [p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")]
    else:
        paths = [Path(p) for p in videos]
    items = sorted(((p.stem, p) for p in paths), key=lambda item: (item[0], str(item[1])))
    seen: dict[str, Path] = {}
    for vid, path in items:
        if vid in seen:
            raise ExtractError(f"two videos share the id {vid!r} ({seen[vid]} and {path}); rename one, ids are file names")
        seen[vid] = path
    return items


class _ClipStream(torch.utils.data.IterableDataset):
    """Decodes videos clip by clip in DataLoader workers; yields chunks of one video's clips.

    Items: ``{"kind": "clips", "video", "frames" uint8 (B, T, H, W, C), "start_s"}`` with
    ``B <= batch_size``, then ``{"kind": "done", "video", "n_clips", "times", "audio"}`` or
    ``{"kind": "failed", "video", "error"}``. Chunks never mix videos. The extracting
    process gathers them into the extractor's batches (:class:`_Batcher`); small chunks keep
    what waits between the processes small and the same for a short and a long video
    (``bench/extract_memory.py``).
    """

    def __init__(self, items: Sequence[tuple[int, Path]], frame_size: int, batch_size: int, fps: float = FPS,
                 clip_frames: int = CLIP_FRAMES, backend: str | None = None, audio: bool = False):
        self.items, self.frame_size, self.batch_size = list(items), int(frame_size), int(batch_size)
        self.fps, self.clip_frames, self.backend, self.audio = fps, clip_frames, backend, audio

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = self.items if info is None else self.items[info.id:: info.num_workers]
        for index, path in mine:
            yield from self._video(index, path)

    def _video(self, index: int, path: Path) -> Iterator[dict[str, Any]]:
        from .video import VideoReader

        times: list[tuple[float, float]] = []
        try:
            with VideoReader(path, backend=self.backend) as reader:
                batch: list[np.ndarray] = []
                starts: list[float] = []
                for clip in reader.iter_clips(fps=self.fps, clip_frames=self.clip_frames, size=self.frame_size):
                    batch.append(clip.frames)
                    starts.append(clip.start_s)
                    times.append(clip.times)
                    if len(batch) == self.batch_size:
                        yield self._batch(index, batch, starts)
                        batch, starts = [], []
                        _trim_heap()  # the freed frames of this chunk back to the system, not kept for the next
                if batch:
                    yield self._batch(index, batch, starts)
            audio = _audio_features(path, times) if self.audio and times else None
        except Exception as err:  # any unreadable file: recorded, never fatal
            yield {"kind": "failed", "video": index, "error": f"{type(err).__name__}: {err}"}
            return
        finally:
            _trim_heap()
        yield {"kind": "done", "video": index, "n_clips": len(times), "times": times, "audio": audio}

    def _batch(self, index: int, frames: list[np.ndarray], starts: list[float]) -> dict[str, Any]:
        return {"kind": "clips", "video": index, "frames": torch.from_numpy(np.stack(frames)), "start_s": list(starts)}


DECODE_CHUNK = 8  # clips per item a decoding worker hands over (the extractor's batch is gathered from them)


class _Batcher:
    """Gathers one video's decoded chunks into batches of exactly ``batch_size`` clips (the last may be short).

    The clips are copied into one preallocated buffer, so a batch costs its own size
    and nothing more while it waits; a video is cut into the same batches whatever
    the chunk size, the worker count or a restart, so its features are the same bit for bit.
    """

    def __init__(self, batch_size: int, pin: bool = False):
        self.batch_size, self.pin = int(batch_size), bool(pin)  # pin: page-locked, for fast copies to the GPU
        self.buffer: torch.Tensor | None = None
        self.fill = 0

    def add(self, frames: torch.Tensor) -> Iterator[torch.Tensor]:
        """Copy ``frames`` in; yield each batch as it fills (a view of the buffer: use it before the next ``add``)."""
        lo = 0
        while lo < len(frames):
            if self.buffer is None:
                self.buffer = torch.empty((self.batch_size, *frames.shape[1:]), dtype=frames.dtype, pin_memory=self.pin)
            take = min(self.batch_size - self.fill, len(frames) - lo)
            self.buffer[self.fill:self.fill + take] = frames[lo:lo + take]
            self.fill, lo = self.fill + take, lo + take
            if self.fill == self.batch_size:
                self.fill = 0
                yield self.buffer

    def rest(self) -> torch.Tensor | None:
        """The clips left over at the end of the video, or ``None``."""
        out = self.buffer[:self.fill] if self.buffer is not None and self.fill else None
        self.buffer, self.fill = None, 0
        return out


def _audio_features(path: Path, times: list[tuple[float, float]], chunk: int = 64) -> dict[str, Any]:
    """Per clip: mean and std over time of the log-mel bands (``2 * AUDIO_MELS``), the silent flag."""
    from .audio import logmel_clips, read_audio

    track = read_audio(path, sample_rate=AUDIO_RATE)
    pooled, silent = [], []
    for lo in range(0, len(times), chunk):  # in chunks: the spectrograms of a long video never sit in memory at once
        mels = logmel_clips(path, times[lo:lo + chunk], sample_rate=AUDIO_RATE, n_mels=AUDIO_MELS, track=track)
        feats = torch.from_numpy(mels.features)  # (n, n_mels, F)
        pooled.append(torch.cat([feats.mean(dim=2), feats.std(dim=2)], dim=1))
        silent.extend(bool(s) for s in mels.silent)
    return {"features": torch.cat(pooled), "silent": silent, "has_audio": bool(track.has_audio)}


MMAP_THRESHOLD = 1 << 20  # bytes: glibc serves blocks at least this large with mmap, and unmaps them on free


def _keep_heap_flat() -> None:
    """Make glibc return large freed blocks to the system at once (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``).

    By default glibc raises its mmap threshold each time a large block is freed,
    after which the batch-sized buffers of convolutions and decoded frames come
    from the heap, fragment it, and resident memory creeps up with the number
    of batches, that is with the length of the video (from a 10 s to a 180 s video the
    extracting process grew by 10-25 % before this). A fixed threshold keeps it flat
    (``bench/extract_memory.py``).
    Process-wide and inherited by forked DataLoader workers; a no-op off glibc.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX: decoder threads share two heaps instead of one each
    except (OSError, AttributeError):
        pass


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``).

    Called after each batch, in the decoding worker and in the extracting
    process: the small blocks of a batch (per-frame arrays, tensor metadata)
    otherwise stay in the heap until the video ends, so the peak grew with the
    video's length (``extract_memory.growth`` 0.124 with a trim per video;
    0.048 to 0.118 over four runs with one per batch, on the 2-core machine).
    """
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _loader(stream: _ClipStream, workers: int) -> Iterator[dict[str, Any]]:
    """The stream's items, decoded in ``workers`` DataLoader processes (``0``: in this one)."""
    import gc

    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         prefetch_factor=2 if workers else None)
    # Forked workers share the parent's pages until they write to them; the garbage collector
    # writes to every object it visits, copying the parent's heap page by page the longer a
    # worker runs. Frozen objects are never visited, so a worker's memory stays flat.
    gc.freeze()
    try:
        iterator = iter(loader)  # the workers fork here
    finally:
        gc.unfreeze()
    yield from iterator


def default_workers(n_videos: int) -> int:
    """DataLoader workers for decoding: one per CPU core, at most 4, never more than videos. Used in ``04_clip_features``."""
    return max(0, min(4, os.cpu_count() or 1, n_videos))


# --------------------------------------------------------------------------- output: shards and manifest


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _manifest_name(rank: int) -> str:
    return f"manifest-r{rank:05d}.jsonl"


def _shard_name(rank: int, number: int) -> str:
    return f"shard-r{rank:05d}-{number:06d}.safetensors"


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a manifest file; a torn last line (a crash mid-write) is dropped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "video" in row and "status" in row:
            rows.append(row)
    return rows


def _complete(rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Rows of the videos whose record is whole: all ``n_clips`` rows there, every shard on disk."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_video.setdefault(row["video"], []).append(row)
    keep = []
    for video_rows in by_video.values():
        ok = [r for r in video_rows if r["status"] == "ok"]
        other = [r for r in video_rows if r["status"] != "ok"]
        if ok:
            clips = sorted({r["clip"] for r in ok})
            shards = {r["shard"] for r in ok}
            if clips == list(range(ok[0]["n_clips"])) and len(ok) == len(clips) and all((folder / s).is_file() for s in shards):
                keep.extend(sorted(ok, key=lambda r: r["clip"]))  # a retried file that now reads: its clips win
                continue
        if other:
            keep.append(other[-1])
    return keep


def read_manifest(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every whole manifest row of a features folder (all ranks), sorted by video id and clip.

    A row is ``{"video", "file", "status", "n_clips", ...}``: status ``"ok"`` rows
    (one per clip) add ``"clip", "start_s", "end_s", "shard", "row"``; a
    ``"failed"`` row (one per unreadable file) adds ``"error"``; an ``"empty"``
    row marks a video shorter than one clip. Taught in ``04_clip_features``.
    """
    folder = Path(out_dir)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in sorted(folder.glob("manifest-r*.jsonl")):
        found = [r for r in _complete(_read_lines(path), folder) if r["video"] not in seen]
        rows.extend(found)  # a video another rank's file holds already (a re-run with another world size) is kept once
        seen.update(r["video"] for r in found)
    return sorted(rows, key=lambda r: (r["video"], r.get("clip", -1)))


def load_failures(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The unreadable files of a features folder: rows ``{"video", "file", "error"}``. Taught in ``04_clip_features``."""
    return [r for r in read_manifest(out_dir) if r["status"] == "failed"]


def load_features(out_dir: str | os.PathLike, kind: str = "video") -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """All features of a features folder: ``(tensor (N, D), rows)``, in (video id, clip) order.

    ``kind="video"`` gives the extractor's features; ``kind="audio"`` the
    per-clip audio features (mean and std of 64 log-mel bands, 128-d), where
    extraction ran with ``audio=True``. ``rows[i]`` is the manifest row of
    ``tensor[i]``. The order does not depend on ranks, workers or restarts.
    Taught in ``04_clip_features``; used by ``05_visual_and_audio_tokens``.
    """
    from safetensors import safe_open

    folder = Path(out_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no extracted features here ({CONFIG_FILE} is missing); run "
                                "vbert_lab.features.extract (or `vbert-lab extract --videos DIR --out {folder}`) first")
    if kind not in ("video", "audio"):
        raise ValueError(f"kind must be 'video' or 'audio', not {kind!r}")
    config = json.loads((folder / CONFIG_FILE).read_text())
    if kind == "audio" and not config.get("audio"):
        raise ValueError(f"{folder}: was extracted without audio features; extract again with audio=True (--audio)")
    rows = [r for r in read_manifest(folder) if r["status"] == "ok"]
    dim = config["dim"] if kind == "video" else 2 * AUDIO_MELS
    out = torch.empty((len(rows), dim), dtype=torch.float32)
    by_shard: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_shard.setdefault(row["shard"], []).append(i)
    for shard, where in by_shard.items():
        with safe_open(str(folder / shard), framework="pt") as fh:
            table = fh.get_tensor(kind)
        out[where] = table[[rows[i]["row"] for i in where]]
    return out, rows


class _ShardWriter:
    """One rank's output: buffers whole videos, writes a shard atomically, then appends its manifest rows."""

    def __init__(self, folder: Path, rank: int, shard_rows: int, audio: bool):
        self.folder, self.rank, self.shard_rows, self.audio = folder, rank, max(1, int(shard_rows)), audio
        self.manifest = folder / _manifest_name(rank)
        kept = _complete(_read_lines(self.manifest), folder) if self.manifest.exists() else []
        _atomic_write_text(self.manifest, "".join(json.dumps(r) + "\n" for r in kept))  # drop a torn tail
        used = {r["shard"] for r in kept if r["status"] == "ok"}
        prefix = f"shard-r{rank:05d}-"
        for path in folder.glob(f"{prefix}*.safetensors"):  # a shard whose rows never reached the manifest
            if path.name not in used:
                path.unlink()
        for path in folder.glob(f".{prefix}*.tmp"):
            path.unlink()
        numbers = [int(name[len(prefix):].split(".")[0]) for name in used]
        self.next_number = max(numbers, default=-1) + 1
        self.video_feats: list[torch.Tensor] = []
        self.audio_feats: list[torch.Tensor] = []
        self.rows: list[dict[str, Any]] = []

    def add(self, video_id: str, file: str, feats: torch.Tensor, times: list[tuple[float, float]],
            audio: dict[str, Any] | None) -> None:
        n = len(times)
        if n == 0:
            self._append([{"video": video_id, "file": file, "status": "empty", "n_clips": 0,
                           "error": "shorter than one clip (1.5 s at 20 fps): nothing to extract"}])
            return
        base = sum(len(f) for f in self.video_feats)
        for i, (t0, t1) in enumerate(times):
            row = {"video": video_id, "file": file, "status": "ok", "n_clips": n, "clip": i,
                   "start_s": round(float(t0), 6), "end_s": round(float(t1), 6), "shard": None, "row": base + i}
            if audio is not None:
                row["silent"] = audio["silent"][i]
                row["has_audio"] = audio["has_audio"]
            self.rows.append(row)
        self.video_feats.append(feats)
        if self.audio:
            self.audio_feats.append(audio["features"] if audio is not None else torch.zeros(n, 2 * AUDIO_MELS))
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def fail(self, video_id: str, file: str, error: str) -> None:
        self._append([{"video": video_id, "file": file, "status": "failed", "n_clips": 0, "error": error}])

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.rows:
            return
        name = _shard_name(self.rank, self.next_number)
        tensors = {"video": torch.cat(self.video_feats).float().contiguous()}
        if self.audio:
            tensors["audio"] = torch.cat(self.audio_feats).float().contiguous()
        tmp = self.folder / f".{name}.tmp"
        save_file(tensors, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / name)  # the shard exists whole, or not at all
        for row in self.rows:
            row["shard"] = name
        self._append(self.rows)  # then its rows: a crash in between leaves an orphan shard, removed on restart
        self.next_number += 1
        self.video_feats, self.audio_feats, self.rows = [], [], []

    def _append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.manifest, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractSummary:
    """What :func:`extract` did: videos extracted now, skipped (already done), failed (with errors)."""

    out_dir: Path
    rank: int
    world_size: int
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    clips: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        rank = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        return (f"{self.out_dir}{rank}: {len(self.extracted)} videos extracted ({self.clips} clips) in "
                f"{self.seconds:.1f} s, {len(self.skipped)} already done, {len(self.empty)} shorter than a clip, "
                f"{len(self.failed)} failed")


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size: the arguments, else torchrun's ``RANK`` / ``WORLD_SIZE``, else (0, 1)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of size {world}; check RANK and WORLD_SIZE")
    return rank, world


def _device(device: str | None) -> torch.device:
    from .profiles import resolve_device

    dev = torch.device(resolve_device(device))
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def _check_config(folder: Path, config: dict[str, Any], overwrite: bool) -> None:
    path = folder / CONFIG_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old == config:
            return
        if not overwrite:
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ExtractError(
                f"{folder} holds features made with other settings ({', '.join(changed)} differ: "
                f"{ {k: old.get(k) for k in changed} } there, { {k: config.get(k) for k in changed} } now); "
                "choose another output folder, delete this one, or pass overwrite=True (--overwrite)")
        clear_features(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(config, indent=1, sort_keys=True) + "\n")


def clear_features(out_dir: str | os.PathLike) -> None:
    """Delete what :func:`extract` wrote in ``out_dir`` (shards, manifests, settings), and nothing else. Used in ``04_clip_features``."""
    folder = Path(out_dir)
    for pattern in ("shard-r*.safetensors", "manifest-r*.jsonl", ".shard-r*.tmp", ".manifest-r*.tmp", CONFIG_FILE):
        for path in folder.glob(pattern):
            path.unlink()


def extract(
    videos: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    extractor: str | Extractor = "tinycook3d",
    *,
    weights: str | os.PathLike | None = None,
    backend: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    audio: bool = False,
    shard_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    retry_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractSummary:
    """Extract clip features of ``videos`` (a folder or a list of files) into ``out_dir``.

    Resumable: videos already in the manifest are skipped, so a crashed or
    killed run started again finishes the rest and gives the same features
    as an uninterrupted run. Unreadable files are recorded (status
    ``"failed"`` with the error) and skipped; ``retry_failed`` tries them
    again. ``audio`` adds per-clip audio features (see :func:`load_features`).
    ``rank``/``world_size`` (default: torchrun's ``RANK``/``WORLD_SIZE``) make
    this process take every ``world_size``-th video. ``workers`` DataLoader
    processes decode (default :func:`default_workers`); ``device`` runs the
    extractor (default: CUDA where present). Read the result with
    :func:`load_features`. CLI: ``vbert-lab extract``. Taught in ``04_clip_features``.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    folder = Path(out_dir)
    items = list_videos(videos)
    rank, world = rank_and_world(rank, world_size)
    model = load_extractor(extractor, weights=weights)
    dev = _device(device)
    config = dict(model.describe(), audio=bool(audio), format=FORMAT_VERSION)
    if folder.exists() and not folder.is_dir():
        raise ExtractError(f"{folder}: is a file; --out must be a folder")
    _check_config(folder, config, overwrite)

    writer = _ShardWriter(folder, rank, shard_rows, audio)
    finished = {r["video"]: r["status"] for r in read_manifest(folder)}
    if retry_failed:
        finished = {v: s for v, s in finished.items() if s != "failed"}
    mine = items[rank::world]
    summary = ExtractSummary(folder, rank, world)
    summary.skipped = [vid for vid, _ in mine if vid in finished]
    todo = [(vid, path) for vid, path in mine if vid not in finished]

    model = model.to(dev).eval()
    _keep_heap_flat()
    n_workers = default_workers(len(todo)) if workers is None else max(0, min(int(workers), len(todo)))
    stream = _ClipStream(list(enumerate(p for _, p in todo)), model.frame_size, min(DECODE_CHUNK, batch_size),
                         model.fps, model.clip_frames, backend, audio)
    pending: dict[int, list[torch.Tensor]] = {}
    batchers: dict[int, _Batcher] = {}

    def embed(clips: torch.Tensor) -> torch.Tensor:
        return model.embed(clips.to(dev, non_blocking=True)).float().cpu()

    bar = tqdm(total=len(todo), desc=f"{model.name} features" + (f" [rank {rank}]" if world > 1 else ""),
               unit="video", disable=None if progress else True)
    try:
        for item in (_loader(stream, n_workers) if todo else ()):
            index = item["video"]
            vid, path = todo[index]
            if item["kind"] == "clips":
                batcher = batchers.setdefault(index, _Batcher(batch_size, pin=dev.type == "cuda"))
                for batch in batcher.add(item["frames"]):
                    pending.setdefault(index, []).append(embed(batch))
                    _trim_heap()  # this batch's activations back to the system before the next
                continue
            rest = batchers.pop(index, _Batcher(batch_size)).rest()
            if rest is not None and item["kind"] == "done":
                pending.setdefault(index, []).append(embed(rest))
            feats = pending.pop(index, [])
            if item["kind"] == "failed":
                writer.fail(vid, str(path), item["error"])
                summary.failed[vid] = item["error"]
            else:
                feats = torch.cat(feats) if feats else torch.zeros(0, model.dim)
                writer.add(vid, str(path), feats, item["times"], item["audio"])
                if item["n_clips"]:
                    summary.extracted.append(vid)
                    summary.clips += item["n_clips"]
                else:
                    summary.empty.append(vid)
            bar.update(1)
        writer.flush()
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


# --------------------------------------------------------------------------- TinyCook: labels, split, training


def _labels_by_video(data_dir: str | os.PathLike):
    from .tinycook import load_labels

    by_video: dict[str, list] = {}
    for seg in load_labels(data_dir):
        by_video.setdefault(seg.video_id, []).append(seg)
    return by_video


def label_clips(data_dir: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The hidden label of each clip row: the TinyCook step (``SegmentLabel``) under the clip's
    midpoint, or ``None`` (intro, pause, outro). Taught in ``04_clip_features``.
    """
    by_video = _labels_by_video(data_dir)
    out = []
    for row in rows:
        mid = 0.5 * (row["start_s"] + row["end_s"])
        out.append(next((s for s in by_video.get(row["video"], []) if s.start <= mid < s.end), None))
    return out


def extractor_split(data_dir: str | os.PathLike, n_videos: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Which TinyCook videos train the offline extractor, and which are left for measuring it.

    ``"extractor"``: ``n_videos`` training videos (default and at most half of
    them, drawn with ``seed``), the only videos whose labels the extractor
    sees; ``"probe"``: the other training videos (for a linear probe, or the
    fine-tuning of notebook 09); ``"heldout"``: every validation and testing
    video, which no stage trains on. Taught in ``04_clip_features``.
    """
    from .tinycook import load_annotations

    database = load_annotations(data_dir)["database"]
    training = sorted(v for v, info in database.items() if info["subset"] == "training")
    heldout = sorted(v for v, info in database.items() if info["subset"] != "training")
    cap = len(training) // 2
    n = cap if n_videos is None else min(int(n_videos), cap)
    order = np.random.default_rng([int(seed), 4]).permutation(len(training))
    chosen = {training[i] for i in order[:n]}
    return {"extractor": sorted(chosen), "probe": [v for v in training if v not in chosen], "heldout": heldout}


def _training_clips(data_dir: Path, video_ids: Sequence[str], config: TinyCook3DConfig, workers: int | None,
                    backend: str | None, progress: bool):
    """Decoded clips (uint8, every ``frame_stride``-th frame) and their verb / noun / scene targets."""
    from tqdm.auto import tqdm

    from .tinycook import video_path

    by_video = _labels_by_video(data_dir)
    scene_of = {seg.video_id: seg.scene for segs in by_video.values() for seg in segs}
    items = [(i, video_path(data_dir, vid)) for i, vid in enumerate(video_ids)]
    stream = _ClipStream(items, config.frame_size, batch_size=64)
    n_workers = default_workers(len(items)) if workers is None else min(int(workers), len(items))
    clips, verbs, nouns, scenes = [], [], [], []
    failed = {}
    bar = tqdm(total=len(items), desc="decoding training clips", unit="video", disable=None if progress else True)
    for item in _loader(stream, n_workers):
        vid = video_ids[item["video"]]
        if item["kind"] == "failed":
            failed[vid] = item["error"]
            bar.update(1)
            continue
        if item["kind"] == "done":
            bar.update(1)
            continue
        clips.append(item["frames"][:, :: config.frame_stride].clone())
        for t0 in item["start_s"]:
            mid = t0 + 0.5 * CLIP_FRAMES / FPS
            seg = next((s for s in by_video.get(vid, []) if s.start <= mid < s.end), None)
            verbs.append(config.verbs.index(seg.verb) if seg else len(config.verbs))
            nouns.append(config.nouns.index(seg.noun) if seg else -100)  # no noun outside a step: ignored
            scenes.append(config.scenes.index(scene_of[vid]))
    bar.close()
    if failed:
        raise ExtractError(f"could not read training videos: {failed}; regenerate the data set (force=True)")
    return torch.cat(clips), torch.tensor(verbs), torch.tensor(nouns), torch.tensor(scenes)


def train_tinycook3d(
    data_dir: str | os.PathLike,
    videos: Sequence[str] | None = None,
    *,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: str | None = "cpu",
    workers: int | None = None,
    config: TinyCook3DConfig | None = None,
    progress: bool = True,
) -> TinyCook3D:
    """Train :class:`TinyCook3D` to tell the verb (or "no step"), noun and scene of clips.

    ``videos``: the TinyCook video ids whose labels it may see (default
    ``extractor_split(data_dir, seed=seed)["extractor"]``, half of the training
    videos). Augmentation: horizontal flips and shifts of up to 4 pixels. AdamW with a one-cycle schedule;
    deterministic on the CPU for a given ``seed``. ``model.meta`` records the
    videos, settings, seconds and the loss and accuracy per epoch. Taught in
    ``04_clip_features``.
    """
    data_dir = Path(data_dir)
    t0 = time.perf_counter()
    video_ids = list(videos) if videos is not None else extractor_split(data_dir, seed=seed)["extractor"]
    if not video_ids:
        raise ExtractError(f"{data_dir}: no videos to train the extractor on (the set needs >= 2 training videos)")
    config = config or TinyCook3DConfig()
    clips, verbs, nouns, scenes = _training_clips(data_dir, video_ids, config, workers, None, progress)
    decode_s = time.perf_counter() - t0
    dev = _device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):  # seeded (dropout too), caller's RNG untouched
        torch.manual_seed(seed)
        model, history = _fit(model=TinyCook3D(config).to(dev), clips=clips, targets=(verbs, nouns, scenes), dev=dev,
                              epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                              progress=progress)
    model.eval().cpu()
    model.meta = {"videos": video_ids, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "clips": len(clips), "decode_s": round(decode_s, 2), "train_s": round(time.perf_counter() - t0, 2),
                  "history": history}
    return model


def _fit(model: TinyCook3D, clips: torch.Tensor, targets: tuple[torch.Tensor, ...], dev: torch.device, epochs: int,
         batch_size: int, lr: float, weight_decay: float, seed: int, progress: bool):
    from tqdm.auto import tqdm

    verbs, nouns, scenes = targets
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(clips) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    history = []
    model.train()
    bar = tqdm(range(epochs), desc="training tinycook3d", unit="epoch", disable=None if progress else True)
    for epoch in bar:
        order = torch.randperm(len(clips), generator=gen)
        flips = torch.rand(len(clips), generator=gen) < 0.5
        shifts = torch.randint(-4, 5, (len(clips), 2), generator=gen)  # pixels, (dy, dx)
        total, correct, seen = 0.0, 0, 0
        for lo in range(0, len(clips), batch_size):
            idx = order[lo:lo + batch_size]
            x = clips[idx]
            x = torch.where(flips[idx].view(-1, 1, 1, 1, 1), x.flip(3), x)  # (B, T, H, W, C), W flipped
            x = _shift(x, shifts[idx]).to(dev)
            logits = model.logits(model(_prepare_train(model, x)))  # (B, classes) per head
            targets = {"verb": verbs[idx].to(dev), "noun": nouns[idx].to(dev), "scene": scenes[idx].to(dev)}
            loss = sum(loss_fn(logits[k], targets[k]) for k in logits if (targets[k] != -100).any())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits["verb"].argmax(1) == targets["verb"]).sum())
            seen += len(idx)
        history.append({"epoch": epoch + 1, "loss": total / seen, "verb_acc": correct / seen})
        bar.set_postfix(loss=f"{total / seen:.3f}", verb_acc=f"{correct / seen:.2f}")
    return model, history


def _shift(clips: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each clip ``(B, T, H, W, C)`` by ``shifts[b] = (dy, dx)`` pixels, repeating the border."""
    out = torch.empty_like(clips)
    h, w = clips.shape[2], clips.shape[3]
    for b, (dy, dx) in enumerate(shifts.tolist()):
        rows = (torch.arange(h) - dy).clamp(0, h - 1)
        cols = (torch.arange(w) - dx).clamp(0, w - 1)
        out[b] = clips[b][:, rows][:, :, cols]
    return out


def _prepare_train(model: TinyCook3D, clips: torch.Tensor) -> torch.Tensor:
    """Training clips are stored with the frame stride already applied."""
    return _normalise(clips, model.mean, model.std)


# --------------------------------------------------------------------------- the notebooks' helpers


def ensure_extractor(run, force: bool = False, progress: bool = True) -> Extractor:
    """The offline extractor of this run (profile, seed): loaded from
    ``<DATA_DIR>/derived/extractor/tinycook3d.safetensors``, trained and saved
    there first where absent or made with other settings. For a prepared real
    corpus (:mod:`vbert_lab.corpus`), the extractor its ``corpus.json`` names,
    with its weights (never trained: a real corpus has no hidden labels).
    Taught in ``04_clip_features``.
    """
    data_dir = run.tinycook()
    corpus = getattr(run, "corpus", None)
    if corpus is not None:
        return load_extractor(corpus["extractor"], weights=corpus["weights"])
    path = run.stage_dir("extractor") / "tinycook3d.safetensors"
    epochs = int(getattr(run.profile, "extractor_epochs", 8))
    split = extractor_split(data_dir, getattr(run.profile, "extractor_videos", None), seed=run.seed)
    if path.is_file() and not force:
        model = load_tinycook3d(path)
        # the whole network's config, not only its pooling: a file of other channels or frame size is another
        # extractor, whose features the codebook and tokens downstream must not mix with today's
        if model.meta.get("videos") == split["extractor"] and model.meta.get("epochs") == epochs \
                and model.meta.get("seed") == run.seed and model.config == TinyCook3DConfig():
            return model
    model = train_tinycook3d(data_dir, split["extractor"], epochs=epochs, seed=run.seed, device=run.device,
                             progress=progress)
    save_extractor(model, path)
    return model


def ensure_features(run, audio: bool = True, force: bool = False, progress: bool = True):
    """This run's clip features ``(tensor (N, 256), rows)`` from ``<DATA_DIR>/derived/features``,
    extracted first (resuming whatever is there) with :func:`ensure_extractor`'s model.
    Every notebook from 05 on calls this, so each runs on its own in a fresh kernel.
    Taught in ``04_clip_features``.
    """
    model = ensure_extractor(run, progress=progress)
    folder = run.stage_dir("features")
    if force:
        clear_features(folder)
    # overwrite=True: this folder is a cache of the extractor above; retrained weights replace stale features
    extract(run.tinycook() / "videos", folder, model, device=run.device, audio=audio, overwrite=True, progress=progress)
    return load_features(folder)


__all__ = [
    "FPS", "CLIP_FRAMES", "EXTRACTORS", "Extractor", "S3DExtractor", "TinyCook3D", "TinyCook3DConfig",
    "WeightsNotFound", "ExtractError", "ExtractSummary", "s3d_weights_file", "load_s3d_state", "load_extractor",
    "load_tinycook3d", "save_extractor", "train_tinycook3d", "extractor_split", "label_clips", "list_videos",
    "extract", "read_manifest", "load_features", "load_failures", "clear_features", "rank_and_world",
    "default_workers", "ensure_extractor", "ensure_features",
]
