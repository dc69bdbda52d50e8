"""Course profiles: how big each run is.

``smoke`` is for CI (every notebook in well under two minutes on a 2-core
CPU), ``cpu`` gives results that mean something on a laptop, ``gpu`` is larger
(Colab or a workstation). Taught in ``00_welcome_and_setup``.

Later lessons read their sizes from here, so that one name (``PROFILE``)
controls a whole run. Add a field here rather than an ``if PROFILE == ...`` in
a notebook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PROFILE_NAMES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    name: str
    tinycook_videos: int  # videos in the generated TinyCook world
    frame_size: int  # TinyCook frames are frame_size x frame_size pixels
    # the offline clip extractor (04_clip_features): epochs, and how many training videos' labels it sees. The cpu
    # profile trains 32 epochs: held-out probe noun 0.51 and verb 0.58 against 0.43 and 0.56 at 16, for 63 s against
    # 35 s on 2 cores (bench/studies/extractor_sweep.py, rows in extractor_sweep_cpu.json)
    extractor_epochs: int = 8
    extractor_videos: int = 48  # at most half of the training videos (features.extractor_split)
    # the visual and audio vocabularies (05_visual_and_audio_tokens): hierarchical k-means, k**depth words each;
    # far fewer words than training clips (the paper's 12**4 = 20,736 words had millions of clips)
    kmeans_k: int = 12
    kmeans_depth: int = 2
    audio_kmeans_k: int = 8
    audio_kmeans_depth: int = 2
    # VideoBERT pretraining (07_videobert_pretraining): MiniLM cut to its first pretrain_layers layers,
    # optimizer steps, examples per step, longest sequence, peak learning rate
    pretrain_layers: int = 6
    pretrain_steps: int = 1000
    pretrain_batch: int = 32
    pretrain_max_len: int = 64
    pretrain_lr: float = 5e-4
    # compression and speed measurements (10_efficiency_and_scale): examples in the timed batch, timed repeats
    latency_batch: int = 32
    latency_repeats: int = 15
    # fine-tuning (09_fine_tuning): a scratch or fine-tuned run trains finetune_epochs passes over its labels, within
    # [finetune_min_steps, finetune_steps] optimizer steps of finetune_batch examples; a linear probe finetune_probe_steps;
    # peak learning rates (pretrained, from scratch, the probe); top layers drawn afresh before fine-tuning; the
    # notebook's seeds and the action task's label fractions (scene and mood: 10 and 100 %). The cpu profile trains
    # every run at least 80 steps: with 40 at 10 % of the action labels the pretrained model was undertrained (with the earlier,
    # spatially averaging extractor; test accuracy 0.40 at 40 steps against 0.46 at 80, seed 0; 0.31 against 0.36,
    # seed 1), scratch much less so (0.41 / 0.42, 0.39 / 0.39); means of 3 fine-tuning seeds, 2026-11-27
    # (bench/studies/finetune_steps.py, rows in finetune_steps_cpu.json)
    finetune_steps: int = 200
    finetune_min_steps: int = 60
    finetune_epochs: int = 10
    finetune_batch: int = 32
    finetune_probe_steps: int = 300
    finetune_lr: float = 3e-4
    finetune_scratch_lr: float = 5e-4
    finetune_probe_lr: float = 1e-2
    finetune_reinit_layers: int = 0
    finetune_pooling: str = "mean"  # what the classifier reads: "cls" or "mean" (VideoBertConfig.pooling)
    finetune_seeds: int = 3
    finetune_fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0)

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(name="smoke", tinycook_videos=24, frame_size=64, extractor_epochs=3, extractor_videos=8,
                     kmeans_k=6, kmeans_depth=2, audio_kmeans_k=4, audio_kmeans_depth=2,
                     pretrain_layers=2, pretrain_steps=20, pretrain_batch=8, pretrain_max_len=48,
                     latency_batch=8, latency_repeats=5,
                     finetune_steps=8, finetune_min_steps=4, finetune_epochs=2, finetune_batch=8, finetune_probe_steps=20,
                     finetune_seeds=1, finetune_fractions=(0.1, 1.0)),
    "cpu": Profile(name="cpu", tinycook_videos=160, frame_size=128, extractor_epochs=32, extractor_videos=48,
                   kmeans_k=12, kmeans_depth=2, audio_kmeans_k=8, audio_kmeans_depth=2,
                   # 400 pretraining steps: the zero-shot noun grows with steps (300: 0.19 / 0.14, 400: 0.27 / 0.24 on
                   # seeds 0 / 1; bench/studies/pretrain_sweep_cpu_r6.json), and notebooks 07 + 08 stay inside 20 minutes
                   pretrain_layers=3, pretrain_steps=400, pretrain_batch=32, pretrain_max_len=64,
                   # fine-tuning: at least 80 steps (10 % of the action labels: 28 by the epochs), at most 300 (all the
                   # labels: 10 epochs, 282 steps; capped at 80 they were undertrained, the pretrained model most:
                   # action fine-tuned / scratch 0.49 / 0.61 at 80 steps, 0.71 / 0.71 at 240, seed 0; 0.57 / 0.61 and
                   # 0.77 / 0.76 at 280, seed 1; bench/studies/finetune_steps_cpu.json)
                   finetune_steps=300, finetune_min_steps=80, finetune_epochs=10, finetune_batch=16, finetune_probe_steps=200),
    "gpu": Profile(name="gpu", tinycook_videos=800, frame_size=128, extractor_epochs=12, extractor_videos=200,
                   kmeans_k=16, kmeans_depth=2, audio_kmeans_k=8, audio_kmeans_depth=2),
}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the environment check reports this; profiles still resolve
        return False
    return bool(torch.cuda.is_available())


def default_profile_name() -> str:
    """``gpu`` where CUDA is present, else ``cpu``."""
    return "gpu" if cuda_available() else "cpu"


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name`` (``None`` or ``""``: the machine's default)."""
    name = (name or "").strip().lower() or default_profile_name()
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r}: choose one of {', '.join(PROFILE_NAMES)} "
            "(for example PROFILE=smoke for a quick run)"
        )
    return PROFILES[name]


def resolve_device(device: str | None = None) -> str:
    """``""``/``None`` means CUDA where present, else the CPU; anything else must work here."""
    device = (device or "").strip()
    if not device:
        return "cuda" if cuda_available() else "cpu"
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"DEVICE={device!r} is not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={device!r} asks for CUDA but torch sees no GPU here; leave DEVICE empty or use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"DEVICE={device!r} asks for Apple MPS, which is not available here; use cpu")
    return str(dev)
