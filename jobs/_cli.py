"""Shared command-line handling: ``--config FILE`` plus dotted ``key=value`` overrides.

Only ``rayrec.jobs`` parses argv (DESIGN.md section 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel

from rayrec.platform.config import ConfigError, config_to_yaml, load_config

T = TypeVar("T", bound=BaseModel)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m rayrec.jobs.{prog}", description=description)
    p.add_argument("--config", "-c", help="YAML config file (defaults < file < overrides)")
    p.add_argument(
        "overrides", nargs="*", metavar="key.path=value",
        help="dotted overrides, values parsed as YAML (e.g. split.test_days=1)",
    )
    return p


def load(cls: type[T], args: argparse.Namespace, prog: str) -> T:
    """Load and print the resolved config; a bad config exits 2 with the key named."""
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        print(f"rayrec.jobs.{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"# rayrec.jobs.{prog}: resolved config\n{config_to_yaml(cfg)}", flush=True)
    return cfg


def argv_or_sys(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)
