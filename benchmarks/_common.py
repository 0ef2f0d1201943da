"""Shared helpers for the benchmarks: a table printer and machine description."""

from __future__ import annotations

import datetime as _dt
import os
import platform as _stdlib_platform


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
