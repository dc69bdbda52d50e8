"""What every data script shares: resumable downloads, SHA-256 checks, a manifest, safe extraction.

The scripts bring real corpora to the layout TinyCook uses (``annotations.json``,
``captions.json``, ``videos/<id>.<ext>``) and mark the folder a prepared corpus
(``corpus.json``, ``vbert_lab.corpus``). Feature extraction (``vbert-lab
extract``, also under ``torchrun``), visual words, token files and pretraining
(``vbert-lab pretrain``) then run on it through ``vbert_lab.setup`` unchanged;
the zero-shot and fine-tuning lessons need TinyCook's hidden labels
(``10_efficiency_and_scale`` walks the path). Readers live in
``vbert_lab.datasets``; this file only fetches and unpacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

OFFLINE_NOTE = (
    "The download steps need the internet and cannot be tested offline here; every other step "
    "(reading, checking, extracting, preparing) is tested on small files in the real formats "
    "(tests/test_data_scripts.py). Downloads resume where they stopped; failures are recorded "
    "in manifest.json and skipped on the next run."
)


class ChecksumError(RuntimeError):
    """A downloaded file does not have the SHA-256 it should have."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the extraction folder."""


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60,
             opener: Callable[..., Any] = urllib.request.urlopen) -> Path:
    """Fetch ``url`` to ``dest``, resuming a ``.part`` file, and check its SHA-256 when one is known.

    A finished file with the right checksum is not fetched again. A wrong
    checksum keeps the file as ``<name>.bad`` (to inspect) and raises.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with opener(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        mode = "ab" if have and status == 206 else "wb"  # 200: the server ignored Range; start over
        with open(part, mode) as f:
            shutil.copyfileobj(response, f, 1 << 20)
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            bad = dest.with_name(dest.name + ".bad")
            os.replace(part, bad)
            raise ChecksumError(f"{url}: SHA-256 {got} but expected {sha256}; kept as {bad}. "
                                "Delete it and run again; if it persists the file changed upstream.")
    os.replace(part, dest)
    return dest


class Manifest:
    """``manifest.json``: what was fetched or prepared, and what failed and why (written atomically)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.entries = json.loads(self.path.read_text(encoding="utf-8")).get("entries", {})

    def status(self, key: str) -> str | None:
        return self.entries.get(key, {}).get("status")

    def record(self, key: str, status: str, **info: Any) -> None:
        self.entries[key] = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.save()

    def keys_with(self, status: str) -> list[str]:
        return sorted(k for k, v in self.entries.items() if v.get("status") == status)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"entries": self.entries}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def _checked_target(dest: Path, name: str) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {dest}; refusing to extract")
    target = (dest / pure).resolve()
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} resolves outside {dest}; refusing to extract")
    return target


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Unpack a zip or tar archive into ``dest``; refuses absolute paths, ``..`` and links that leave it.

    Every member is checked before anything is written, so a bad archive
    leaves ``dest`` untouched.
    """
    archive, dest = Path(archive), Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            targets = [_checked_target(dest, info.filename) for info in zf.infolist()]
            zf.extractall(dest)
        return targets
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            targets = []
            for m in members:
                targets.append(_checked_target(dest, m.name))
                if m.issym() or m.islnk():
                    link_base = (dest / m.name).parent if m.issym() else dest
                    link = (link_base / m.linkname).resolve()
                    if PurePosixPath(m.linkname).is_absolute() or (link != dest and dest not in link.parents):
                        raise UnsafeArchiveError(f"link {m.name!r} -> {m.linkname!r} leaves {dest}; refusing to extract")
                elif not (m.isfile() or m.isdir()):
                    raise UnsafeArchiveError(f"member {m.name!r} is a device or pipe; refusing to extract")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library checks too
                tf.extractall(dest, members=members, filter="data")
            else:
                tf.extractall(dest, members=members)
        return targets
    raise ValueError(f"{archive}: not a zip or tar archive (for .rar use extract_rar)")


def run(cmd: list[str], runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a program with an argument list, never through a shell (no quoting, no injection)."""
    if not isinstance(cmd, list) or not all(isinstance(part, str) for part in cmd):
        raise TypeError(f"commands are lists of strings, got {cmd!r}")
    return runner(cmd, shell=False, check=False, capture_output=True, text=True, timeout=timeout)


def extract_rar(archive: str | os.PathLike, dest: str | os.PathLike,
                runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[Path]:
    """Unpack a .rar with ``unrar`` or ``7z`` (whichever is installed), after checking every member's path."""
    archive, dest = Path(archive), Path(dest).resolve()
    if shutil.which("unrar"):
        listing, extract = ["unrar", "lb", str(archive)], ["unrar", "x", "-o+", "-y", str(archive), f"{dest}{os.sep}"]
    elif shutil.which("7z"):
        listing, extract = ["7z", "l", "-ba", "-slt", str(archive)], ["7z", "x", "-y", f"-o{dest}", str(archive)]
    else:
        raise FileNotFoundError("no rar extractor: install `unrar` or `7z` (p7zip-full), e.g. apt-get install unrar")
    listed = run(listing, runner)
    if listed.returncode != 0:
        raise RuntimeError(f"{listing[0]} could not list {archive}: {listed.stderr.strip()[-500:]}")
    names = [line[len("Path = "):] for line in listed.stdout.splitlines() if line.startswith("Path = ")] \
        if listing[0] == "7z" else [line for line in listed.stdout.splitlines() if line.strip()]
    targets = [_checked_target(dest, name) for name in names]
    dest.mkdir(parents=True, exist_ok=True)
    done = run(extract, runner)
    if done.returncode != 0:
        raise RuntimeError(f"{extract[0]} failed on {archive}: {done.stderr.strip()[-500:]}")
    return targets


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_action_index(clips, video_root: str | os.PathLike, out_csv: str | os.PathLike, manifest: Manifest) -> int:
    """Write ``path,label,label_index,split`` for clips whose video exists; record missing ones in ``manifest``."""
    import csv

    video_root, out_csv = Path(video_root), Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "label_index", "split"])
        for clip in clips:
            if (video_root / clip.path).is_file():
                writer.writerow([clip.path, clip.label, clip.label_index, clip.split])
                kept += 1
            else:
                manifest.entries[clip.path] = {"status": "missing", "error": f"not found under {video_root}"}
    os.replace(tmp, out_csv)
    manifest.save()
    return kept
