"""The ``vbert-lab`` command: ``vbert-lab --help`` lists what it does.

Each sub-command is a thin wrapper: the work lives in the module it names, and
imports happen only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_course(args: argparse.Namespace) -> int:
    from .course import main as course_main

    return course_main(args)


def _cmd_check_notebooks(args: argparse.Namespace) -> int:
    from .course import check_notebooks_cli

    return check_notebooks_cli(args.paths)


def _cmd_env(args: argparse.Namespace) -> int:
    from .envcheck import environment_report

    return 0 if environment_report(print_table=True, as_json=args.json) else 1


def _cmd_tinycook(args: argparse.Namespace) -> int:
    from .tinycook import cli_main

    return cli_main(args)


def _cmd_probe(args: argparse.Namespace) -> int:
    import json
    import warnings

    from .video import VideoError, probe

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = probe(args.path, backend=args.backend or None)
    except (VideoError, OSError, ValueError) as err:
        print(f"vbert-lab probe: {err}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(info.as_dict()))
    else:
        for key, value in info.as_dict().items():
            print(f"{key:18} {value}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from .features import ExtractError, WeightsNotFound, extract, extractor_weights_for

    try:
        weights = args.weights or extractor_weights_for(args.extractor, args.videos)
        summary = extract(args.videos, args.out, args.extractor, weights=weights, backend=args.backend or None,
                          device=args.device or None, batch_size=args.batch_size, workers=args.workers,
                          audio=args.audio, retry_failed=args.retry_failed, overwrite=args.overwrite)
    except (ExtractError, WeightsNotFound, ValueError) as err:
        print(f"vbert-lab extract: error: {err}", file=sys.stderr)
        return 2
    print(summary)
    for video, error in sorted(summary.failed.items()):
        print(f"failed: {video}: {error}", file=sys.stderr)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import default_train_config, ensure_pretrained, load_pretrain_config, pretrain, run_dir

    try:
        spec = load_pretrain_config(args.config)
        run, settings = spec["run"], spec["settings"]
        config = default_train_config(run, **spec["train"])
        if spec["out"]:
            _, result = pretrain(run, settings, config, spec["out"])
            out, checkpoint = spec["out"], result.checkpoint
        else:
            done = ensure_pretrained(run, settings=settings, config=config)
            out, checkpoint = run_dir(run, settings.regime_set, settings.fraction), done.checkpoint
    except (FileNotFoundError, ValueError) as err:
        print(f"vbert-lab pretrain: error: {err}", file=sys.stderr)
        return 2
    print(f"pretrained {settings.regime_set} on {settings.fraction:.0%} of the training videos: {out}")
    print(f"checkpoint: {checkpoint}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vbert-lab", description="VideoBERT Lab: the course and its tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("course", help="execute every course notebook headless (papermill) and write summary.json")
    p.add_argument("--profile", default="", help="smoke | cpu | gpu (default: gpu where CUDA is present, else cpu)")
    p.add_argument("--device", default="", help="torch device (default: cuda where present, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="TinyCook seed and training seed (default 0)")
    p.add_argument("--out", default="build/course", help="folder for executed notebooks and summary.json")
    p.add_argument("--data-dir", default="", help="TinyCook folder (default data/tinycook-<profile>-s<seed>)")
    p.add_argument("--notebooks", default="notebooks", help="folder of the numbered notebooks")
    p.add_argument("--only", nargs="*", default=None, metavar="NN", help="run only these notebooks (by number or name)")
    p.add_argument("--force", action="store_true", help="regenerate the data and derived artifacts instead of reusing them")
    p.add_argument("--timeout", type=int, default=None, help="seconds a single cell may run (default: no limit)")
    p.add_argument("--no-data", action="store_true", help="do not make TinyCook first (notebooks make it on first use)")
    p.add_argument("--prepare-only", action="store_true", help="write parameterised copies without executing them (make test)")
    p.set_defaults(func=_cmd_course)

    p = sub.add_parser("check-notebooks", help="check the course's notebook conventions (no outputs, parameters cell...)")
    p.add_argument("paths", nargs="*", default=["notebooks"], help="notebooks or folders (default: notebooks)")
    p.set_defaults(func=_cmd_check_notebooks)

    p = sub.add_parser("env", help="environment check: OK or FAIL per dependency, and the device")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("probe", help="frame count, fps, duration, size and audio of a video file")
    p.add_argument("path", help="video file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--backend", default="", help="decord | pyav | torchcodec (default: decord where installed)")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("extract", help="clip features of a folder of videos: sharded safetensors + manifest, resumable")
    p.add_argument("--videos", required=True, help="folder of video files")
    p.add_argument("--out", required=True, help="output folder (re-running resumes it; finished videos are skipped)")
    p.add_argument("--extractor", default="tinycook3d", help="tinycook3d (offline default) | s3d (Kinetics-400 weights)")
    p.add_argument("--weights", default="", help="weights file (tinycook3d: default <videos>/../derived/extractor/tinycook3d.safetensors; 'random' for an untrained net)")
    p.add_argument("--backend", default="", help="decord | pyav | torchcodec (default: decord where installed)")
    p.add_argument("--device", default="", help="torch device (default: cuda where present, else cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="clips per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core, at most 4)")
    p.add_argument("--audio", action="store_true", help="also write per-clip audio features (log-mel mean and std)")
    p.add_argument("--retry-failed", action="store_true", help="try the files recorded as failed again")
    p.add_argument("--overwrite", action="store_true", help="replace features made with other settings in --out")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("pretrain", help="pretrain VideoBERT on TinyCook from a JSON config (data settings + TrainConfig)")
    p.add_argument("--config", required=True, help='JSON file: {"data": {profile, seed, regime_set, fraction, ...}, "train": {TrainConfig fields}, "out": DIR}')
    p.set_defaults(func=_cmd_pretrain)

    data = sub.add_parser("data", help="make or prepare data sets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    p = data_sub.add_parser("tinycook", help="generate the TinyCook world (videos, annotations, narration)")
    p.add_argument("--out", required=True, help="folder to create (must not be an existing file)")
    p.add_argument("--videos", type=_positive_int, required=True, help="number of videos (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: CPU count)")
    p.add_argument("--size", type=_positive_int, default=128, help="frame width and height in pixels (default 128)")
    p.add_argument("--force", action="store_true", help="replace an existing data set")
    p.set_defaults(func=_cmd_tinycook)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
