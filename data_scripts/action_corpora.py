"""UCF101 and HMDB51 for fine-tuning (``09_fine_tuning``): fetch, unpack, and index one split.

    python data_scripts/action_corpora.py download --corpus ucf101 --root data/ucf101
    python data_scripts/action_corpora.py prepare --corpus ucf101 --root data/ucf101 --split 1 --out data/ucf101

``prepare`` writes ``<corpus>_split<N>.csv`` (path,label,label_index,split) for
the clips found on disk and records missing ones in ``manifest.json``.
Unpacking .rar archives needs ``unrar`` or ``7z``. Cards: data_scripts/cards/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import OFFLINE_NOTE, Manifest, download, extract_rar, safe_extract, sha256_of, write_action_index

# As published by the authors; checksums are not published, so the manifest records what was fetched.
CORPORA = {
    "ucf101": {
        "videos": "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
        "splits": "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
        "video_dir": "UCF-101",
        "split_dir": "ucfTrainTestlist",
    },
    "hmdb51": {
        "videos": "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar",
        "splits": "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar",
        "video_dir": "hmdb51_org",
        "split_dir": "testTrainMulti_7030_splits",
    },
}


def unpack(archive: Path, dest: Path) -> list[Path]:
    return extract_rar(archive, dest) if archive.suffix == ".rar" else safe_extract(archive, dest)


def fetch(corpus: str, root: Path) -> Manifest:
    info, manifest = CORPORA[corpus], Manifest(root / "manifest.json")
    for part in ("splits", "videos"):
        url = info[part]
        if manifest.status(f"archive:{part}") == "ok":
            continue  # resumable: unpacked on an earlier run
        try:
            archive = download(url, root / Path(url).name)
            unpack(archive, root if part == "splits" else root / info["video_dir"])
            manifest.record(f"archive:{part}", "ok", url=url, sha256=sha256_of(archive))
        except Exception as err:  # recorded, then re-raised: the user must see it
            manifest.record(f"archive:{part}", "failed", url=url, error=str(err))
            raise
    if corpus == "hmdb51":  # the video archive holds one .rar per class
        for inner in sorted((root / info["video_dir"]).glob("*.rar")):
            if manifest.status(f"class:{inner.stem}") != "ok":
                extract_rar(inner, inner.parent)
                manifest.record(f"class:{inner.stem}", "ok")
    return manifest


def _locate(root: Path, name: str) -> Path:
    found = [p for p in [root / name, *sorted(root.rglob(name))] if p.is_dir()]
    if not found:
        raise FileNotFoundError(f"no folder {name!r} under {root}: run the `download` step or unpack it there")
    return found[0]


def prepare(corpus: str, root: Path, out: Path, split: int = 1) -> tuple[Path, int]:
    from vbert_lab.datasets import read_hmdb51_split, read_ucf101_split

    info = CORPORA[corpus]
    split_dir = _locate(root, info["split_dir"])
    clips = (read_ucf101_split if corpus == "ucf101" else read_hmdb51_split)(split_dir, split)
    video_dir = _locate(root, info["video_dir"])
    index = out / f"{corpus}_split{split}.csv"
    kept = write_action_index(clips, video_dir, index, Manifest(out / "manifest.json"))
    return index, kept


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=OFFLINE_NOTE)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("download", help="download and unpack videos and splits", epilog=OFFLINE_NOTE)
    p.add_argument("--corpus", choices=sorted(CORPORA), required=True)
    p.add_argument("--root", type=Path, required=True)
    p = sub.add_parser("prepare", help="index one split of what is on disk (offline)")
    p.add_argument("--corpus", choices=sorted(CORPORA), required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", type=int, choices=[1, 2, 3], default=1)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.step == "download":
            print(fetch(args.corpus, args.root).keys_with("ok"))
        else:
            index, kept = prepare(args.corpus, args.root, args.out, args.split)
            print(f"{kept} clips indexed in {index}")
    except (OSError, ValueError, RuntimeError) as err:
        print(f"{args.corpus}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
