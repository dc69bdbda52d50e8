"""TinyCook: a small synthetic world of cooking videos with sound and narration.

Taught in ``00_welcome_and_setup`` (generate it, watch one video, hear it, read
its narration). Later notebooks learn from it and measure what they learned
against the hidden labels.

World card
==========

A **video** is one recipe: an intro, 3-5 **steps** separated by short pauses,
an outro; 12-40 s, 30 fps, ``size`` x ``size`` pixels (128 by default), H.264
with a mono AAC sound track at 16 kHz. A step is a **verb** applied to an
**ingredient** (the noun), filmed in the video's **scene**, narrated in the
narrator's **mood**. Every step has the hidden labels ``verb``, ``noun``,
``scene``, ``mood`` (``labels.json``); a model never needs to see them.

Vocabulary (every verb and ingredient is one token of BERT's uncased WordPiece
vocabulary, so the zero-shot template can rank them):

- ``VERBS`` (15): cut chop dice slice stir mix pour wash fry grill boil roll
  peel shake flip
- ``INGREDIENTS`` (24): tomato onion carrot egg potato apple lemon cheese
  bread rice fish chicken pepper garlic mushroom banana corn butter beef orange
  pasta bacon cabbage shrimp
- ``SCENES`` (4): kitchen garden restaurant beach
- ``MOODS`` (4): happy sad angry calm
- ``RECIPE_TYPES`` (7): each prefers some verbs and ingredients (70 % of
  draws), so the narration carries a real language prior.

How each label shows in each modality:

============  ===============================================  ============================================  =========================================
label         frames                                           sound                                         narration words
============  ===============================================  ============================================  =========================================
ingredient    shape x colour x texture (``INGREDIENT_LOOKS``)  --                                            named in most step sentences
verb          motion or change: cut splits in two, chop and    its own sound (``VERB_SOUNDS``): knocks,      named in most step sentences
              dice split in a 3x3 grid, slice in 5 strips,     clicks, swishes, scraping, a mixer's buzz,
              stir and mix circle in a bowl, pour falls,       water, sizzle, bubbles, rumble, squeaks,
              wash rains drops, fry browns and jitters in a    rattle, clangs
              pan, grill gets dark stripes on a grate, boil
              bobs among bubbles, roll flattens, peel turns
              pale from the top, shake wobbles, flip turns
scene         background (tiles, grass, wood, sand and sky)    ambience (hum, birds, chatter, waves)         sometimes, in a greeting ("here in the garden")
mood          --                                               the narrator's voice: pitch, tempo, loudness  mood phrases in about 60 % of sentences
                                                               and harshness                                 ("i love this part", "ugh", "sadly"...)
============  ===============================================  ============================================  =========================================

What audio adds is measurable by design: ``LOOK_ALIKE`` verbs (stir/mix,
chop/dice) are drawn from the same visual distribution and differ only by
sound; ``SOUND_ALIKE`` verbs (pour/wash, fry/grill) share one sound generator
and differ only by look.

Narration noise (``captions.json``, HowTo100M layout, lower case, no
punctuation, long sentences cut into ASR-like chunks of a few words):

- ``P_SILENT_STEP`` = 0.15 of steps have no narration;
- ``P_EARLY`` = 0.15 of step sentences start 1-3 s before their step,
  ``P_LATE`` = 0.15 start after it has ended;
- ``P_FILLER`` = 0.35 of sentences carry filler words ("um", "you know"...);
- ``P_OFF_TOPIC`` = 0.35 of pauses hold an off-topic sentence, plus greetings
  in the intro (0.6) and sign-offs in the outro (0.5);
- phrasing varies over ``len(NARRATION_TEMPLATES)`` templates; the zero-shot
  template "now let me show you how to ... the ..." never appears.

``annotations.json`` (YouCook2 layout) holds a clean imperative sentence per
step ("slice the onion into thin slices") and the split: videos, not steps,
are split 70 / 15 / 15 into training / validation / testing, disjointly.

What a model **can** learn: ingredient from frames; most verbs from frames or
sound; the look-alike verbs from sound or words; the sound-alike verbs from
frames or words; mood from the voice or the words; scene from frames or
ambience; verb-noun co-occurrence from recipe types. What it **cannot** learn:
mood from frames alone, look-alike verbs from frames alone, sound-alike verbs
from sound alone, the hidden labels of an unnarrated step from text alone;
anything about real cooking (no hands, no real textures, no camera motion).

Determinism: the whole world is a function of ``(videos, seed, size)``. Each
video draws from its own ``numpy`` generator seeded by ``(seed, index)``, so
the worker count does not matter, and x264 runs with one thread and fixed
settings, so the same arguments give byte-identical files.

Files under ``out_dir``: ``videos/<id>.mp4``, ``annotations.json``,
``captions.json``, ``labels.json`` (hidden), and ``tinycook.json`` (the
generation arguments, written last: its presence means the set is complete).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

VERBS = (
    "cut", "chop", "dice", "slice", "stir", "mix", "pour", "wash",
    "fry", "grill", "boil", "roll", "peel", "shake", "flip",
)
INGREDIENTS = (
    "tomato", "onion", "carrot", "egg", "potato", "apple", "lemon", "cheese",
    "bread", "rice", "fish", "chicken", "pepper", "garlic", "mushroom", "banana",
    "corn", "butter", "beef", "orange", "pasta", "bacon", "cabbage", "shrimp",
)
NOUNS = INGREDIENTS  # the zero-shot template's second [MASK] is a noun
SCENES = ("kitchen", "garden", "restaurant", "beach")
MOODS = ("happy", "sad", "angry", "calm")
LABEL_KINDS = {"verb": VERBS, "noun": INGREDIENTS, "scene": SCENES, "mood": MOODS}

# Verbs that are drawn from one visual distribution and differ only by sound,
# and verbs that share one sound generator and differ only by look.
LOOK_ALIKE = (("stir", "mix"), ("chop", "dice"))
SOUND_ALIKE = (("pour", "wash"), ("fry", "grill"))

# (shape, colour RGB, texture): no two ingredients share all three.
INGREDIENT_LOOKS: dict[str, tuple[str, tuple[int, int, int], str]] = {
    "tomato": ("circle", (220, 40, 30), "plain"),
    "onion": ("circle", (200, 160, 200), "rings"),
    "carrot": ("triangle", (240, 130, 20), "stripes"),
    "egg": ("oval_tall", (245, 240, 225), "plain"),
    "potato": ("oval_wide", (190, 150, 90), "speckle"),
    "apple": ("circle", (120, 200, 60), "dots"),
    "lemon": ("oval_wide", (245, 225, 50), "dots"),
    "cheese": ("triangle", (250, 200, 80), "dots"),
    "bread": ("square", (200, 150, 80), "speckle"),
    "rice": ("circle", (240, 240, 235), "speckle"),
    "fish": ("oval_wide", (140, 170, 200), "stripes"),
    "chicken": ("oval_tall", (235, 190, 160), "plain"),
    "pepper": ("square", (40, 160, 40), "plain"),
    "garlic": ("drop", (235, 230, 210), "stripes"),
    "mushroom": ("dome", (150, 110, 80), "dots"),
    "banana": ("crescent", (240, 220, 60), "plain"),
    "corn": ("oval_tall", (240, 210, 40), "checker"),
    "butter": ("square", (250, 235, 150), "plain"),
    "beef": ("square", (150, 30, 40), "speckle"),
    "orange": ("circle", (250, 150, 30), "dots"),
    "pasta": ("bar", (240, 220, 150), "stripes"),
    "bacon": ("bar", (210, 90, 90), "checker"),
    "cabbage": ("circle", (150, 210, 120), "rings"),
    "shrimp": ("crescent", (245, 150, 120), "stripes"),
}

VERB_SOUNDS = {
    "cut": "knocks", "chop": "thuds", "dice": "clicks", "slice": "swishes",
    "stir": "scraping", "mix": "buzz", "pour": "water", "wash": "water",
    "fry": "sizzle", "grill": "sizzle", "boil": "bubbles", "roll": "rumble",
    "peel": "squeaks", "shake": "rattle", "flip": "clang",
}

RECIPE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "salad": (("wash", "cut", "slice", "chop", "dice", "mix", "shake"),
              ("tomato", "onion", "carrot", "apple", "lemon", "cabbage", "pepper", "cheese", "corn")),
    "soup": (("boil", "stir", "chop", "pour", "peel", "dice"),
             ("onion", "carrot", "potato", "garlic", "chicken", "mushroom", "corn", "cabbage")),
    "stir fry": (("fry", "stir", "slice", "chop", "shake", "pour"),
                 ("chicken", "beef", "pepper", "garlic", "onion", "mushroom", "shrimp", "rice")),
    "breakfast": (("fry", "flip", "pour", "slice", "peel", "mix"),
                  ("egg", "bacon", "bread", "butter", "banana", "orange", "cheese")),
    "barbecue": (("grill", "flip", "cut", "slice", "roll", "wash"),
                 ("beef", "chicken", "fish", "corn", "pepper", "shrimp", "bacon")),
    "dessert": (("peel", "slice", "mix", "stir", "roll", "pour", "shake"),
                ("banana", "apple", "orange", "lemon", "butter", "egg", "bread")),
    "pasta": (("boil", "stir", "pour", "grill", "dice", "fry"),
              ("pasta", "tomato", "garlic", "cheese", "mushroom", "beef", "bacon")),
}

# ---------------------------------------------------------------------------
# Rates and formats
# ---------------------------------------------------------------------------

FPS = 30
AUDIO_RATE = 16_000
WORLD_VERSION = 1  # bump when the world changes, so old sets are regenerated
MARKER_FILE = "tinycook.json"
SPLIT_FRACTIONS = {"validation": 0.15, "testing": 0.15}  # the rest is training

P_RECIPE_BIAS = 0.7
P_KEEP_MOOD = 0.8
P_SILENT_STEP = 0.15
P_EARLY = 0.15
P_LATE = 0.15
P_FILLER = 0.35
P_MOOD_WORDS = 0.6
P_OFF_TOPIC = 0.35
P_GREETING = 0.6
P_SIGN_OFF = 0.5

VERB_DETAILS = {
    "cut": "in half", "chop": "into pieces", "dice": "into small cubes",
    "slice": "into thin slices", "stir": "with a spoon", "mix": "with a mixer",
    "pour": "into the bowl", "wash": "under running water", "fry": "in a pan",
    "grill": "on the grill", "boil": "in a pot of water", "roll": "with a rolling pin",
    "peel": "with a small knife", "shake": "in a jar", "flip": "over",
}

NARRATION_TEMPLATES = (
    "next we {verb} the {noun}",
    "now we are going to {verb} the {noun}",
    "go ahead and {verb} your {noun}",
    "you want to {verb} the {noun} {detail}",
    "i am going to {verb} this {noun}",
    "time to {verb} the {noun}",
    "then {verb} the {noun} {detail}",
    "so here i {verb} the {noun}",
    "we need to {verb} the {noun} first",
    "{verb} the {noun} like this",
    "i always {verb} my {noun} {detail}",
    "the next thing is to {verb} the {noun}",
    "take the {noun} and {verb} it",
    "this {noun} we {verb} {detail}",
)
MOOD_PHRASES = {
    "happy": ("i love this part", "this is so much fun", "wonderful", "this smells amazing", "great"),
    "sad": ("sadly", "unfortunately", "i feel a bit down today", "this was my late grandmother favourite", "oh well"),
    "angry": ("ugh", "this stupid knife", "i hate this part", "seriously", "come on"),
    "calm": ("gently", "nice and slow", "take your time", "no rush", "just relax"),
}
FILLERS = ("um", "uh", "so", "okay", "you know", "like", "right", "basically", "alright")
OFF_TOPIC = (
    "do not forget to like and subscribe",
    "my kids love this one",
    "the weather has been really nice this week",
    "i got this pan from my neighbour",
    "let me know in the comments what you think",
    "we went to the market this morning",
    "this recipe is from my travels",
    "my dog is watching me right now",
    "i will put the list in the description",
    "sorry about the noise in the background",
)
GREETINGS = (
    "hi everyone welcome back to my channel",
    "hello and welcome here in the {scene}",
    "hey guys today we are cooking in the {scene}",
    "welcome to my {scene}",
    "hi today i have a nice {recipe} recipe",
)
SIGN_OFFS = ("and that is it enjoy", "thanks for watching see you next time", "bye everyone", "that was easy right")
# Words a second the narrator speaks, by mood (also sets caption lengths).
WORDS_PER_SECOND = {"happy": 3.0, "sad": 1.8, "angry": 3.5, "calm": 2.2}


class TinyCookError(ValueError):
    """Bad arguments or an output folder TinyCook cannot use; the message says what to do."""


# ---------------------------------------------------------------------------
# Planning: the world without pixels (cheap; tests sample it for 100+ videos)
# ---------------------------------------------------------------------------


@dataclass
class StepPlan:
    id: int
    start: float
    end: float
    verb: str
    noun: str
    mood: str
    sentence: str = ""


@dataclass
class CaptionPlan:
    start: float
    end: float
    text: str
    kind: str  # "step" | "off_topic"
    step: int | None  # the step it talks about
    timing: str | None  # "on_time" | "early" | "late" for step sentences


@dataclass
class VideoPlan:
    video_id: str
    index: int
    recipe_type: str
    scene: str
    duration: float
    steps: list[StepPlan]
    subset: str = "training"
    captions: list[CaptionPlan] = field(default_factory=list)


def video_id_for(index: int) -> str:
    return f"tc{index:05d}"


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, *keys])


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _skeleton(index: int, seed: int) -> VideoPlan:
    """Times and labels of one video; its own generator makes it independent of the others."""
    rng = _rng(seed, index, 0)
    recipe = _pick(rng, tuple(RECIPE_TYPES))
    pref_verbs, pref_nouns = RECIPE_TYPES[recipe]
    scene = _pick(rng, SCENES)
    mood = _pick(rng, MOODS)
    # Time in tenths of a second (3 frames), so that times are exact frame boundaries.
    t = int(rng.integers(10, 21))
    steps = []
    for k in range(int(rng.integers(3, 6))):
        if k:
            t += int(rng.integers(5, 21))  # a pause between steps
        length = int(rng.integers(30, 56))
        verb = _pick(rng, pref_verbs if rng.random() < P_RECIPE_BIAS else VERBS)
        noun = _pick(rng, pref_nouns if rng.random() < P_RECIPE_BIAS else INGREDIENTS)
        if k and rng.random() > P_KEEP_MOOD:
            mood = _pick(rng, MOODS)
        steps.append(StepPlan(id=k, start=t / 10, end=(t + length) / 10, verb=verb, noun=noun, mood=mood))
        t += length
    t += int(rng.integers(10, 21))
    return VideoPlan(video_id=video_id_for(index), index=index, recipe_type=recipe, scene=scene,
                     duration=t / 10, steps=steps)


def _cover_vocabulary(plans: list[VideoPlan], seed: int) -> None:
    """Make every label value occur at least once where there are enough steps or videos.

    Random draws leave a rare value out now and then; a lesson that measures
    per-class accuracy needs each class present. A missing value replaces one
    occurrence of the most frequent value, so the distribution barely moves.
    """
    rng = _rng(seed, 2**31, 1)
    steps = [s for p in plans for s in p.steps]
    for kind, vocab, items in (("verb", VERBS, steps), ("noun", INGREDIENTS, steps),
                               ("mood", MOODS, steps), ("scene", SCENES, plans)):
        if len(items) < len(vocab):
            continue
        counts = Counter(getattr(item, kind) for item in items)
        for value in vocab:
            if counts[value]:
                continue
            most = max(counts.values())
            candidates = [item for item in items if counts[getattr(item, kind)] == most]
            chosen = candidates[int(rng.integers(len(candidates)))]
            counts[getattr(chosen, kind)] -= 1
            setattr(chosen, kind, value)
            counts[value] += 1


def _assign_splits(plans: list[VideoPlan], seed: int) -> None:
    n = len(plans)
    order = _rng(seed, 2**31, 2).permutation(n)
    n_test = round(n * SPLIT_FRACTIONS["testing"])
    n_val = round(n * SPLIT_FRACTIONS["validation"])
    if n >= 3:  # every split non-empty once there are videos enough
        n_test, n_val = max(n_test, 1), max(n_val, 1)
    for rank, i in enumerate(order):
        plans[i].subset = "testing" if rank < n_test else "validation" if rank < n_test + n_val else "training"


def _with_fillers(rng: np.random.Generator, words: list[str]) -> list[str]:
    if rng.random() >= P_FILLER:
        return words
    words = list(words)
    for _ in range(int(rng.integers(1, 3))):
        words.insert(int(rng.integers(0, len(words) + 1)), _pick(rng, FILLERS))
    return words


def _speech_seconds(text: str, mood: str) -> float:
    return max(1.0, len(text.split()) / WORDS_PER_SECOND[mood])


def _narrate(plan: VideoPlan, seed: int) -> None:
    """Write the step sentences and the ASR-like captions of one video."""
    rng = _rng(seed, plan.index, 1)
    wanted: list[tuple[float, str, str, str, int | None, str | None]] = []  # start, text, mood, kind, step, timing

    def mood_words(text: str, mood: str) -> str:
        if rng.random() < P_MOOD_WORDS:
            phrase = _pick(rng, MOOD_PHRASES[mood])
            return f"{phrase} {text}" if rng.random() < 0.5 else f"{text} {phrase}"
        return text

    first_mood = plan.steps[0].mood
    if rng.random() < P_GREETING:
        greeting = _pick(rng, GREETINGS).format(scene=plan.scene, recipe=plan.recipe_type)
        wanted.append((float(rng.uniform(0.1, 0.5)), greeting, first_mood, "off_topic", None, None))
    for k, step in enumerate(plan.steps):
        detail = VERB_DETAILS[step.verb]
        step.sentence = f"{step.verb} the {step.noun} {detail}" if rng.random() < 0.5 else f"{step.verb} the {step.noun}"
        if k + 1 < len(plan.steps) and rng.random() < P_OFF_TOPIC:
            pause_start = step.end
            wanted.append((pause_start + float(rng.uniform(0.0, 0.4)), mood_words(_pick(rng, OFF_TOPIC), step.mood),
                           step.mood, "off_topic", None, None))
        if rng.random() < P_SILENT_STEP:
            continue
        text = _pick(rng, NARRATION_TEMPLATES).format(verb=step.verb, noun=step.noun, detail=detail)
        text = " ".join(_with_fillers(rng, mood_words(text, step.mood).split()))
        roll = rng.random()
        if roll < P_EARLY:
            start, timing = step.start - float(rng.uniform(1.0, 3.0)), "early"
        elif roll < P_EARLY + P_LATE:
            start, timing = step.end + float(rng.uniform(0.0, 1.5)), "late"
        else:
            start, timing = step.start + float(rng.uniform(0.0, 1.0)), "on_time"
        wanted.append((max(0.0, start), text, step.mood, "step", step.id, timing))
    if rng.random() < P_SIGN_OFF:
        wanted.append((plan.steps[-1].end + 0.2, _pick(rng, SIGN_OFFS), plan.steps[-1].mood, "off_topic", None, None))

    # One voice at a time: push each sentence after the previous one, as a narrator would.
    captions: list[CaptionPlan] = []
    cursor = 0.0
    for start, text, mood, kind, step_id, timing in sorted(wanted, key=lambda w: w[0]):
        start = max(start, cursor)
        words = text.split()
        pieces = -(-len(words) // 7)  # ASR lines are a few words long: cut into even chunks of at most 7
        bounds = np.linspace(0, len(words), pieces + 1).round().astype(int)
        chunks = [" ".join(words[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        needed = sum(_speech_seconds(chunk, mood) + 0.1 for chunk in chunks)
        if start + needed > plan.duration - 0.1:  # said near the end: start earlier, or not at all
            start = plan.duration - 0.1 - needed
            if start < cursor:
                continue
        for chunk_text in chunks:
            end = start + _speech_seconds(chunk_text, mood)
            captions.append(CaptionPlan(start=round(start, 2), end=round(end, 2), text=chunk_text,
                                        kind=kind, step=step_id, timing=timing))
            start = end + 0.1
        cursor = start + 0.2
    plan.captions = captions


def plan_world(videos: int, seed: int = 0) -> list[VideoPlan]:
    """Everything about a TinyCook world except its pixels and samples.

    Cheap (milliseconds per hundred videos); ``ensure_dataset`` renders these
    plans. Taught in ``00_welcome_and_setup``.
    """
    if int(videos) < 1:
        raise TinyCookError(f"videos={videos}: a TinyCook world needs at least 1 video")
    plans = [_skeleton(i, seed) for i in range(int(videos))]
    _cover_vocabulary(plans, seed)
    for plan in plans:
        _narrate(plan, seed)
    _assign_splits(plans, seed)
    return plans


def _mood_of(plan: VideoPlan, t: float) -> str:
    for step in plan.steps:
        if t < step.end:
            return step.mood
    return plan.steps[-1].mood


def annotations_dict(plans: list[VideoPlan]) -> dict[str, Any]:
    """YouCook2's layout: ``{"database": {id: {duration, subset, recipe_type, annotations}}}``."""
    return {"database": {p.video_id: {
        "duration": p.duration,
        "subset": p.subset,
        "recipe_type": p.recipe_type,
        "annotations": [{"id": s.id, "segment": [s.start, s.end], "sentence": s.sentence} for s in p.steps],
    } for p in plans}}


