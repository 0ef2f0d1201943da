"""Small generated datasets shared by tests (no external data needed)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from rayrec.platform.config import load_config
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess
from rayrec.platform.preprocessing.synthetic import generate_events, write_rsc15_style


def synthetic_sessions(root: Path, n_events: int = 6000, n_items: int = 300, seed: int = 0) -> str:
    """Preprocess a synthetic session log into ``root/data`` (session_time split, 1 test day)."""
    src = write_rsc15_style(generate_events(n_events, n_items=n_items, seed=seed, days=6), root / "ev.tsv")
    cfg = load_config(
        PreprocessJobConfig, None,
        ["source.format=rsc15_prepared", f"source.path={src}", "split.test_days=1", "split.valid_days=1",
         f"output.path={root / 'data'}", "ray.use_ray=false", "filter.min_item_support=2"],
    )
    run_preprocess(cfg, log=lambda _m: None)
    return str(root / "data")


def synthetic_user_sessions(root: Path, n_events: int = 3000, n_items: int = 100, n_users: int = 40,
                            seed: int = 5) -> str:
    """Preprocess a synthetic log with user ids (a ``user_id,item_id,ts`` CSV: sessions cut at
    30-minute gaps, 1 test day) into ``root/data``, with an ``item_meta.parquet`` giving every
    item one ``genre`` (item id mod 5)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec.platform.preprocessing.synthetic import write_user_csv

    src = write_user_csv(generate_events(n_events, n_items=n_items, n_users=n_users, seed=seed, days=6),
                         root / "ev.csv")
    out = root / "data"
    cfg = load_config(
        PreprocessJobConfig, None,
        ["source.format=csv", f"source.path={src}", "source.ts_format=unix_s",
         "source.column_map={user_id: user_id, item_id: item_id, ts: ts}", "split.test_days=1",
         "split.valid_days=1", f"output.path={out}", "ray.use_ray=false", "filter.min_item_support=2"],
    )
    run_preprocess(cfg, log=lambda _m: None)
    items = pd.read_parquet(out / "items.parquet")
    meta = pd.DataFrame({"item_id": items["item_id"].astype(str),
                         "genre": [f"g{int(x) % 5}" for x in items["item_id"]]})
    pq.write_table(pa.Table.from_pandas(meta, preserve_index=False), out / "item_meta.parquet")
    return str(out)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for heads, dashboards, Serve)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout: float, what: str, every: float = 0.2,
             ignore: tuple[type[BaseException], ...] = ()):
    """``pred()``'s first truthy value, polled every ``every`` s until ``timeout`` s have passed
    (then ``TimeoutError`` naming ``what`` and the last value or ignored error). Exceptions of
    the ``ignore`` types count as "not yet" (a server still starting)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = pred()
            if last:
                return last
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(every)
