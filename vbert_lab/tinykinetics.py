"""TinyKinetics: the offline extractor's own action set, the course's stand-in for Kinetics.

Taught in ``04_clip_features``. The paper's clip features come from S3D,
trained to classify the 400 human actions of Kinetics: a data set with other
videos and other classes than the cooking videos VideoBERT is then trained and
measured on. TinyKinetics plays that part for the course's offline extractor
(:class:`vbert_lab.features.TinyCook3D`): short clips of generic shapes on
generic backgrounds, each labelled with what the main shape does and what it
looks like. Its classes are none of TinyCook's verbs, ingredients, scenes or
moods, it never reads a file of any video world, and it is a function of
``(clips, seed, frame_size)`` alone.

Data card
=========

A **clip** is 15 frames at 10 fps (1.5 s, as the extractor sees a 30-frame
clip at 20 fps: every other frame), ``frame_size`` x ``frame_size`` RGB uint8,
rendered at twice the size and averaged down (as a decoder's resize smooths).
On a random background (flat, gradient, bands, checks or blobs; random colours)
lie 0-2 smaller still shapes (distractors) and one main shape, which does one
thing:

- ``MOTIONS`` (16): still, drift (a straight line), orbit (a circle), sway (a
  fast shake along a random axis), hop (bounces), spin (turns about its
  centre), pulse (swells and shrinks), squash (flattens and widens), shatter
  (breaks into 2-6 sectors or strips that move apart), shrink, grow, tint (its
  colour turns into another), sweep (a band of another colour crosses it),
  drizzle (dots fall across the frame), fizz (dots rise from it), blink (its
  brightness flashes). Speed, direction, amplitude and the number of pieces
  are drawn per clip.
- ``SHAPES`` (10), ``TEXTURES`` (6) and ``HUES`` (8 bins of the hue circle,
  named by colour) of the main shape; its saturation, brightness, size and
  place are drawn per clip.

Labels (``labels``): one class index per task per clip, motions balanced
(clip ``i`` does motion ``i mod 16``), the rest drawn uniformly. Each clip draws
from its own generator seeded by ``(seed, i)``.

What it teaches an extractor: motion (direction, rotation, scale change,
fragmentation, particles, colour change, flicker), shape, surface texture and
colour, among clutter. What it cannot: anything about cooking, sound or words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VERSION = 1  # bump when the clips change, so that extractors trained on the old ones are retrained

MOTIONS = ("still", "drift", "orbit", "sway", "hop", "spin", "pulse", "squash", "shatter", "shrink", "grow",
           "tint", "sweep", "drizzle", "fizz", "blink")
SHAPES = ("disc", "box", "wedge", "diamond", "star", "cross", "annulus", "hexagon", "half_disc", "capsule")
TEXTURES = ("flat", "bands", "spots", "checks", "grain", "shade")
HUES = ("red", "amber", "yellow", "lime", "teal", "azure", "violet", "magenta")
TASKS: dict[str, tuple[str, ...]] = {"motion": MOTIONS, "shape": SHAPES, "texture": TEXTURES, "hue": HUES}

FRAMES = 15  # per clip
FPS = 10.0


@dataclass
class Clips:
    """Rendered clips and their labels."""

    frames: np.ndarray  # (N, FRAMES, S, S, 3) uint8
    labels: dict[str, np.ndarray]  # task -> (N,) int64 class index into TASKS[task]
    seed: int

    def __len__(self) -> int:
        return len(self.frames)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside of ``shape`` in its own coordinates (about [-1, 1]^2)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return u * u + v * v < 0.9**2
    if shape == "box":
        return (au < 0.75) & (av < 0.75)
    if shape == "wedge":
        return (v < 0.8) & (v > -0.8) & (au < (0.8 - v) * 0.6)
    if shape == "diamond":
        return au + av < 0.95
    if shape == "star":
        r, a = np.sqrt(u * u + v * v), np.arctan2(v, u)
        return r < 0.55 + 0.35 * np.cos(5 * a)
    if shape == "cross":
        return ((au < 0.28) & (av < 0.9)) | ((av < 0.28) & (au < 0.9))
    if shape == "annulus":
        r2 = u * u + v * v
        return (r2 < 0.9**2) & (r2 > 0.45**2)
    if shape == "hexagon":
        return (av < 0.78) & (au * 0.866 + av * 0.5 < 0.78)
    if shape == "half_disc":
        return (u * u + v * v < 0.9**2) & (v > -0.15)
    if shape == "capsule":
        return (au < 0.45) & (av < 0.5) | (u * u + (av - 0.5) ** 2 < 0.45**2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray, params: np.ndarray) -> np.ndarray:
    """A brightness factor per pixel, fixed to the shape (it moves and turns with it)."""
    freq, angle = params[0], params[1]
    w = u * np.cos(angle) + v * np.sin(angle)
    if texture == "flat":
        return np.ones_like(u)
    if texture == "bands":
        return np.where(np.sin(w * freq) > 0, 0.65, 1.0)
    if texture == "spots":
        return np.where(np.sin(u * freq) * np.sin(v * freq) > 0.5, 0.55, 1.0)
    if texture == "checks":
        return np.where((np.floor((u + 2) * freq / 3) + np.floor((v + 2) * freq / 3)) % 2 == 0, 0.7, 1.05)
    if texture == "grain":
        return 0.75 + 0.5 * (np.sin(u * 37.0 + v * 11.0) * np.sin(v * 41.0 - u * 7.0)) ** 2
    if texture == "shade":
        return 0.55 + 0.45 * (w + 1) / 2
    raise ValueError(f"unknown texture {texture!r}")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return 255.0 * v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


def _colour(rng: np.random.Generator, hue_bin: int) -> np.ndarray:
    h = (hue_bin + rng.uniform(0.1, 0.9)) / len(HUES)
    return _hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))


def _background(rng: np.random.Generator, n: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    a, b = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.3, 0.95)), \
        _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.3, 0.95))
    kind = rng.integers(5)
    yy, xx = y / n, x / n
    if kind == 0:  # flat
        mix = np.zeros_like(yy)
    elif kind == 1:  # gradient
        ang = rng.uniform(0, 2 * np.pi)
        mix = (np.cos(ang) * xx + np.sin(ang) * yy) % 1.0
    elif kind == 2:  # bands
        ang, f = rng.uniform(0, np.pi), rng.uniform(3, 10)
        mix = (np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * f * 2 * np.pi) > 0).astype(np.float32)
    elif kind == 3:  # checks
        f = rng.integers(3, 9)
        mix = ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(np.float32)
    else:  # soft blobs
        mix = np.zeros_like(yy)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            mix = np.maximum(mix, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    return (a * (1 - mix[..., None]) + b * mix[..., None]).astype(np.float32)


class _Thing:
    """A shape with a texture and a colour, drawn at a pose."""

    def __init__(self, rng: np.random.Generator, shape: int, texture: int, hue: int, radius: float):
        self.shape, self.texture = SHAPES[shape], TEXTURES[texture]
        self.colour = _colour(rng, hue)
        self.params = np.array([rng.uniform(6, 14), rng.uniform(0, np.pi)])
        self.radius = radius

    def local(self, y, x, cy, cx, sy, sx, angle):
        dy, dx = y - cy, x - cx
        c, s = np.cos(angle), np.sin(angle)
        u = (c * dx + s * dy) / (self.radius * sx)
        v = (-s * dx + c * dy) / (self.radius * sy)
        return u, v

    def draw(self, frame, y, x, cy, cx, sy=1.0, sx=1.0, angle=0.0, colour=None, gain=1.0, keep=None, sweep=None):
        """Paint into ``frame`` (float RGB); ``keep(u, v)`` limits the drawn part (a piece); ``sweep``:
        (position along u in [-1, 1], other colour) paints the part with u < position in the other colour."""
        u, v = self.local(y, x, cy, cx, max(sy, 1e-3), max(sx, 1e-3), angle)
        mask = _shape_mask(self.shape, u, v)
        if keep is not None:
            mask &= keep(u, v)
        if not mask.any():
            return
        shade = _texture(self.texture, u[mask], v[mask], self.params)[:, None]
        rgb = np.broadcast_to(self.colour if colour is None else colour, (int(mask.sum()), 3))
        if sweep is not None:
            pos, other = sweep
            rgb = np.where((u[mask] < pos)[:, None], other, rgb)
        frame[mask] = rgb * shade * gain


def _render_clip(i: int, seed: int, size: int) -> tuple[np.ndarray, dict[str, int]]:
    rng = np.random.default_rng([int(seed), 11, int(i)])
    n = 2 * size  # rendered at twice the size, then averaged down
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    labels = {"motion": i % len(MOTIONS), "shape": int(rng.integers(len(SHAPES))),
              "texture": int(rng.integers(len(TEXTURES))), "hue": int(rng.integers(len(HUES)))}
    motion = MOTIONS[labels["motion"]]
    background = _background(rng, n, y, x)
    for _ in range(rng.integers(0, 3)):  # still distractors, smaller than the main shape
        thing = _Thing(rng, rng.integers(len(SHAPES)), rng.integers(len(TEXTURES)), rng.integers(len(HUES)),
                       rng.uniform(0.06, 0.12) * n)
        thing.draw(background, y, x, rng.uniform(0.1, 0.9) * n, rng.uniform(0.1, 0.9) * n,
                   angle=rng.uniform(0, 2 * np.pi))
    main = _Thing(rng, labels["shape"], labels["texture"], labels["hue"], rng.uniform(0.17, 0.27) * n)
    cy0, cx0 = rng.uniform(0.35, 0.65, 2) * n
    angle0 = rng.uniform(0, 2 * np.pi) if rng.random() < 0.5 else 0.0
    direction = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.5, 1.5)  # a per-clip tempo
    p0 = rng.uniform(0, 0.5)
    p1 = p0 + rng.uniform(0.35, 0.5)
    other_hue = (labels["hue"] + rng.integers(2, len(HUES) - 1)) % len(HUES)
    other = _colour(rng, int(other_hue))
    pieces = int(rng.integers(2, 7))
    sectors = rng.random() < 0.5
    piece_angle = rng.uniform(0, 2 * np.pi)
    n_dots = 16
    dots_x, dots_phase = rng.uniform(0, 1, n_dots), rng.uniform(0, 1, n_dots)
    dot_colour = _hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.5), 1.0)
    dot = max(2, n // 40)
    noise = rng.normal(0, 3.0, (FRAMES, size, size, 3)).astype(np.float32)
    gain = rng.uniform(0.85, 1.1)

    out = np.empty((FRAMES, size, size, 3), np.uint8)
    for f in range(FRAMES):
        t = f / FPS
        prog = p0 + (p1 - p0) * f / (FRAMES - 1)  # how far through the change, for the changes that progress
        frame = background.copy()
        cy, cx, sy, sx, angle, colour, bright, sweep = cy0, cx0, 1.0, 1.0, angle0, None, 1.0, None
        if motion == "drift":
            cy, cx = cy0 + np.sin(direction) * 0.2 * n * speed * t, cx0 + np.cos(direction) * 0.2 * n * speed * t
        elif motion == "orbit":
            a = direction + 2 * np.pi * 0.7 * speed * t
            cy, cx = cy0 + 0.12 * n * np.sin(a), cx0 + 0.12 * n * np.cos(a)
        elif motion == "sway":
            off = np.sin(2 * np.pi * 3.5 * speed * t) * 0.06 * n
            cy, cx = cy0 + np.sin(direction) * off, cx0 + np.cos(direction) * off
        elif motion == "hop":
            cy = cy0 + 0.08 * n - abs(np.sin(np.pi * 1.4 * speed * t)) * 0.18 * n
        elif motion == "spin":
            angle = angle0 + (1 if direction < np.pi else -1) * 2 * np.pi * 0.6 * speed * t
        elif motion == "pulse":
            sy = sx = 1 + 0.3 * np.sin(2 * np.pi * 1.3 * speed * t)
        elif motion == "squash":
            sy, sx = 1 - 0.55 * prog, 1 + 0.45 * prog
            cy = cy0 + main.radius * 0.55 * prog
        elif motion == "shrink":
            sy = sx = 1.1 - 0.7 * prog
        elif motion == "grow":
            sy = sx = 0.45 + 0.7 * prog
        elif motion == "tint":
            colour = main.colour * (1 - prog) + other * prog
        elif motion == "sweep":
            sweep = (-1 + 2 * prog, other)
        elif motion == "blink":
            bright = 0.45 if (speed * 3.0 * t + direction) % 1.0 < 0.5 else 1.0
        if motion == "shatter":
            gap = prog * 0.6 * main.radius
            for k in range(pieces):
                if sectors:
                    mid = piece_angle + (k + 0.5) * 2 * np.pi / pieces
                    lo = k * 2 * np.pi / pieces

                    def keep(u, v, lo=lo):
                        return ((np.arctan2(v, u) - piece_angle - lo) % (2 * np.pi)) < 2 * np.pi / pieces
                    dy, dx = np.sin(mid) * gap, np.cos(mid) * gap
                else:
                    edges = np.linspace(-1, 1, pieces + 1)

                    def keep(u, v, k=k, edges=edges):
                        return (u >= edges[k]) & (u < edges[k + 1])
                    along = (k - (pieces - 1) / 2) * gap * 0.6
                    dy, dx = np.sin(angle0) * along, np.cos(angle0) * along
                main.draw(frame, y, x, cy + dy, cx + dx, angle=angle, keep=keep)
        else:
            main.draw(frame, y, x, cy, cx, sy, sx, angle, colour=colour, gain=bright, sweep=sweep)
        if motion in ("drizzle", "fizz"):
            if motion == "drizzle":  # across the whole frame, falling
                ys = ((dots_phase + speed * 0.9 * t) % 1.0) * n
                xs = dots_x * n
            else:  # from the shape, rising
                ys = cy0 + main.radius - ((dots_phase + speed * 0.8 * t) % 1.0) * 0.45 * n
                xs = cx0 + (dots_x - 0.5) * 2 * main.radius
            for yy, xx in zip(ys.astype(int), xs.astype(int)):
                frame[max(yy, 0):max(yy + dot, 0), max(xx, 0):max(xx + dot, 0)] = dot_colour
        small = frame.reshape(size, 2, size, 2, 3).mean(axis=(1, 3)) * gain + noise[f]
        out[f] = np.clip(small, 0, 255).astype(np.uint8)
    return out, labels


def _render_range(args: tuple[int, int, int, int]) -> tuple[np.ndarray, list[dict[str, int]]]:
    lo, hi, seed, size = args
    frames, labels = zip(*(_render_clip(i, seed, size) for i in range(lo, hi)))
    return np.stack(frames), list(labels)


def make_clips(clips: int, seed: int = 0, frame_size: int = 64, workers: int | None = None) -> Clips:
    """``clips`` TinyKinetics clips at ``frame_size`` pixels, deterministic from ``seed`` (the same whatever
    ``workers``: each clip draws from its own generator). Taught in ``04_clip_features``."""
    clips, frame_size = int(clips), int(frame_size)
    if clips < 1:
        raise ValueError(f"clips={clips}: ask for at least one clip")
    if frame_size < 8:
        raise ValueError(f"frame_size={frame_size}: use at least 8 pixels")
    import os

    workers = min(os.cpu_count() or 1, 4) if workers is None else int(workers)
    chunk = 64
    jobs = [(lo, min(lo + chunk, clips), int(seed), frame_size) for lo in range(0, clips, chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork starts at once (and needs no ``if __name__ == "__main__"`` in a user's script); the workers touch
        # only numpy, never torch
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context(method)) as pool:
            parts = list(pool.map(_render_range, jobs))
    else:
        parts = [_render_range(job) for job in jobs]
    frames = np.concatenate([p[0] for p in parts])
    rows = [row for p in parts for row in p[1]]
    labels = {task: np.array([row[task] for row in rows], dtype=np.int64) for task in TASKS}
    return Clips(frames=frames, labels=labels, seed=int(seed))


__all__ = ["VERSION", "MOTIONS", "SHAPES", "TEXTURES", "HUES", "TASKS", "FRAMES", "FPS", "Clips", "make_clips"]