def captions_dict(plans: list[VideoPlan]) -> dict[str, Any]:
    """HowTo100M's layout: ``{id: {"start": [...], "end": [...], "text": [...]}}``."""
    return {p.video_id: {"start": [c.start for c in p.captions], "end": [c.end for c in p.captions],
                         "text": [c.text for c in p.captions]} for p in plans}


def labels_dict(plans: list[VideoPlan]) -> dict[str, Any]:
    """The hidden labels: per segment verb/noun/scene/mood, per caption what it is."""
    return {
        "vocabulary": {kind: list(values) for kind, values in LABEL_KINDS.items()},
        "videos": {p.video_id: {
            "subset": p.subset,
            "recipe_type": p.recipe_type,
            "scene": p.scene,
            "segments": [{"id": s.id, "segment": [s.start, s.end], "verb": s.verb, "noun": s.noun,
                          "scene": p.scene, "mood": s.mood} for s in p.steps],
            "captions": [{"kind": c.kind, "step": c.step, "timing": c.timing} for c in p.captions],
        } for p in plans},
    }


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    if shape == "circle":
        return r2 < 0.85**2
    if shape == "oval_wide":
        return (u / 0.95) ** 2 + (v / 0.6) ** 2 < 1
    if shape == "oval_tall":
        return (u / 0.6) ** 2 + (v / 0.95) ** 2 < 1
    if shape == "square":
        return (np.abs(u) < 0.72) & (np.abs(v) < 0.72)
    if shape == "bar":
        return (np.abs(u) < 0.95) & (np.abs(v) < 0.3)
    if shape == "triangle":
        return (v > -0.85) & (v < 0.85) & (np.abs(u) < (v + 0.85) * 0.55)
    if shape == "drop":
        return (r2 < 0.6**2) & (v > -0.1) | ((v <= -0.1) & (np.abs(u) < (v + 0.95) * 0.7) & (v > -0.95))
    if shape == "dome":
        cap = (u * u + (v + 0.1) ** 2 < 0.85**2) & (v < -0.1)
        stem = (np.abs(u) < 0.25) & (v >= -0.1) & (v < 0.75)
        return cap | stem
    if shape == "crescent":
        return (r2 < 0.9**2) & ((u - 0.35) ** 2 + (v + 0.35) ** 2 > 0.75**2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A brightness factor per pixel."""
    if texture == "plain":
        return np.ones_like(u)
    if texture == "stripes":
        return np.where(np.sin(v * 14) > 0.3, 0.72, 1.0)
    if texture == "dots":
        return np.where((np.sin(u * 13) * np.sin(v * 13)) > 0.55, 0.6, 1.0)
    if texture == "checker":
        return np.where((np.floor((u + 1) * 4) + np.floor((v + 1) * 4)) % 2 == 0, 0.8, 1.05)
    if texture == "rings":
        return np.where(np.sin(np.sqrt(u * u + v * v) * 22) > 0.4, 0.75, 1.0)
    if texture == "speckle":
        return 0.8 + 0.35 * noise
    raise ValueError(f"unknown texture {texture!r}")


@dataclass
class _Sprite:
    rgb: np.ndarray  # (s, s, 3) uint8
    inner: np.ndarray  # (s, s, 3) uint8: what is under the skin (cut faces, peeled)
    mask: np.ndarray  # (s, s) bool
    base: np.ndarray  # (s, s, 3) float32, for colour changes

    @property
    def size(self) -> int:
        return self.mask.shape[0]


def _make_sprite(noun: str, side: int, gain: float) -> _Sprite:
    shape, colour, texture = INGREDIENT_LOOKS[noun]
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1
    v, u = np.meshgrid(grid, grid, indexing="ij")  # (s, s)
    # The speckle pattern belongs to the ingredient, not to the video.
    noise = np.random.default_rng(INGREDIENTS.index(noun)).random((side, side)).astype(np.float32)
    mask = _shape_mask(shape, u, v)
    eroded = mask.copy()
    eroded[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    shade = _texture(texture, u, v, noise) * np.where(mask & ~eroded, 0.55, 1.0)  # dark outline
    base = np.clip(np.asarray(colour, np.float32) * shade[..., None] * gain, 0, 255)
    inner_colour = 0.45 * np.asarray(colour, np.float32) + 0.55 * np.array([245, 240, 220], np.float32)
    inner = np.clip(inner_colour * (0.9 + 0.1 * noise[..., None]) * gain, 0, 255)
    return _Sprite(rgb=base.astype(np.uint8), inner=inner.astype(np.uint8), mask=mask, base=base)


def _scene_background(scene: str, size: int, gain: float, tint: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if scene == "kitchen":  # light tiles
        tiles = ((np.floor(x * 6) + np.floor(y * 6)) % 2)[..., None]
        img = np.array([205, 205, 210]) * (1 - tiles) + np.array([175, 180, 190]) * tiles
    elif scene == "garden":  # grass with blades
        blades = (np.sin(x * 90 + np.sin(y * 20) * 2) > 0.2)[..., None]
        img = np.where(blades, [70, 150, 60], [95, 175, 80]) * (0.8 + 0.3 * y[..., None])
    elif scene == "restaurant":  # dark wooden planks
        planks = (np.floor(y * 8) % 2)[..., None]
        grain = (0.9 + 0.1 * np.sin(x * 50 + np.floor(y * 8) * 3))[..., None]
        img = (np.array([110, 60, 40]) * (1 - planks) + np.array([90, 48, 32]) * planks) * grain
    elif scene == "beach":  # sky over sand
        sky = (y < 0.35)[..., None]
        img = np.where(sky, [120, 190, 240], [230, 210, 150]) + (1 - sky) * 8 * np.sin(x * 40 + y * 30)[..., None]
    else:
        raise ValueError(f"unknown scene {scene!r}")
    return np.clip(img * gain + tint, 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, rgb: np.ndarray, mask: np.ndarray, top: int, left: int) -> None:
    h, w = mask.shape
    height, width = frame.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    frame[y0:y1, x0:x1][m] = rgb[y0 - top:y1 - top, x0 - left:x1 - left][m]


def _rect(frame: np.ndarray, top: int, left: int, h: int, w: int, colour) -> None:
    frame[max(top, 0):max(top + h, 0), max(left, 0):max(left + w, 0)] = colour


def _resize(rgb: np.ndarray, mask: np.ndarray, scale_y: float, scale_x: float):
    side = mask.shape[0]
    h, w = max(1, int(round(side * scale_y))), max(1, int(round(side * scale_x)))
    rows = np.minimum(((np.arange(h) + 0.5) * side / h).astype(np.intp), side - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * side / w).astype(np.intp), side - 1)
    return rgb[rows][:, cols], mask[rows][:, cols]


def _ellipse_mask(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1


FLIP_HZ = 0.8  # turns a second
FLIP_SHARE = 0.35  # of each period spent in the air


class _StepPainter:
    """Draws one step's frames: props once, the moving ingredient per frame."""

    def __init__(self, step: StepPlan, background: np.ndarray, sprite: _Sprite, rng: np.random.Generator):
        self.verb = step.verb
        self.size = size = background.shape[0]
        self.sprite = sprite
        self.rate = float(rng.uniform(0.85, 1.15))  # tempo of this step's motion (and its sound)
        self.phase = float(rng.uniform(0, 1))
        self.cy = int(size * 0.56 + rng.integers(-size // 20, size // 20 + 1))
        self.cx = int(size * 0.5 + rng.integers(-size // 16, size // 16 + 1))
        self.dot = max(1, size // 48)
        n = 14
        self.particle_x = rng.uniform(-0.5, 0.5, n)
        self.particle_phase = rng.uniform(0, 1, n)
        self.props = background.copy()
        s = sprite.size
        verb, props = self.verb, self.props
        if verb in ("cut", "chop", "dice", "slice", "peel", "roll"):  # a cutting board
            _rect(props, self.cy - s // 2 - s // 8, self.cx - s, s + s // 4, 2 * s, (200, 160, 110))
        elif verb in ("stir", "mix"):  # a bowl seen from above
            bowl = _ellipse_mask(size, self.cy, self.cx, s * 0.95, s * 1.1)
            rim = bowl & ~_ellipse_mask(size, self.cy, self.cx, s * 0.85, s * 1.0)
            props[bowl] = (235, 235, 240)
            props[rim] = (120, 130, 160)
        elif verb == "fry":  # a dark pan
            props[_ellipse_mask(size, self.cy, self.cx, s * 0.75, s * 0.95)] = (55, 55, 60)
            _rect(props, self.cy - s // 12, self.cx + int(s * 0.9), max(2, s // 6), s, (40, 40, 40))
        elif verb == "grill":  # a grate of dark bars
            _rect(props, self.cy - int(s * 0.7), self.cx - s, int(s * 1.4), 2 * s, (70, 60, 55))
            step_px = max(3, s // 5)
            for x in range(self.cx - s, self.cx + s, step_px):
                _rect(props, self.cy - int(s * 0.7), x, int(s * 1.4), max(1, step_px // 3), (25, 25, 25))
        elif verb == "boil":  # a pot of water
            _rect(props, self.cy - s // 2, self.cx - int(s * 0.9), int(s * 1.1), int(s * 1.8), (150, 170, 200))
            _rect(props, self.cy - s // 2 - 2, self.cx - int(s * 0.9), 3, int(s * 1.8), (80, 80, 90))
        elif verb == "pour":  # a bowl below, the stream comes from above
            props[_ellipse_mask(size, self.cy + s // 3, self.cx, s * 0.45, s * 0.9)] = (225, 225, 230)
        if verb == "grill":  # diagonal grill marks, revealed as it cooks
            side = s
            yy, xx = np.mgrid[0:side, 0:side]
            self.marks = ((xx + yy) % max(4, side // 4)) < max(2, side // 10)
        if verb == "pour":
            self.pile_rgb = sprite.rgb
        self.brown = np.array([105, 60, 25], np.float32)

    def _knife(self, frame: np.ndarray, t: float, hz: float) -> None:
        s = self.sprite.size
        lift = 0.5 + 0.5 * np.cos(2 * np.pi * (hz * self.rate * t + self.phase))
        top = int(self.cy - s // 2 - s * 0.55 * lift - s * 0.35)
        _rect(frame, top, self.cx - max(1, s // 20), int(s * 0.55), max(2, s // 10), (190, 195, 205))
        _rect(frame, top - s // 4, self.cx - max(1, s // 20), s // 4, max(2, s // 10), (60, 40, 30))

    def _pieces(self, frame: np.ndarray, rows: int, cols: int, gap: int, top: int, left: int) -> None:
        sp, s = self.sprite, self.sprite.size
        ys, xs = np.linspace(0, s, rows + 1).astype(int), np.linspace(0, s, cols + 1).astype(int)
        for i in range(rows):
            for j in range(cols):
                sl = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
                rgb = sp.rgb[sl]
                if gap > 0:  # a fresh cut shows the inside along its edges
                    rgb = sp.inner[sl].copy()
                    rgb[1:-1, 1:-1] = sp.rgb[sl][1:-1, 1:-1]
                dy = int((i - (rows - 1) / 2) * gap)
                dx = int((j - (cols - 1) / 2) * gap)
                _paste(frame, rgb, sp.mask[sl], top + ys[i] + dy, left + xs[j] + dx)

    def draw(self, frame: np.ndarray, t: float, progress: float) -> None:
        """Paint the ingredient at ``t`` seconds into the step (``progress`` in [0, 1])."""
        frame[:] = self.props
        sp, s, size = self.sprite, self.sprite.size, self.size
        top, left = self.cy - s // 2, self.cx - s // 2
        verb, rate, phase = self.verb, self.rate, self.phase
        cycle = 2 * np.pi * rate * t + 2 * np.pi * phase
        if verb == "cut":
            self._pieces(frame, 1, 2, int(progress * 0.35 * s), top, left)
            self._knife(frame, t, 2.0)
        elif verb in ("chop", "dice"):  # look alike on purpose: only their sound differs
            self._pieces(frame, 3, 3, int(progress * 0.22 * s), top, left)
            self._knife(frame, t, 3.0)
        elif verb == "slice":
            self._pieces(frame, 1, 5, int(progress * 0.25 * s), top, left)
            self._knife(frame, t, 1.5)
        elif verb in ("stir", "mix"):  # look alike on purpose
            radius = 0.12 * size
            y = int(self.cy + radius * np.sin(cycle * 0.8) - s // 2)
            x = int(self.cx + radius * np.cos(cycle * 0.8) - s // 2)
            small_rgb, small_mask = _resize(sp.rgb, sp.mask, 0.7, 0.7)
            _paste(frame, small_rgb, small_mask, y + int(0.15 * s), x + int(0.15 * s))
            along = np.linspace(0, 1, 2 * s)  # the spoon's handle, from the ingredient up and out
            self._dots(frame, (y + s // 2 - along * s).astype(int), (x + s // 2 + along * s * 0.3).astype(int),
                       (120, 80, 40))
        elif verb == "pour":
            rows = int(progress * s)
            if rows:  # the pile grows from the bottom
                _paste(frame, sp.rgb[s - rows:], sp.mask[s - rows:], top + s // 3 + s - rows - s // 2, left)
            fall = (self.particle_phase + t * 1.3 * rate) % 1.0
            ys = (fall * (self.cy - 0) * 0.9).astype(int)
            xs = (self.cx + self.particle_x * s * 0.25).astype(int)
            self._dots(frame, ys, xs, sp.rgb[s // 2, s // 2])
        elif verb == "wash":
            _paste(frame, sp.rgb, sp.mask, top, left)
            fall = (self.particle_phase + t * 1.3 * rate) % 1.0
            ys = (fall * (top + s)).astype(int)
            xs = (self.cx + self.particle_x * s).astype(int)
            self._dots(frame, ys, xs, (80, 140, 255))
        elif verb == "fry":
            browned = (sp.base * (1 - 0.75 * progress) + self.brown * 0.75 * progress).astype(np.uint8)
            jitter = int(round(np.sin(t * 37.0) * max(1, size // 64)))
            _paste(frame, browned, sp.mask, top + jitter, left - jitter)
        elif verb == "grill":
            dark = sp.base * (1 - 0.2 * progress) + self.brown * 0.2 * progress
            dark = np.where(self.marks[..., None], dark * (1 - 0.7 * progress), dark).astype(np.uint8)
            _paste(frame, dark, sp.mask, top, left)
        elif verb == "boil":
            bob = int(np.sin(cycle * 1.2) * 0.05 * size)
            _paste(frame, sp.rgb, sp.mask, top + bob, left)
            rise = (self.particle_phase + t * 0.8 * rate) % 1.0
            ys = (self.cy + s * 0.5 - rise * s).astype(int)
            xs = (self.cx + self.particle_x * s * 1.6).astype(int)
            self._dots(frame, ys, xs, (250, 250, 255))
        elif verb == "roll":
            flat_rgb, flat_mask = _resize(sp.rgb, sp.mask, 1 - 0.5 * progress, 1 + 0.4 * progress)
            h, w = flat_mask.shape
            dx = int(np.sin(cycle) * 0.1 * size)
            _paste(frame, flat_rgb, flat_mask, self.cy + s // 2 - h, self.cx - w // 2 + dx)
            _rect(frame, self.cy + s // 2 - h - max(2, s // 6), self.cx - s + dx, max(2, s // 6), 2 * s, (170, 120, 70))
        elif verb == "peel":
            rows = int(progress * s)
            peeled = sp.rgb.copy()
            peeled[:rows] = sp.inner[:rows]
            _paste(frame, peeled, sp.mask, top, left)
            if 0 < rows < s:  # the peel's edge
                edge = sp.mask[rows]
                frame_row = top + rows
                if 0 <= frame_row < size:
                    xs = np.nonzero(edge)[0] + left
                    xs = xs[(xs >= 0) & (xs < size)]
                    frame[frame_row, xs] = (90, 60, 30)
        elif verb == "shake":
            dx = int(np.sin(cycle * 5) * 0.08 * size)
            dy = int(np.sin(cycle * 2.5) * 0.02 * size)
            _paste(frame, sp.rgb, sp.mask, top + dy, left + dx)
        elif verb == "flip":  # lies still, then turns over in a short hop, FLIP_HZ times a second
            turns = rate * FLIP_HZ * t + phase
            done, within = int(turns), turns % 1.0
            face_before = 1 if done % 2 == 0 else -1  # +1 face up, -1 underside up
            angle = np.pi * within / FLIP_SHARE if within < FLIP_SHARE else 0.0
            turn = face_before * np.cos(angle) if within < FLIP_SHARE else -face_before
            squashed_rgb, squashed_mask = _resize(sp.rgb, sp.mask, max(0.08, abs(turn)), 1.0)
            if turn < 0:  # the underside, upside down and darker
                squashed_rgb, squashed_mask = (squashed_rgb[::-1] * 0.7).astype(np.uint8), squashed_mask[::-1]
            hop = int(np.sin(angle) * 0.15 * size)
            h = squashed_mask.shape[0]
            _paste(frame, squashed_rgb, squashed_mask, self.cy - h // 2 - hop, left)
        else:
            raise ValueError(f"no painter for verb {verb!r}")

    def _dots(self, frame: np.ndarray, ys: np.ndarray, xs: np.ndarray, colour) -> None:
        size, d = self.size, self.dot
        for dy in range(d + 1):
            for dx in range(d + 1):
                yy, xx = ys + dy, xs + dx
                ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
                frame[yy[ok], xx[ok]] = colour


# ---------------------------------------------------------------------------
# Sounds
# ---------------------------------------------------------------------------


def _band_noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """White noise kept between ``low`` and ``high`` Hz, unit RMS."""
    if n <= 0:
        return np.zeros(0, np.float32)
    n_fft = 1 << (n - 1).bit_length()  # a power of two: FFTs of lengths with large prime factors are slow
    spectrum = np.fft.rfft(rng.standard_normal(n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1 / AUDIO_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    out = np.fft.irfft(spectrum, n_fft)[:n]
    return (out / (np.sqrt(np.mean(out**2)) + 1e-9)).astype(np.float32)


def _hits(t: np.ndarray, hz: float, phase: float, decay_s: float) -> np.ndarray:
    """A decaying envelope that restarts ``hz`` times a second."""
    since = ((t * hz + phase) % 1.0) / hz
    return np.exp(-since / decay_s)


def _verb_sound(verb: str, t: np.ndarray, rate: float, phase: float, rng: np.random.Generator) -> np.ndarray:
    """The sound of one step, ``t`` in seconds from its start; sound-alike verbs share a branch."""
    n = t.size
    two_pi = 2 * np.pi
    if verb == "cut":
        return 0.8 * _hits(t, 2.0 * rate, phase, 0.04) * np.sin(two_pi * 300 * t)
    if verb == "chop":
        env = _hits(t, 3.0 * rate, phase, 0.05)
        return env * (0.8 * np.sin(two_pi * 150 * t) + 0.3 * _band_noise(rng, n, 50, 400))
    if verb == "dice":
        env = _hits(t, 3.0 * rate, phase, 0.015)
        return env * (0.6 * np.sin(two_pi * 1500 * t) + 0.4 * _band_noise(rng, n, 2500, 6000))
    if verb == "slice":
        env = np.sin(np.pi * ((t * 1.5 * rate + phase) % 1.0)) ** 4
        return 0.6 * env * _band_noise(rng, n, 2000, 5000)
    if verb == "stir":
        env = 0.5 + 0.5 * np.sin(two_pi * 0.8 * rate * t + two_pi * phase)
        return 0.5 * env * _band_noise(rng, n, 800, 1500)
    if verb == "mix":
        buzz = sum(np.sin(two_pi * 110 * k * t) / k for k in range(1, 8))
        return 0.35 * buzz
    if verb in ("pour", "wash"):  # sound alike on purpose: only the picture differs
        gurgle = np.abs(_band_noise(rng, n, 2, 8))
        return 0.35 * (0.5 + 0.5 * gurgle) * _band_noise(rng, n, 300, 2500)
    if verb in ("fry", "grill"):  # sound alike on purpose
        crackle = (rng.random(n) < 30 / AUDIO_RATE).astype(np.float32)
        crackle = np.convolve(crackle, np.exp(-np.arange(80) / 12.0), mode="same")
        return 0.25 * _band_noise(rng, n, 3000, 7500) + 0.6 * crackle * rng.choice([-1.0, 1.0], n)
    if verb == "boil":
        out = np.zeros(n)
        for start in rng.uniform(0, max(t[-1], 0.01), int(8 * t[-1]) + 1):
            k = int(start * AUDIO_RATE)
            m = min(n - k, int(0.06 * AUDIO_RATE))
            tt = np.arange(m) / AUDIO_RATE
            out[k:k + m] += np.sin(two_pi * (150 + 2500 * tt) * tt) * np.exp(-tt / 0.02)
        return 0.7 * out
    if verb == "roll":
        env = 0.6 + 0.4 * np.sin(two_pi * rate * t + two_pi * phase)
        return 0.8 * env * _band_noise(rng, n, 40, 150)
    if verb == "peel":
        since = ((t * 2.0 * rate + phase) % 1.0) / (2.0 * rate)
        return 0.4 * np.sin(two_pi * (1800 + 4000 * since) * since) * (since < 0.12)
    if verb == "shake":
        gate = (np.sin(two_pi * 5 * 0.8 * rate * t + two_pi * phase) > 0).astype(np.float32)
        return 0.5 * gate * _band_noise(rng, n, 2000, 6000)
    if verb == "flip":  # a clang as it lands
        env = _hits(t, FLIP_HZ * rate, phase - FLIP_SHARE, 0.15)
        return 0.5 * env * (np.sin(two_pi * 700 * t) + 0.5 * np.sin(two_pi * 1400 * t))
    raise ValueError(f"no sound for verb {verb!r}")


_VOICES = {  # pitch (Hz), pitch change over a sentence, loudness, harmonic roll-off
    "happy": (230.0, 0.25, 0.30, 1.0),
    "sad": (120.0, -0.2, 0.15, 1.5),
    "angry": (175.0, 0.0, 0.45, 0.5),
    "calm": (150.0, 0.0, 0.18, 2.0),
}


def _voice(text: str, mood: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """A hummed stand-in for speech: one syllable-like pulse per word, in the mood's voice."""
    pitch, glide, loudness, rolloff = _VOICES[mood]
    t = np.arange(n) / AUDIO_RATE
    length = max(t[-1], 1e-3) if n else 1e-3
    f0 = pitch * float(rng.uniform(0.93, 1.07)) * (1 + glide * t / length)
    phase = 2 * np.pi * np.cumsum(f0) / AUDIO_RATE
    wave = sum(np.sin(k * phase) / k**rolloff for k in range(1, 7))
    words = max(1, len(text.split()))
    syllables = np.sin(np.pi * (t / length * words) % np.pi) ** 2
    out = loudness * syllables * wave
    if mood == "angry":  # a harsh, clipped voice
        out = np.clip(out * 2.0, -0.5, 0.5)
    return out


def _ambience(scene: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / AUDIO_RATE
    if scene == "kitchen":  # a fridge hum
        return 0.05 * np.sin(2 * np.pi * 60 * t) + 0.02 * _band_noise(rng, n, 100, 400)
    if scene == "garden":  # birds
        chirp = (np.sin(2 * np.pi * 0.7 * t) > 0.85) * np.sin(2 * np.pi * (3000 + 800 * np.sin(2 * np.pi * 9 * t)) * t)
        return 0.05 * chirp + 0.01 * _band_noise(rng, n, 1000, 4000)
    if scene == "restaurant":  # distant chatter
        return 0.05 * (0.6 + 0.4 * np.abs(_band_noise(rng, n, 1, 4))) * _band_noise(rng, n, 200, 1200)
    if scene == "beach":  # waves
        return 0.07 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.15 * t)) * _band_noise(rng, n, 100, 1500)
    raise ValueError(f"unknown scene {scene!r}")


def render_audio(plan: VideoPlan, seed: int, painters: dict[int, _StepPainter] | None = None) -> np.ndarray:
    """The mono sound track of one video, float32 in [-1, 1], ``AUDIO_RATE`` Hz."""
    rng = _rng(seed, plan.index, 3)
    n = int(round(plan.duration * AUDIO_RATE))
    track = _ambience(plan.scene, n, rng).astype(np.float64)
    for step in plan.steps:
        a, b = int(round(step.start * AUDIO_RATE)), int(round(step.end * AUDIO_RATE))
        rate, phase = (painters[step.id].rate, painters[step.id].phase) if painters else (1.0, 0.0)
        sound = _verb_sound(step.verb, np.arange(b - a) / AUDIO_RATE, rate, phase, rng)
        fade = np.minimum(1.0, np.minimum(np.arange(b - a), np.arange(b - a)[::-1]) / (0.05 * AUDIO_RATE))
        track[a:b] += sound * fade
    for caption in plan.captions:
        a, b = int(round(caption.start * AUDIO_RATE)), min(n, int(round(caption.end * AUDIO_RATE)))
        if b > a:
            track[a:b] += _voice(caption.text, _mood_of(plan, caption.start), b - a, rng)
    return np.clip(track, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------
# Rendering and encoding one video
# ---------------------------------------------------------------------------


def render_video(plan: VideoPlan, path: str | os.PathLike, seed: int, size: int = 128) -> Path:
    """Render one planned video to an mp4 (H.264 + AAC) at ``path``; written atomically."""
    import av  # imported here so that planning needs only numpy

    path = Path(path)
    rng = _rng(seed, plan.index, 2)
    gain = float(rng.uniform(0.9, 1.1))  # the camera's exposure and white balance, per video
    tint = rng.uniform(-12, 12, 3)
    background = _scene_background(plan.scene, size, gain, tint)
    sprite_side = max(8, int(round(size * 0.36 * float(rng.uniform(0.9, 1.1)))))
    sprites: dict[str, _Sprite] = {}
    painters: dict[int, _StepPainter] = {}
    for step in plan.steps:
        if step.noun not in sprites:
            sprites[step.noun] = _make_sprite(step.noun, sprite_side, gain)
        painters[step.id] = _StepPainter(step, background, sprites[step.noun], rng)
    audio = render_audio(plan, seed, painters)

    partial = path.with_name(path.name + ".partial")
    frames_total = int(round(plan.duration * FPS))
    step_of_frame = np.full(frames_total, -1)
    for step in plan.steps:
        step_of_frame[int(round(step.start * FPS)):int(round(step.end * FPS))] = step.id
    frame = np.empty((size, size, 3), np.uint8)
    container = av.open(str(partial), mode="w", format="mp4")
    try:
        video = container.add_stream("libx264", rate=FPS)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        # One thread and fixed settings: x264's output is then a function of its input alone.
        video.options = {"preset": "ultrafast", "crf": "23",
                         "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:threads=1"}
        video.codec_context.thread_count = 1
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        sound.bit_rate = 48_000
        sound.options = {"aac_coder": "fast"}  # about twice as fast as the default, good enough for a hum
        chunk, sample = 1024, 0  # AAC encodes 1024 samples a frame
        for i in range(frames_total):
            k = int(step_of_frame[i])
            if k < 0:
                frame[:] = background
            else:
                step = plan.steps[k]
                t = i / FPS - step.start
                painters[k].draw(frame, t, t / (step.end - step.start))
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            while sample < min(len(audio), (i + 1) * AUDIO_RATE // FPS):  # keep the streams interleaved
                block = audio[sample:sample + chunk]
                if block.size < chunk:
                    block = np.pad(block, (0, chunk - block.size))
                audio_frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
                audio_frame.sample_rate = AUDIO_RATE
                audio_frame.pts = sample
                for packet in sound.encode(audio_frame):
                    container.mux(packet)
                sample += chunk
        for stream in (video, sound):
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    os.replace(partial, path)
    return path


def _render_job(job: tuple[VideoPlan, str, int, int]) -> str:
    plan, path, seed, size = job
    render_video(plan, path, seed, size)
    return plan.video_id


# ---------------------------------------------------------------------------
# The data set on disk
# ---------------------------------------------------------------------------

_OWN_ENTRIES = {"videos", "annotations.json", "captions.json", "labels.json", MARKER_FILE, "derived"}


def _identity(videos: int, seed: int, size: int) -> dict[str, Any]:
    return {"generator": "vbert_lab.tinycook", "world_version": WORLD_VERSION, "videos": int(videos),
            "seed": int(seed), "size": int(size), "fps": FPS, "audio_rate": AUDIO_RATE}


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str | os.PathLike, videos: int, seed: int = 0, size: int = 128) -> bool:
    """True when ``out_dir`` holds a finished TinyCook set made with these arguments."""
    out = Path(out_dir)
    marker = _read_marker(out)
    if marker is None or {k: marker.get(k) for k in _identity(videos, seed, size)} != _identity(videos, seed, size):
        return False
    needed = [out / "annotations.json", out / "captions.json", out / "labels.json"]
    needed += [out / "videos" / f"{vid}.mp4" for vid in marker.get("video_ids", [])]
    return len(marker.get("video_ids", [])) == videos and all(p.is_file() for p in needed)


def _validate(out: Path, videos: int, size: int, workers: int | None) -> None:
    if isinstance(videos, bool) or not isinstance(videos, (int, np.integer)) or videos < 1:
        raise TinyCookError(f"videos={videos!r}: ask for at least 1 video (the smoke profile uses 24)")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32 or size > 1024 or size % 2:
        raise TinyCookError(f"size={size!r}: frames must be an even number of pixels from 32 to 1024 (default 128)")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise TinyCookError(f"workers={workers!r}: use at least 1 process, or leave it unset for one per CPU")
    if out.exists() and not out.is_dir():
        raise TinyCookError(f"{out} is a file, not a folder: choose another --out path or remove that file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TinyCookError(f"{out}: its parent {parent} is a file; choose an --out path inside a folder")
            break
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign and _read_marker(out) is None:
            shown = ", ".join(foreign[:5])
            raise TinyCookError(
                f"{out} already holds files that are not a TinyCook data set ({shown}); "
                "choose an empty or new folder, so that nothing of yours is overwritten")


def _partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def ensure_dataset(out_dir: str | os.PathLike, videos: int, seed: int = 0, size: int = 128,
                   workers: int | None = None, force: bool = False) -> Path:
    """Make sure ``out_dir`` holds the TinyCook world of ``(videos, seed, size)``; return its path.

    A complete set made with the same arguments is reused at once (with its
    ``derived/`` folder of later stages). Otherwise the world is rendered into a
    hidden sibling folder ``.<name>.partial`` and moved into place only when
    every file is written, ``tinycook.json`` last; an interrupted run leaves
    only that sibling, and the next run with the same arguments keeps the
    videos it already finished. ``force`` regenerates (and drops ``derived/``).
    ``workers`` processes render videos in parallel (default: one per CPU);
    the output does not depend on it. Taught in ``00_welcome_and_setup``.
    """
    out = Path(out_dir).expanduser().absolute()
    _validate(out, videos, size, workers)
    videos, seed, size = int(videos), int(seed), int(size)
    if not force and is_complete(out, videos, seed, size):
        return out

    partial = _partial_dir(out)
    identity = _identity(videos, seed, size)
    try:
        if partial.exists() and _read_marker_partial(partial) != identity:
            shutil.rmtree(partial)  # a run with other arguments left it: nothing to resume
        (partial / "videos").mkdir(parents=True, exist_ok=True)
        (partial / "partial.json").write_text(json.dumps(identity))
    except OSError as err:
        raise TinyCookError(f"cannot write {out}: {err.strerror or err} ({err.filename or partial}); "
                            "choose an --out folder you can write to") from None

    plans = plan_world(videos, seed)
    jobs = [(plan, str(partial / "videos" / f"{plan.video_id}.mp4"), seed, size) for plan in plans]
    todo = [job for job in jobs if not Path(job[1]).is_file()]  # finished videos of an interrupted run
    _render_all(todo, workers)

    for name, payload in (("annotations.json", annotations_dict(plans)), ("captions.json", captions_dict(plans)),
                          ("labels.json", labels_dict(plans))):
        (partial / name).write_text(json.dumps(payload, indent=1) + "\n")
    marker = dict(identity, video_ids=[p.video_id for p in plans],
                  subsets={s: sum(p.subset == s for p in plans) for s in ("training", "validation", "testing")})
    (partial / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n")
    (partial / "partial.json").unlink()

    if out.exists():
        shutil.rmtree(out)  # checked by _validate: a TinyCook set (or an empty folder) we replace
    os.replace(partial, out)
    return out


def _read_marker_partial(partial: Path) -> dict[str, Any] | None:
    try:
        return json.loads((partial / "partial.json").read_text())
    except (OSError, ValueError):
        return None


def _render_all(jobs: list[tuple[VideoPlan, str, int, int]], workers: int | None) -> None:
    from tqdm.auto import tqdm

    if not jobs:
        return
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = tqdm(total=len(jobs), desc="TinyCook videos", unit="video", disable=None)
    try:
        if workers == 1:
            for job in jobs:
                _render_job(job)
                bar.update(1)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork starts at once; workers touch only numpy and PyAV, never torch.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            for _ in pool.map(_render_job, jobs, chunksize=1):
                bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------------------
# Reading a set back
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentLabel:
    """The hidden labels of one step (one YouCook2 segment)."""

    video_id: str
    segment_id: int
    start: float
    end: float
    subset: str
    recipe_type: str
    verb: str
    noun: str
    scene: str
    mood: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_json(data_dir: str | os.PathLike, name: str) -> Any:
    path = Path(data_dir) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: generate the data set first, e.g. "
            f"`vbert-lab data tinycook --out {Path(data_dir)} --videos 24` or vbert_lab.tinycook.ensure_dataset")
    return json.loads(path.read_text())


def load_annotations(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``annotations.json`` (YouCook2 layout). Taught in ``00_welcome_and_setup``."""
    return _load_json(data_dir, "annotations.json")


def load_captions(data_dir: str | os.PathLike) -> dict[str, dict[str, list]]:
    """The narration, ``{id: {"start", "end", "text"}}`` (HowTo100M layout). Taught in ``00_welcome_and_setup``."""
    return _load_json(data_dir, "captions.json")


def load_labels(data_dir: str | os.PathLike) -> list[SegmentLabel]:
    """The hidden labels of every segment, in video then segment order. Taught in ``00_welcome_and_setup``."""
    raw = _load_json(data_dir, "labels.json")
    rows = []
    for video_id, video in raw["videos"].items():
        for seg in video["segments"]:
            rows.append(SegmentLabel(video_id=video_id, segment_id=seg["id"], start=seg["segment"][0],
                                     end=seg["segment"][1], subset=video["subset"], recipe_type=video["recipe_type"],
                                     verb=seg["verb"], noun=seg["noun"], scene=seg["scene"], mood=seg["mood"]))
    return rows


def load_caption_labels(data_dir: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Per video, what each caption is: ``{"kind": "step"|"off_topic", "step", "timing"}``, in caption order."""
    return {vid: video["captions"] for vid, video in _load_json(data_dir, "labels.json")["videos"].items()}


def video_path(data_dir: str | os.PathLike, video_id: str) -> Path:
    return Path(data_dir) / "videos" / f"{video_id}.mp4"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def cli_main(args: argparse.Namespace | list[str] | None = None) -> int:
    """``vbert-lab data tinycook --out DIR --videos N --seed S [--workers W] [--size PX] [--force]``."""
    if not isinstance(args, argparse.Namespace):
        from .cli import build_parser

        argv = ["data", "tinycook", *(sys.argv[1:] if args is None else args)]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # argparse has printed its message
            return int(exit_.code or 0)
    try:
        out = ensure_dataset(args.out, videos=args.videos, seed=args.seed, size=args.size,
                             workers=args.workers, force=args.force)
    except TinyCookError as err:
        print(f"vbert-lab data tinycook: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"vbert-lab data tinycook: error: could not write {args.out}: {err}; "
              "check the path and free space, then run again (finished videos are kept)", file=sys.stderr)
        return 1
    marker = _read_marker(out) or {}
    print(f"TinyCook: {args.videos} videos ({marker.get('subsets')}) in {out}")
    return 0


__all__ = [
    "VERBS", "INGREDIENTS", "NOUNS", "SCENES", "MOODS", "LABEL_KINDS", "LOOK_ALIKE", "SOUND_ALIKE",
    "RECIPE_TYPES", "INGREDIENT_LOOKS", "VERB_SOUNDS", "FPS", "AUDIO_RATE", "TinyCookError",
    "VideoPlan", "StepPlan", "CaptionPlan", "SegmentLabel", "plan_world", "render_video", "render_audio",
    "ensure_dataset", "is_complete", "load_annotations", "load_captions", "load_labels",
    "load_caption_labels", "video_path", "annotations_dict", "captions_dict", "labels_dict", "cli_main",
]
