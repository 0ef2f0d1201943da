"""Shared helpers for the benchmarks: a table printer, the machine description and the
prepared rsc15-100k data."""

from __future__ import annotations

import datetime as _dt
import os
import platform as _stdlib_platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {_stdlib_platform.system()}, no GPU" if not _has_cuda() else f"{os.cpu_count()} cores + CUDA"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def today() -> str:
    return _dt.date.today().isoformat()


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    head = " | ".join(c.ljust(widths[c]) for c in columns)
    sep = "-|-".join("-" * widths[c] for c in columns)
    body = [" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(["| " + head + " |", "|-" + sep + "-|", *("| " + b + " |" for b in body)])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def ensure_rsc15(root: Path) -> str:
    """``root`` holding rsc15-100k preprocessed by ``jobs/configs/preprocess_rsc15.yaml``
    (prepared in this process on the first call; the config reads ``../shared/data``
    relative to the repository root)."""
    if (root / "manifest.json").is_file():
        return str(root)
    from rayrec.platform.config import load_config
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess

    os.chdir(REPO)
    cfg = load_config(PreprocessJobConfig, REPO / "jobs/configs/preprocess_rsc15.yaml",
                      [f"output.path={root}", "ray.use_ray=false"])
    run_preprocess(cfg, log=lambda _m: None)
    return str(root)
