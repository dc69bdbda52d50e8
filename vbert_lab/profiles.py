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

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(name="smoke", tinycook_videos=24, frame_size=64),
    "cpu": Profile(name="cpu", tinycook_videos=160, frame_size=128),
    "gpu": Profile(name="gpu", tinycook_videos=800, frame_size=128),
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
