"""From ``date_windows`` splits to the CSR batches of the daily model (seed 000, section 3.1).

A preprocess output with ``split.name: date_windows`` holds, per window pair, the input
events ``<prefix>_x`` and the output events ``<prefix>_y`` (``train``: X = [dx, dxy) ->
Y = [dxy, dyz); ``test``: XY = [dx, dyz) -> Z = [dyz, dz); ``valid_*``: the same shifted
back ``valid_shift_days``).  :func:`load_windows` turns one pair into :class:`UserWindows`:
per user (one row), the set of input products with their age ``days_ago`` in days
relative to the *end of the input window* (eq. 5's reference date: ``dxy`` for training,
``dyz`` for test and predictions), and the set of output products.

Catalog clipping (section 3.1): ``catalog_size = P`` keeps the P most purchased products of
the input windows (``items.parquet``'s counts, ``clip_catalog``) and renumbers them 0..P-1
by decreasing popularity; purchases of clipped products are dropped from X and Y.

Documented behaviour for edge cases:

* repeated (user, product) purchases keep the most recent one (the smallest age);
* a user whose input becomes empty (e.g. all inputs clipped) stays a row with an empty
  input: the model then scores from its biases alone (a popularity-like ranking); users
  with no row at all in the input split are simply absent (the store has no entry for them);
* an input event after the window end (negative age) is an error naming the split;
* ``catalog_size`` above the number of items is an error (no silent padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rayrec.models.daily_nn import SparseBatch, clip_catalog
from rayrec.platform import data as pdata
from rayrec.platform.sections import SyntheticData

__all__ = [
    "DAY_MS",
    "Catalog",
    "DailyDataError",
    "UserWindows",
    "build_catalog",
    "build_windows",
    "catalog_for_items",
    "day_ms",
    "load_windows",
    "synthetic_windows",
    "window_bounds",
]

DAY_MS = 86_400_000


class DailyDataError(ValueError):
    """Daily-model input data that cannot be used (the message names the field or split)."""


def day_ms(d: date | str) -> int:
    """Midnight UTC of ``d`` in epoch milliseconds."""
    d = date.fromisoformat(d) if isinstance(d, str) else d
    return int((d - date(1970, 1, 1)).days) * DAY_MS


@dataclass(frozen=True)
class Catalog:
    """The model's product index: ``item_ids[j]`` is product ``j``; ``remap[old_idx] = j``
    (or -1 for a clipped product)."""

    item_ids: list[str]
    remap: np.ndarray  # (n_data_items,) int64

    @property
    def size(self) -> int:
        return len(self.item_ids)


def build_catalog(items: pd.DataFrame, catalog_size: int | None) -> Catalog:
    """Keep the ``catalog_size`` most purchased products (all when None), section 3.1."""
    n = len(items)
    ids = items["item_id"].astype(str).to_numpy()
    if catalog_size is None:
        return Catalog(list(ids), np.arange(n, dtype=np.int64))
    if catalog_size > n:
        raise DailyDataError(
            f"data.catalog_size={catalog_size} exceeds the {n} items of the data "
            "(set it to at most the item count, or null to keep all)"
        )
    keep = np.asarray(clip_catalog(items["count"].to_numpy(), catalog_size))  # (P,)
    remap = np.full(n, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size, dtype=np.int64)
    return Catalog([str(ids[i]) for i in keep], remap)


def catalog_for_items(items: pd.DataFrame, item_ids: Sequence[str]) -> Catalog:
    """Map a dataset's ``item_idx`` onto a trained model's product list (unknown -> -1)."""
    pos = {str(i): j for j, i in enumerate(item_ids)}
    remap = np.array([pos.get(str(i), -1) for i in items["item_id"]], dtype=np.int64)
    if not (remap >= 0).any():
        raise DailyDataError("no product of the data is in the model's catalog (wrong checkpoint?)")
    return Catalog([str(i) for i in item_ids], remap)


@dataclass
class UserWindows:
    """Per-user input (X with ages) and output (Y) purchase sets, CSR, one row per user."""

    user_ids: np.ndarray  # (U,) str
    x_offsets: np.ndarray  # (U+1,)
    x_items: np.ndarray  # (nnzX,) int64
    x_days: np.ndarray  # (nnzX,) float32, >= 0
    y_offsets: np.ndarray  # (U+1,)
    y_items: np.ndarray  # (nnzY,) int64
    n_items: int
    ref: str  # YYYY-MM-DD, end of the input window

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    def __len__(self) -> int:
        return self.n_users

    def batch(self, rows: np.ndarray | Sequence[int]) -> tuple[SparseBatch, SparseBatch]:
        """``(inputs with days_ago, targets)`` for the given user rows."""
        rows = np.asarray(rows, dtype=np.int64)
        xi, xo = _gather(self.x_offsets, rows)
        yi, yo = _gather(self.y_offsets, rows)
        inputs = SparseBatch(
            item_idx=torch.from_numpy(self.x_items[xi]),
            offsets=torch.from_numpy(xo),
            days_ago=torch.from_numpy(self.x_days[xi]),
        )
        targets = SparseBatch(item_idx=torch.from_numpy(self.y_items[yi]), offsets=torch.from_numpy(yo))
        return inputs, targets

    def x_lists(self) -> list[np.ndarray]:
        return [self.x_items[a:b] for a, b in zip(self.x_offsets[:-1], self.x_offsets[1:])]

    def y_lists(self) -> list[np.ndarray]:
        return [self.y_items[a:b] for a, b in zip(self.y_offsets[:-1], self.y_offsets[1:])]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Yield ``(rows, inputs, targets)`` over all users."""
        order = np.arange(self.n_users)
        if shuffle:
            order = np.random.default_rng(seed).permutation(self.n_users)
        for a in range(0, self.n_users, batch_size):
            rows = order[a : a + batch_size]
            yield (rows, *self.batch(rows))


