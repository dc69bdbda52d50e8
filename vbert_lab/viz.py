"""Figures and browsers shared by the notebooks.

Widgets degrade to a static figure when no front end is there (papermill,
nbval, ``make course``): :func:`headless` is true when ``$VBERT_LAB_HEADLESS``
is set, which the course runner and ``make test`` do. First used in
``00_welcome_and_setup``.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

HEADLESS_ENV = "VBERT_LAB_HEADLESS"


def headless() -> bool:
    """True when nobody can interact with a widget (headless runs set ``$VBERT_LAB_HEADLESS``)."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def show_frames(frames: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8, height: float = 1.6):
    """A strip (or grid) of uint8 ``(T, H, W, C)`` frames; returns the figure."""
    import matplotlib.pyplot as plt

    n = len(frames)
    if n == 0:
        raise ValueError("show_frames: no frames to show")
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(height * ncols, height * nrows + (0.3 if titles else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(frames[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def show_waveform(wave: np.ndarray, sample_rate: int, segments: Sequence[tuple[float, float, str]] = (), ax=None, title: str = ""):
    """A mono waveform with labelled time segments shaded behind it; returns the axes."""
    import matplotlib.pyplot as plt

    wave = np.asarray(wave)
    wave = wave.mean(axis=0) if wave.ndim == 2 else wave
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 2.4))
    t = np.arange(len(wave)) / sample_rate
    colours = plt.get_cmap("tab10")
    for i, (start, end, label) in enumerate(segments):
        ax.axvspan(start, end, color=colours(i % 10), alpha=0.15)
        ax.text((start + end) / 2, 0.98, label, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7, clip_on=True)
    ax.plot(t, wave, lw=0.4, color="k")
    ax.set_xlim(0, t[-1] if len(t) else 1)
    ax.set_xlabel("seconds")
    ax.set_ylabel("amplitude")
    if title:
        ax.set_title(title)
    return ax


def browse(options: Sequence, render: Callable[[object], None], description: str = "item", static_first: int = 1):
    """An interactive dropdown over ``options`` calling ``render(option)``.

    Headless, it renders the first ``static_first`` options as static figures
    instead, so the cell still executes and shows something.
    """
    if headless() or not options:
        for option in list(options)[:static_first]:
            render(option)
        return None
    import ipywidgets as widgets
    from IPython.display import display

    panel = widgets.interactive(lambda option: render(option), option=widgets.Dropdown(options=list(options), description=description))
    display(panel)
    return panel
