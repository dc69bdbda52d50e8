"""Readers for the annotation layouts the course uses, on TinyCook and on real corpora alike.

Taught in ``06_text_and_multimodal_sequences`` (narration and steps, aligned by
time); the action-recognition splits are used in ``09_fine_tuning``.

- YouCook2: ``{"database": {id: {"duration", "subset", "recipe_type",
  "annotations": [{"id", "segment": [start, end], "sentence"}], "video_url"?}}}``
  (``youcookii_annotations_trainval.json``; the test file has no sentences).
- HowTo100M captions: ``{id: {"start": [...], "end": [...], "text": [...]}}``
  (``caption.json`` / ``raw_caption.json``), or a folder of ``<id>.csv`` files
  with the columns ``start,end,text``; video metadata ``HowTo100M_v1.csv`` and
  the task names ``task_ids.csv``.
- UCF101 (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``) and
  HMDB51 (``<class>_test_split<N>.txt`` with 1 = train, 2 = test, 0 = unused).

Every reader checks the structure it relies on and names the file and the
entry when something is off, so that a truncated download is caught here.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SUBSETS = ("training", "validation", "testing")


class AnnotationError(ValueError):
    """An annotation file does not have the layout its reader expects."""


@dataclass(frozen=True)
class Segment:
    """One annotated step of a YouCook2-layout video."""

    video_id: str
    segment_id: int
    start: float
    end: float
    sentence: str | None  # None in YouCook2's test file, which withholds sentences
    subset: str
    recipe_type: str
    duration: float | None


@dataclass(frozen=True)
class Caption:
    """One ASR line of a HowTo100M-layout narration."""

    video_id: str
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class HowToVideo:
    video_id: str
    category_1: str
    category_2: str
    rank: int
    task_id: str
    task_name: str | None


@dataclass(frozen=True)
class ActionClip:
    """One labelled clip of an action-recognition corpus (UCF101, HMDB51)."""

    path: str  # relative to the corpus's video folder: "<class>/<file>"
    label: str
    label_index: int
    split: str  # "train" | "test"


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: check the path, or fetch the data with data_scripts/")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path} is not valid JSON ({err}); the download may be truncated: fetch it again") from None


def _youcook2_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("youcookii_annotations_*.json")) or [path / "annotations.json"]
        return [f for f in files if f.is_file()] or [path / "annotations.json"]
    return [path]


def read_youcook2_annotations(path: str | os.PathLike, subset: str | None = None) -> list[Segment]:
    """Every segment of a YouCook2-layout file (or of every ``youcookii_annotations_*.json`` in a folder).

    Works on TinyCook's ``annotations.json`` and on YouCook2's own files.
    ``subset`` keeps only ``training``, ``validation`` or ``testing``.
    Taught in ``06_text_and_multimodal_sequences``.
    """
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset={subset!r}: choose one of {', '.join(SUBSETS)}")
    segments: list[Segment] = []
    for file in _youcook2_files(Path(path)):
        raw = _load_json(file)
        database = raw.get("database") if isinstance(raw, dict) else None
        if not isinstance(database, dict):
            raise AnnotationError(f"{file}: no top-level \"database\" object; is this a YouCook2 annotation file?")
        for video_id, video in database.items():
            where = f"{file}: video {video_id!r}"
            if not isinstance(video, dict) or not isinstance(video.get("annotations"), list):
                raise AnnotationError(f"{where} has no \"annotations\" list")
            if subset is not None and video.get("subset") != subset:
                continue
            duration = video.get("duration")
            for k, ann in enumerate(video["annotations"]):
                seg = ann.get("segment") if isinstance(ann, dict) else None
                if not (isinstance(seg, list) and len(seg) == 2 and all(isinstance(x, (int, float)) for x in seg)):
                    raise AnnotationError(f"{where}, annotation {k}: \"segment\" must be [start, end] in seconds")
                if seg[1] < seg[0]:
                    raise AnnotationError(f"{where}, annotation {k}: segment {seg} ends before it starts")
                segments.append(Segment(
                    video_id=str(video_id), segment_id=int(ann.get("id", k)), start=float(seg[0]), end=float(seg[1]),
                    sentence=ann.get("sentence"), subset=str(video.get("subset", "")),
                    recipe_type=str(video.get("recipe_type", "")),
                    duration=float(duration) if duration is not None else None))
    return segments


def read_youcook2_recipe_types(path: str | os.PathLike) -> dict[str, str]:
    """YouCook2's ``label_foodtype.csv`` (``id,name`` per line) as ``{id: name}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it ships in YouCook2's annotation archive")
    names = {}
    with path.open(newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip() or not row[0].strip().isdigit():
                continue  # blank lines and a header, if any
            if len(row) < 2:
                raise AnnotationError(f"{path}, line {line_no}: expected `id,name`, got {row}")
            names[row[0].strip()] = ",".join(row[1:]).strip()
    return names


def _captions_from_columns(video_id: str, columns: dict, where: str) -> list[Caption]:
    try:
        starts, ends, texts = columns["start"], columns["end"], columns["text"]
    except (KeyError, TypeError):
        raise AnnotationError(f"{where}: needs \"start\", \"end\" and \"text\" lists") from None
    if not (len(starts) == len(ends) == len(texts)):
        raise AnnotationError(f"{where}: start/end/text have different lengths "
                              f"({len(starts)}, {len(ends)}, {len(texts)})")
    return [Caption(video_id, float(s), float(e), str(t)) for s, e, t in zip(starts, ends, texts)]


def read_howto100m_captions(path: str | os.PathLike, video_ids: Iterable[str] | None = None) -> dict[str, list[Caption]]:
    """Captions per video from a HowTo100M ``caption.json`` or a folder of ``<id>.csv`` files.

    Works on TinyCook's ``captions.json`` too. ``video_ids`` keeps only those
    videos. Taught in ``06_text_and_multimodal_sequences``.
    """
    path = Path(path)
    wanted = None if video_ids is None else set(video_ids)
    result: dict[str, list[Caption]] = {}
    if path.is_dir():
        for file in sorted(path.glob("*.csv")):
            if wanted is not None and file.stem not in wanted:
                continue
            with file.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"start", "end", "text"} <= set(reader.fieldnames):
                    raise AnnotationError(f"{file}: expected the columns start,end,text, got {reader.fieldnames}")
                rows = list(reader)
            columns = {k: [r[k] for r in rows] for k in ("start", "end", "text")}
            result[file.stem] = _captions_from_columns(file.stem, columns, str(file))
        if not result and wanted is None:
            raise FileNotFoundError(f"{path}: no <video_id>.csv caption files in this folder")
        return result
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected an object {{video_id: {{start, end, text}}}}")
    for video_id, columns in raw.items():
        if wanted is not None and video_id not in wanted:
            continue
        result[video_id] = _captions_from_columns(video_id, columns, f"{path}: video {video_id!r}")
    return result


