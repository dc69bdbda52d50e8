"""HowTo100M: a caption subset chosen by task, in the layout TinyCook's ``captions.json`` uses.

    python data_scripts/howto100m.py metadata --root data/howto100m
    python data_scripts/howto100m.py subset --root data/howto100m --match salad soup --limit 500 --out data/howto-cooking

The full caption file is several GB of JSON: ``subset`` reads it once and keeps
only the chosen videos. Card: data_scripts/cards/howto100m.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from _common import OFFLINE_NOTE, Manifest, download, safe_extract, sha256_of, write_json

# As published on the project page (https://www.di.ens.fr/willow/research/howto100m/); check them before use.
METADATA_URL = "https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/HowTo100M.zip"
CAPTIONS_URL = "https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/raw_caption.zip"


def fetch_metadata(root: Path, urls: tuple[str, ...] = (METADATA_URL, CAPTIONS_URL)) -> Manifest:
    manifest = Manifest(root / "manifest.json")
    for url in urls:
        archive = download(url, root / Path(url).name)
        safe_extract(archive, root)
        manifest.record(Path(url).name, "ok", url=url, sha256=sha256_of(archive))
    return manifest


def _find(root: Path, *names: str) -> Path:
    for name in names:
        found = sorted(root.rglob(name))
        if found:
            return found[0]
    raise FileNotFoundError(f"none of {names} under {root}: run the `metadata` step first or pass the file")


def make_subset(meta_csv: Path, task_ids: Path, captions: Path, out: Path, match: list[str] | None = None,
                category: str | None = None, limit: int | None = None) -> dict[str, int]:
    """Keep the videos whose task name contains a ``match`` word (or whose category is ``category``)."""
    from vbert_lab.datasets import normalise_caption, read_howto100m_captions, read_howto100m_videos

    words = [w.lower() for w in (match or [])]
    chosen = []
    for video in read_howto100m_videos(meta_csv, task_ids):
        name = (video.task_name or "").lower()
        if (words and any(w in name for w in words)) or (category and category in (video.category_1, video.category_2)):
            chosen.append(video)
        elif not words and not category:
            chosen.append(video)
    chosen.sort(key=lambda v: (v.task_id, v.rank, v.video_id))  # best-ranked videos of each task first
    if limit is not None:
        chosen = chosen[:limit]
    found = read_howto100m_captions(captions, video_ids=[v.video_id for v in chosen])
    manifest = Manifest(out / "manifest.json")
    layout = {}
    for video in chosen:
        lines = found.get(video.video_id)
        if not lines:
            manifest.entries[video.video_id] = {"status": "missing", "error": f"no captions in {captions.name}"}
            continue
        layout[video.video_id] = {"start": [c.start for c in lines], "end": [c.end for c in lines],
                                  "text": [normalise_caption(c.text) for c in lines]}
        manifest.entries[video.video_id] = {"status": "ok", "task_id": video.task_id, "task": video.task_name}
    write_json(out / "captions.json", layout)
    with (out / "videos.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "task_id", "task_name", "category_1", "category_2", "rank"])
        for video in chosen:
            if video.video_id in layout:
                writer.writerow([video.video_id, video.task_id, video.task_name, video.category_1,
                                 video.category_2, video.rank])
    manifest.save()
    return {"chosen": len(chosen), "with_captions": len(layout)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=OFFLINE_NOTE)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("metadata", help="download the metadata and caption archives", epilog=OFFLINE_NOTE)
    p.add_argument("--root", type=Path, required=True)
    p = sub.add_parser("subset", help="captions.json and videos.csv for the chosen tasks (offline)")
    p.add_argument("--root", type=Path, required=True, help="folder with HowTo100M_v1.csv, task_ids.csv, caption.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--match", nargs="*", default=None, help="words a task name must contain (any of them)")
    p.add_argument("--category", default=None, help='e.g. "Food and Entertaining"')
    p.add_argument("--limit", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.step == "metadata":
            manifest = fetch_metadata(args.root)
            print(manifest.keys_with("ok"))
        else:
            counts = make_subset(_find(args.root, "HowTo100M_v1.csv"), _find(args.root, "task_ids.csv"),
                                 _find(args.root, "raw_caption.json", "caption.json"), args.out,
                                 args.match, args.category, args.limit)
            print(counts)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"howto100m: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
