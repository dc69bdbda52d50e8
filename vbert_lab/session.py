"""One line at the top of every notebook: ``run = vbert_lab.setup(PROFILE, DEVICE, DATA_DIR, SEED)``.

It resolves the profile and device, seeds every random generator, and knows
where the TinyCook data and the derived artifacts (features, codebooks,
checkpoints) of this profile and seed live, so that each notebook runs on its
own in a fresh kernel and reuses what an earlier one built. Taught in
``00_welcome_and_setup``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .profiles import Profile, get_profile, resolve_device

DATA_ENV = "VBERT_LAB_DATA"


def default_data_root(cwd: Path | None = None) -> Path:
    """``$VBERT_LAB_DATA``, else ``data/`` in the course folder (beside ``notebooks/``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cwd = Path.cwd() if cwd is None else cwd
    return (cwd.parent if cwd.name == "notebooks" else cwd) / "data"


def default_data_dir(profile: str, seed: int) -> Path:
    return default_data_root() / f"tinycook-{profile}-s{seed}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with one number."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


@dataclass
class Session:
    profile: Profile
    device: str
    seed: int
    data_dir: Path
    _data_ready: bool = field(default=False, repr=False)

    @property
    def derived_dir(self) -> Path:
        """Where stages write what they derive from the data (features, tokens, checkpoints)."""
        return self.data_dir / "derived"

    def stage_dir(self, name: str) -> Path:
        path = self.derived_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def corpus(self) -> dict | None:
        """The folder's prepared-corpus description (:mod:`vbert_lab.corpus`), or ``None`` for TinyCook."""
        from .corpus import read_corpus

        return read_corpus(self.data_dir)

    def tinycook(self, workers: int | None = None) -> Path:
        """The TinyCook world of this profile and seed, generated on first use.

        A prepared corpus (a folder with ``corpus.json``, see :mod:`vbert_lab.corpus`)
        is checked and used as it is: nothing is generated.
        """
        if not self._data_ready:
            from .tinycook import ensure_dataset

            if self.corpus is not None:
                self._data_ready = True
                return self.data_dir
            ensure_dataset(
                self.data_dir,
                videos=self.profile.tinycook_videos,
                seed=self.seed,
                size=self.profile.frame_size,
                workers=workers,
            )
            self._data_ready = True
        return self.data_dir

    def __str__(self) -> str:
        return (
            f"profile={self.profile.name} device={self.device} seed={self.seed} "
            f"data_dir={self.data_dir}"
        )


def setup(profile: str = "", device: str = "", data_dir: str | os.PathLike = "", seed: int = 0) -> Session:
    """Resolve a notebook's ``parameters`` cell into a :class:`Session`.

    ``profile=""`` is ``gpu`` where CUDA is present, else ``cpu``; ``device=""`` is
    CUDA where present, else the CPU; ``data_dir=""`` is
    ``data/tinycook-<profile>-s<seed>`` beside the notebooks (or under
    ``$VBERT_LAB_DATA``). Every random generator is seeded with ``seed``.
    """
    prof = get_profile(profile)
    dev = resolve_device(device)
    seed = int(seed)
    path = Path(data_dir).expanduser() if str(data_dir) else default_data_dir(prof.name, seed)
    seed_everything(seed)
    return Session(profile=prof, device=dev, seed=seed, data_dir=path.resolve())