def _gather(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the given CSR rows and the new offsets."""
    starts, ends = offsets[rows], offsets[rows + 1]
    lens = ends - starts
    new_off = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    if new_off[-1] == 0:
        return np.zeros(0, dtype=np.int64), new_off
    pos = np.repeat(starts - new_off[:-1], lens) + np.arange(new_off[-1])
    return pos.astype(np.int64), new_off


def _ts_ms(ts: pd.Series) -> np.ndarray:
    return pd.to_datetime(ts, utc=True).dt.as_unit("ms").astype("int64").to_numpy()


def _csr(user_codes: np.ndarray, items: np.ndarray, n_users: int, *extra: np.ndarray):
    order = np.lexsort((items, user_codes))
    counts = np.bincount(user_codes, minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return (offsets, items[order].astype(np.int64), *(e[order] for e in extra))


def build_windows(
    x_df: pd.DataFrame,
    y_df: pd.DataFrame | None,
    ref: str,
    catalog: Catalog,
    name: str = "windows",
) -> UserWindows:
    """CSR user windows from input / output event frames (``user_id, item_idx, ts``).

    ``ref`` (YYYY-MM-DD) is the end of the input window: ``days_ago = (ref - ts) / 1 day``.
    Users are the union of the input and output frames' users, sorted by id.
    """
    ref_ms = day_ms(ref)
    y_df = y_df if y_df is not None else x_df.iloc[:0]
    users = np.unique(np.concatenate([x_df["user_id"].astype(str).to_numpy(), y_df["user_id"].astype(str).to_numpy()]))

    def prep(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = df["item_idx"].to_numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= catalog.remap.size):
            raise DailyDataError(f"{name}: item_idx outside the item index (0..{catalog.remap.size - 1})")
        new = catalog.remap[idx] if idx.size else idx
        keep = new >= 0
        u = np.searchsorted(users, df["user_id"].astype(str).to_numpy()[keep])
        return u, new[keep], _ts_ms(df["ts"])[keep]

    xu, xi, xts = prep(x_df)
    age = (ref_ms - xts) / DAY_MS
    if age.size and age.min() < 0:
        raise DailyDataError(
            f"{name}: input events after the window end {ref} (latest "
            f"{pd.Timestamp(int(xts.max()), unit='ms', tz='UTC')}): windows in the wrong order?"
        )
    # one purchase per (user, item): the most recent (smallest age)
    if xu.size:
        o = np.lexsort((age, xi, xu))
        xu, xi, age = xu[o], xi[o], age[o]
        first = np.ones(xu.size, dtype=bool)
        first[1:] = (xu[1:] != xu[:-1]) | (xi[1:] != xi[:-1])
        xu, xi, age = xu[first], xi[first], age[first]
    x_off, x_items, x_days = _csr(xu, xi, users.size, age.astype(np.float32))
    yu, yi, _ = prep(y_df)
    if yu.size:
        pairs = np.unique(yu * np.int64(catalog.size) + yi)
        yu, yi = pairs // catalog.size, pairs % catalog.size
    y_off, y_items = _csr(yu, yi, users.size)
    return UserWindows(users.astype(str), x_off, x_items, x_days, y_off, y_items, catalog.size, str(ref))


def window_bounds(root: str, prefix: str) -> dict[str, str]:
    """``dx, dxy, dyz, dz`` of a split prefix from the manifest (``valid_*`` -> shifted)."""
    manifest = pdata.read_manifest(root)
    sp = manifest.get("split", {})
    if sp.get("name") != "date_windows":
        raise DailyDataError(f"{root}: split.name is {sp.get('name')!r}, the daily model needs date_windows")
    key = "valid_windows" if prefix.startswith("valid_") else "windows"
    return dict(sp["boundaries"][key])


def _input_end(root: str, prefix: str) -> str:
    b = window_bounds(root, prefix)
    base = prefix.removeprefix("valid_")
    return b["dxy"] if base == "train" else b["dyz"]


def read_split(root: str, name: str) -> pd.DataFrame:
    cols = ["user_id", "item_idx", "ts"]
    if name.endswith(".parquet"):
        return pd.read_parquet(Path(root) / name if not Path(name).is_absolute() else name, columns=cols)
    return pdata.load_split(root, name, cols)


def load_windows(
    root: str, prefix: str, catalog: Catalog, with_targets: bool = True, input_split: str | None = None
) -> UserWindows:
    """``<prefix>_x`` (ages relative to the input window end) and ``<prefix>_y``."""
    x = read_split(root, input_split or f"{prefix}_x")
    y = pdata.load_split(root, f"{prefix}_y", ["user_id", "item_idx", "ts"]) if with_targets else None
    if x.empty:
        raise DailyDataError(f"{root}: split {prefix}_x is empty (no user has purchases in the input window)")
    return build_windows(x, y, _input_end(root, prefix), catalog, name=f"{root}:{prefix}")


def load_catalog(root: str, catalog_size: int | None) -> Catalog:
    return build_catalog(pdata.load_items(root), catalog_size)


def synthetic_windows(cfg: SyntheticData, ref: str = "2020-01-01") -> UserWindows:
    """Random users with Zipf-like item popularity (benchmarks, the P = 1M demo)."""
    rng = np.random.default_rng(cfg.seed)
    U, P = cfg.n_users, cfg.n_items
    # popularity ~ 1 / rank: sample ranks by inverse CDF of a log-uniform distribution
    def draw(n: int) -> np.ndarray:
        return np.minimum((np.exp(rng.random(n) * math.log(P + 1)) - 1).astype(np.int64), P - 1)

    nx, ny = cfg.items_per_user, cfg.targets_per_user
    xu = np.repeat(np.arange(U), nx)
    xi = draw(U * nx)
    days = rng.integers(0, 365, U * nx).astype(np.float32)
    yu = np.repeat(np.arange(U), ny)
    yi = draw(U * ny)
    o = np.lexsort((xi, xu))
    x_off = np.arange(U + 1, dtype=np.int64) * nx
    pairs = np.unique(yu * np.int64(P) + yi)
    yu, yi = pairs // P, pairs % P
    y_off = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(yu, minlength=U), out=y_off[1:])
    users = np.array([f"u{i}" for i in range(U)])
    return UserWindows(users, x_off, xi[o], days[o], y_off, yi.astype(np.int64), P, ref)


def shifted(d: str, days: int) -> str:
    return (date.fromisoformat(d) + timedelta(days=days)).isoformat()
