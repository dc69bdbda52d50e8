"""How a notebook publishes a number: ``report.record("features.dim", 1024)``.

Under ``make course`` (or ``vbert-lab course``) each notebook runs with
``$VBERT_LAB_METRICS`` naming a JSON file; every recorded metric is merged
into it at once (atomically), and the course runner gathers these files into
``summary.json`` under ``metrics``. Run interactively, the metric is kept in
memory and shown. So no figure in the course is ever typed by hand: it is
recorded by the code that measured it. Taught in ``00_welcome_and_setup``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

METRICS_ENV = "VBERT_LAB_METRICS"
_KEY = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-<>]+)*$")

_recorded: dict[str, Any] = {}


def _plain(value: Any, key: str) -> Any:
    """Turn numpy/torch scalars and containers into JSON values, refusing NaN/inf."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value}: a NaN or inf result means the run went wrong")
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, key) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist(), key)
    raise TypeError(f"metric {key!r}: cannot record a {type(value).__name__}; record numbers, strings, lists or dicts")


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metrics file is not valid JSON ({err}); delete it and re-run the notebook") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metrics file should hold a JSON object; delete it and re-run the notebook")
    return data


def record(key: str, value: Any, *, quiet: bool = False) -> Any:
    """Publish ``value`` under the dotted name ``key`` and return it.

    ``key`` is a dotted name such as ``"zero_shot.cross_modal.verb_top1"``;
    ``value`` a number, string, bool, or a list/dict of them (numpy and torch
    scalars are converted). Recording the same key again replaces it.
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"metric key {key!r} should be a dotted name such as 'features.dim'")
    plain = _plain(value, key)
    _recorded[key] = plain
    target = os.environ.get(METRICS_ENV)
    if target:
        path = Path(target)
        data = load_metrics(path)
        data[key] = plain
        _write_json_atomic(path, data)
    if not quiet:
        print(f"[metric] {key} = {json.dumps(plain)}")
    return value


def recorded() -> dict[str, Any]:
    """Every metric recorded in this process so far."""
    return dict(_recorded)
