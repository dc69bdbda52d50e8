"""YouCook2: annotations, videos (via yt-dlp) and a TinyCook-layout folder for the course's pipeline.

    python data_scripts/youcook2.py annotations --root data/youcook2
    python data_scripts/youcook2.py videos --root data/youcook2 --subset validation --limit 50
    python data_scripts/youcook2.py prepare --root data/youcook2 --out data/youcook2-ready
    PROFILE=gpu DATA_DIR=data/youcook2-ready  # then notebooks 05-07, or vbert-lab pretrain --config

Card: data_scripts/cards/youcook2.md. YouCook2 has no ASR narration: ``prepare``
writes its step sentences as ``captions.json`` (replace it with ASR captions of
the same videos where you have them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from _common import OFFLINE_NOTE, Manifest, download, run, safe_extract, sha256_of, write_json

ANNOTATIONS_URL = "http://youcook2.eecs.umich.edu/static/YouCookII/youcookii_annotations_trainval.tar.gz"
ANNOTATIONS_SHA256 = None  # not published; the manifest records what was fetched
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
GONE_MARKERS = ("video unavailable", "private video", "has been removed", "account associated", "copyright")


def fetch_annotations(root: Path, url: str = ANNOTATIONS_URL) -> Path:
    manifest = Manifest(root / "manifest.json")
    archive = download(url, root / Path(url).name, sha256=ANNOTATIONS_SHA256)
    safe_extract(archive, root)
    found = sorted(root.rglob("youcookii_annotations_trainval.json"))
    if not found:
        raise FileNotFoundError(f"{archive} did not contain youcookii_annotations_trainval.json")
    manifest.record("annotations", "ok", url=url, sha256=sha256_of(archive), file=str(found[0].relative_to(root)))
    return found[0]


def find_annotation_file(root: Path) -> Path:
    found = sorted(root.rglob("youcookii_annotations_trainval.json"))
    if not found:
        raise FileNotFoundError(f"no youcookii_annotations_trainval.json under {root}: run the `annotations` step first")
    return found[0]


def downloaded_video(root: Path, video_id: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        path = root / "raw_videos" / f"{video_id}{ext}"
        if path.is_file():
            return path
    return None


def fetch_videos(root: Path, subset: str | None = None, limit: int | None = None, retry_failed: bool = False,
                 runner=None, video_format: str = "best[height<=360][ext=mp4]/best[height<=360]/best") -> Manifest:
    """Download each video once with yt-dlp; removed or failing ones are recorded and skipped next time."""
    from vbert_lab.datasets import read_youcook2_annotations

    manifest = Manifest(root / "manifest.json")
    video_ids = list(dict.fromkeys(s.video_id for s in read_youcook2_annotations(find_annotation_file(root), subset)))
    if limit is not None:
        video_ids = video_ids[:limit]
    (root / "raw_videos").mkdir(parents=True, exist_ok=True)
    for video_id in video_ids:
        key = f"video:{video_id}"
        if downloaded_video(root, video_id):
            if manifest.status(key) != "ok":
                manifest.record(key, "ok")
            continue
        if manifest.status(key) == "removed" or (manifest.status(key) == "failed" and not retry_failed):
            continue
        cmd = ["yt-dlp", "--no-playlist", "--no-progress", "-f", video_format,
               "-o", str(root / "raw_videos" / f"{video_id}.%(ext)s"), "--", f"https://www.youtube.com/watch?v={video_id}"]
        result = run(cmd, runner) if runner else run(cmd)
        if result.returncode == 0 and downloaded_video(root, video_id):
            manifest.record(key, "ok")
        else:
            message = (result.stderr or "").strip()[-400:]
            gone = any(marker in message.lower() for marker in GONE_MARKERS)
            manifest.record(key, "removed" if gone else "failed", error=message or f"exit {result.returncode}")
    return manifest


def prepare(root: Path, out: Path, link: bool = True, extractor: str = "s3d", weights: str | None = None) -> Path:
    """A prepared corpus for the course's pipeline (``vbert_lab.corpus``) from what was downloaded.

    Writes ``out/annotations.json`` (YouCook2 layout) for the downloaded videos,
    ``out/videos/<id>.<ext>``, ``out/captions.json`` (HowTo100M layout) from the
    step sentences where the folder has none yet (YouCook2 has no ASR narration:
    its annotators' sentences stand in, clean and on time, easier than ASR), and
    ``out/corpus.json`` naming the clip ``extractor`` (and its ``weights``).
    """
    from vbert_lab.corpus import write_corpus
    from vbert_lab.datasets import _load_json, normalise_caption, read_youcook2_annotations

    annotation_file = find_annotation_file(root)
    database = _load_json(annotation_file)["database"]
    (out / "videos").mkdir(parents=True, exist_ok=True)
    kept = {}
    for video_id, video in database.items():
        source = downloaded_video(root, video_id)
        if source is None:
            continue
        target = out / "videos" / source.name
        if not target.exists():
            if link:
                os.symlink(source.resolve(), target)
            else:
                shutil.copy2(source, target)
        kept[video_id] = {k: video[k] for k in ("duration", "subset", "recipe_type", "annotations") if k in video}
    write_json(out / "annotations.json", {"database": kept})
    if not (out / "captions.json").exists():
        captions: dict[str, dict[str, list]] = {}
        for seg in read_youcook2_annotations(out / "annotations.json"):
            if seg.sentence:  # the testing subset has no sentences
                rows = captions.setdefault(seg.video_id, {"start": [], "end": [], "text": []})
                rows["start"].append(seg.start)
                rows["end"].append(seg.end)
                rows["text"].append(normalise_caption(seg.sentence))
        write_json(out / "captions.json", captions)
    write_corpus(out, "youcook2", extractor=extractor, weights=weights)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=OFFLINE_NOTE)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("annotations", help="download and unpack the annotation archive", epilog=OFFLINE_NOTE)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--url", default=ANNOTATIONS_URL)
    p = sub.add_parser("videos", help="download videos with yt-dlp (resumable; failures recorded)", epilog=OFFLINE_NOTE)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--subset", choices=["training", "validation"], default=None)
    p.add_argument("--limit", type=int, default=None, help="at most this many videos")
    p.add_argument("--retry-failed", action="store_true", help="try failed (not removed) videos again")
    p = sub.add_parser("prepare", help="TinyCook-layout folder from what was downloaded (offline)")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--copy", action="store_true", help="copy videos instead of linking them")
    p.add_argument("--extractor", default="s3d", help="clip extractor named in corpus.json (default s3d, the paper's)")
    p.add_argument("--weights", default=None, help="its weights (default: the extractor's own, for s3d Kinetics-400)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.step == "annotations":
            print(fetch_annotations(args.root, args.url))
        elif args.step == "videos":
            manifest = fetch_videos(args.root, args.subset, args.limit, args.retry_failed)
            print({s: len(manifest.keys_with(s)) for s in ("ok", "failed", "removed")})
        else:
            print(prepare(args.root, args.out, link=not args.copy, extractor=args.extractor, weights=args.weights))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"youcook2: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
