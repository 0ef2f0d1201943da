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


def session_arrays(root: str, name: str, context: bool = False, event_names: tuple[str, ...] | None = None):
    """A split as :class:`SessionArrays` (sessions by start time, events by time).

    ``context``: also the per-event ``event`` (codes into ``event_names``, default this split's
    types), ``value`` and ``user_id`` columns (models with context inputs)."""
    from rayrec.models.session_parallel import SessionArrays

    cols = ["session_id", "item_idx", "ts"] + (["event", "value", "user_id"] if context else [])
    df = load_split(root, name, cols)
    if df.empty:
        raise DataError(f"{root}: split {name!r} is empty")
    return SessionArrays.from_frame(df, event_names) if context else SessionArrays.from_frame(df)


ITEM_META_FILE = "item_meta.parquet"


def load_item_features(root: str, columns: list[str] | tuple[str, ...], item_ids: list[str],
                       train_counts, where: str = "model.item_features"):
    """The categorical item metadata of ``root/item_meta.parquet`` (``item_id`` + one column
    per field; a list-valued column is multi-valued) as
    :class:`rayrec.models.session_parallel.ItemFeatures` over ``item_ids``.

    Each field's vocabulary holds the values of items seen in training (``train_counts > 0``),
    ordered by first appearance in item-index order; id 0 = unknown (an item without a row, a
    null, a value no training item has). A missing file or column is an error naming
    ``where``, the column and the columns present; a duplicate ``item_id`` is an error naming
    its rows."""
    import numpy as np

    from rayrec.models.session_parallel import ItemFeatures

    fs, path = _fs(root)
    f = f"{path.rstrip('/')}/{ITEM_META_FILE}"
    try:
        meta = pq.read_table(f, filesystem=fs).to_pandas()
    except (FileNotFoundError, OSError):
        raise DataError(f"{where}={list(columns)} needs item metadata, but {root} has no {ITEM_META_FILE} "
                        "(set source.item_metadata in the preprocess config)") from None
    if "item_id" not in meta.columns:
        raise DataError(f"{root}/{ITEM_META_FILE}: no item_id column; columns present: {list(meta.columns)}")
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        present = [c for c in meta.columns if c != "item_id"]
        raise DataError(f"{where}: column(s) {missing} not in {root}/{ITEM_META_FILE}; "
                        f"columns present: {present}")
    meta["item_id"] = meta["item_id"].astype(str)
    dup = meta["item_id"].duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:5].tolist()
        raise DataError(f"{root}/{ITEM_META_FILE}: item_id {meta.loc[dup, 'item_id'].iloc[0]!r} listed more "
                        f"than once (rows {rows}); re-run preprocess (it quarantines duplicates)")
    by_id = meta.set_index("item_id")
    counts = np.asarray(train_counts)
    per_field, widths, sizes, unknown = [], [], [], {}
    for c in columns:
        col = by_id[c].reindex(item_ids)
        vals = [_as_values(v) for v in col.tolist()]  # per item: list of strings
        vocab: dict[str, int] = {}
        for i, vs in enumerate(vals):
            if counts[i] > 0:
                for v in vs:
                    vocab.setdefault(v, len(vocab) + 1)
        ids = [[vocab.get(v, 0) for v in vs] or [0] for vs in vals]
        ids = [sorted(set(x) - {0}) or [0] for x in ids]  # an unseen value adds no slot
        unknown[c] = sum(1 for x in ids if x == [0])
        width = max(len(x) for x in ids)
        m = np.full((len(item_ids), width), -1, dtype=np.int64)
        for i, x in enumerate(ids):
            m[i, : len(x)] = x
        per_field.append(m)
        widths.append(width)
        sizes.append(len(vocab) + 1)
    ids = np.concatenate(per_field, axis=1) if per_field else np.zeros((len(item_ids), 0), np.int64)
    slot_field = np.repeat(np.arange(len(columns), dtype=np.int64), widths)
    return ItemFeatures(tuple(columns), ids, slot_field, tuple(sizes), unknown)


def _as_values(v: Any) -> list[str]:
    """One metadata cell -> its values (a list/array cell is multi-valued; null -> none)."""
    import numpy as np

    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v if x is not None and not (isinstance(x, float) and x != x)]
    if v is None or (isinstance(v, float) and v != v):
        return []
    return [str(v)]
