"""Reading the preprocess job's output directory (local path or any pyarrow URI)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec.platform.schema import SCHEMA_VERSION


class DataError(ValueError):
    """The processed data is missing, empty or from another schema version."""


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


def read_manifest(root: str) -> dict[str, Any]:
    fs, path = _fs(root)
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/manifest.json") as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: no manifest.json (run rayrec.jobs.preprocess first): {exc}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{root}: schema_version {manifest.get('schema_version')} != {SCHEMA_VERSION}; re-run preprocess"
        )
    return manifest


def load_split(root: str, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    manifest = read_manifest(root)
    files = manifest["split"]["files"]
    if name not in files:
        raise DataError(f"{root}: no split {name!r}; splits: {sorted(files)}")
    fs, path = _fs(root)
    parts = [
        pq.read_table(f"{path.rstrip('/')}/{f}", filesystem=fs, columns=columns).to_pandas()
        for f in files[name]
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


@lru_cache(maxsize=8)
def _items_cached(root: str) -> pd.DataFrame:
    read_manifest(root)
    fs, path = _fs(root)
    return pq.read_table(f"{path.rstrip('/')}/items.parquet", filesystem=fs).to_pandas()


def load_items(root: str) -> pd.DataFrame:
    """``item_idx, item_id, count`` ordered by ``item_idx``."""
    return _items_cached(root).copy()


def session_arrays(root: str, name: str):
    """A split as :class:`SessionArrays` (sessions by start time, events by time)."""
    from rayrec.models.session_parallel import SessionArrays

    df = load_split(root, name, ["session_id", "item_idx", "ts"])
    if df.empty:
        raise DataError(f"{root}: split {name!r} is empty")
    return SessionArrays.from_frame(df)
