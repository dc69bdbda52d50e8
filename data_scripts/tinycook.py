"""Generate TinyCook, the course's synthetic world (same as `vbert-lab data tinycook`).

    python data_scripts/tinycook.py --out data/tinycook-cpu-s0 --videos 160 --seed 0

Needs no network. Card: data_scripts/cards/tinycook.md; world card: vbert_lab/tinycook.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vbert_lab.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["data", "tinycook", *sys.argv[1:]]))