_NOT_SPEECH = re.compile(r"\[[^\]]*\]")  # "[Music]", "[Applause]" in YouTube ASR
_PUNCTUATION = re.compile(r"[^\w\s']+")


def normalise_caption(text: str) -> str:
    """Lower case, no ``[Music]`` tags, no punctuation, one space between words (TinyCook's style)."""
    text = _PUNCTUATION.sub(" ", _NOT_SPEECH.sub(" ", text.lower()))
    return " ".join(text.split())


def captions_between(captions: list[Caption], start: float, end: float) -> list[Caption]:
    """The captions that overlap ``[start, end)`` seconds: the narration of one segment."""
    return [c for c in captions if c.end > start and c.start < end]


def read_howto100m_videos(meta_csv: str | os.PathLike, task_ids: str | os.PathLike | None = None) -> list[HowToVideo]:
    """HowTo100M's ``HowTo100M_v1.csv`` (video_id, category_1, category_2, rank, task_id), with task names."""
    meta_csv = Path(meta_csv)
    if not meta_csv.is_file():
        raise FileNotFoundError(f"{meta_csv} not found: it ships in HowTo100M's metadata archive")
    names = read_howto100m_task_names(task_ids) if task_ids is not None else {}
    videos = []
    with meta_csv.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"video_id", "category_1", "category_2", "rank", "task_id"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise AnnotationError(f"{meta_csv}: expected the columns {sorted(needed)}, got {reader.fieldnames}")
        for row in reader:
            task = row["task_id"].strip()
            videos.append(HowToVideo(row["video_id"], row["category_1"], row["category_2"],
                                     int(float(row["rank"] or 0)), task, names.get(task)))
    return videos


def read_howto100m_task_names(path: str | os.PathLike) -> dict[str, str]:
    """HowTo100M's ``task_ids.csv``: ``task_id<TAB>task name`` per line (a comma also works)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it ships in HowTo100M's metadata archive")
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t", 1) if "\t" in line else line.split(",", 1)
        if len(parts) == 2 and parts[0].strip().isdigit():
            names[parts[0].strip()] = parts[1].strip()
    return names


def read_ucf101_split(split_dir: str | os.PathLike, split: int = 1) -> list[ActionClip]:
    """UCF101's recognition split ``split`` (1-3) from ``ucfTrainTestlist/``. Used in ``09_fine_tuning``."""
    split_dir = Path(split_dir)
    class_file = split_dir / "classInd.txt"
    if not class_file.is_file():
        raise FileNotFoundError(f"{class_file} not found: unpack UCF101TrainTestSplits-RecognitionTask.zip there")
    classes: dict[str, int] = {}
    for line in class_file.read_text().splitlines():
        if line.strip():
            index, name = line.split()
            classes[name] = int(index) - 1
    clips = []
    for part in ("train", "test"):
        file = split_dir / f"{part}list0{split}.txt"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: UCF101 has splits 1-3")
        for line_no, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split()[0]
            label = rel.split("/")[0]
            if label not in classes:
                raise AnnotationError(f"{file}, line {line_no}: class {label!r} is not in classInd.txt")
            clips.append(ActionClip(rel, label, classes[label], part))
    return clips


def read_hmdb51_split(split_dir: str | os.PathLike, split: int = 1) -> list[ActionClip]:
    """HMDB51's split ``split`` (1-3) from ``<class>_test_split<N>.txt`` files. Used in ``09_fine_tuning``."""
    split_dir = Path(split_dir)
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise FileNotFoundError(f"{split_dir}: no *_test_split{split}.txt files; unpack test_train_splits.rar there")
    labels = sorted(f.name[: -len(f"_test_split{split}.txt")] for f in files)
    clips = []
    for file in files:
        label = file.name[: -len(f"_test_split{split}.txt")]
        for line_no, line in enumerate(file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in {"0", "1", "2"}:
                raise AnnotationError(f"{file}, line {line_no}: expected `<video>.avi 0|1|2`, got {line!r}")
            if parts[1] == "0":
                continue  # not used in this split
            clips.append(ActionClip(f"{label}/{parts[0]}", label, labels.index(label),
                                    "train" if parts[1] == "1" else "test"))
    return clips
