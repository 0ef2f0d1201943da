"""The preprocessing pipeline: read -> validate -> sessionize -> filter -> index -> split -> write.

Ray Data does the per-row and per-key work: the raw rows are hash-partitioned by
their session (or user) key into one block per partition and one vectorised
``map_batches(batch_size=None)`` task per block validates, removes exact duplicates
(they share the key, so a partition sees all copies) and sessionizes.  The global,
small-state steps (filters, item index, split boundaries) then run vectorised on the
gathered columns.  ``ray.use_ray=False`` runs the same functions in one process.

Output directory::

    <split>/part-00000.parquet ...   canonical schema + item_idx, sorted (session start, ts)
    items.parquet                    item_idx <-> item_id, training counts
    quarantine.parquet               every rejected row, raw, with `reason`
    manifest.json                    source, resolved config, counts per step, boundaries
    timings.json                     seconds per step (the only non-deterministic file)

Same input and config give byte-identical files (all but ``timings.json``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.platform.preprocessing import readers, steps
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.validate import (
    ACROSS_SOURCES,
    TsRange,
    ValidationFailed,
    check_bad_share,
    split_duplicates,
    validate_frame,
)
from rayrec.platform.schema import PROCESSED, SCHEMA_VERSION
from rayrec.platform.sections import resolve_use_ray

TYPED_COLUMNS = ["user_id", "session_id", "item_id", "event", "ts", "value", "source_file", "source_row"]
QUARANTINE_COLUMNS = [
    "source_file", "source_row", "reason", "user_id", "session_id", "item_id", "ts", "event", "value", "raw",
]

Log = Callable[[str], None]


def _day_ms(d: date) -> int:
    return int(pd.Timestamp(d, tz="UTC").value // 1_000_000)


def process_partition(
    raw: pd.DataFrame, ts_format: str, has_sessions: bool, ts_range: TsRange, gap_seconds: float,
    ties: str = "by_item",
) -> pd.DataFrame:
    """Validate + drop exact duplicates + sessionize one key partition.

    Returns one frame: good rows (``reason`` null, typed ``ts``/``value``) stacked on
    quarantined rows (``reason`` set, raw strings in ``raw_ts``/``raw_value``)."""
    raw = raw.drop(columns=["_pkey"], errors="ignore")
    good, bad = validate_frame(raw, ts_format, has_sessions, ts_range)
    good, dups = split_duplicates(good)
    good = steps.sessionize(good, gap_seconds, ties)
    good = good.assign(reason=pd.array([pd.NA] * len(good), dtype="string"))
    good["raw_ts"] = pd.array([pd.NA] * len(good), dtype="string")
    good["raw_value"] = pd.array([pd.NA] * len(good), dtype="string")
    bad = bad.rename(columns={"ts": "raw_ts", "value": "raw_value"})
    bad["ts"] = np.int64(-1)
    bad["value"] = np.float32("nan")
    dups = dups.assign(raw_ts=dups["ts"].astype("string"), raw_value=dups["value"].astype("string"))
    cols = TYPED_COLUMNS + ["reason", "raw_ts", "raw_value", "_split", "_src"]
    frames = [f.reindex(columns=cols) for f in (good, bad, dups)]
    out = pd.concat(frames, ignore_index=True)
    out["_src"] = out["_src"].fillna(0)
    return out.astype(
        {
            "user_id": "string", "session_id": "string", "item_id": "string", "event": "string",
            "ts": "int64", "value": "float32", "source_file": "string", "source_row": "int64",
            "reason": "string", "raw_ts": "string", "raw_value": "string", "_split": "string",
            "_src": "int64",
        }
    )


def _partition_key(raw: pd.DataFrame, has_sessions: bool) -> pd.Series:
    key = raw["session_id"] if has_sessions else raw["user_id"]
    return key.fillna("").astype("string")


def _run_partitions(
    raw: pd.DataFrame, cfg: PreprocessJobConfig, ts_format: str, has_sessions: bool, log: Log
) -> pd.DataFrame:
    ts_range = TsRange(
        min_s=_day_ms(cfg.validation.min_ts) / 1000, max_s=_day_ms(cfg.validation.max_ts) / 1000
    )
    kwargs = dict(
        ts_format=ts_format, has_sessions=has_sessions, ts_range=ts_range,
        gap_seconds=cfg.sessionize.gap_minutes * 60.0, ties=cfg.sessionize.ts_ties,
    )
    if not cfg.ray.use_ray:
        return process_partition(raw, **kwargs)
    import ray

    # Hash-partition by key in the driver (one vectorised hash), one block per key
    # partition, then one map_batches task per block.  Equivalent to
    # ds.repartition(n, keys=[key]) without the all-to-all shuffle, which costs ~15 s
    # of actor start-up on a 2-core machine.
    n = cfg.ray.partitions
    key = _partition_key(raw, has_sessions)
    part_id = (pd.util.hash_pandas_object(key, index=False).to_numpy() % np.uint64(n)).astype(np.int64)
    order = np.argsort(part_id, kind="stable")
    bounds = np.searchsorted(part_id[order], np.arange(n + 1))
    blocks = [raw.iloc[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    ds = ray.data.from_pandas(blocks).map_batches(
        process_partition, batch_format="pandas", batch_size=None, fn_kwargs=kwargs
    )
    parts = [p for p in ray.get(ds.to_pandas_refs()) if len(p)]
    log(f"  ray data: {len(parts)} partitions processed")
    if not parts:
        return process_partition(raw.iloc[:0], **kwargs)
    return pd.concat(parts, ignore_index=True)


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    cols = {
        "user_id": pa.array(df["user_id"].astype(object).where(df["user_id"].notna(), None), pa.string()),
        "session_id": pa.array(df["session_id"].astype(object).where(df["session_id"].notna(), None), pa.string()),
        "item_id": pa.array(df["item_id"].astype(object), pa.string()),
        "ts": pa.array(df["ts"].to_numpy(dtype=np.int64), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "event": pa.array(df["event"].astype(object), pa.string()).dictionary_encode(),
        "value": pa.array(
            df["value"].to_numpy(dtype=np.float32), pa.float32(),
            mask=np.isnan(df["value"].to_numpy(dtype=np.float32)),
        ),
        "item_idx": pa.array(df["item_idx"].to_numpy(dtype=np.int32), pa.int32()),
    }
    return pa.table(cols).cast(PROCESSED)


def _write_split(out: Path, name: str, df: pd.DataFrame, shard_rows: int, ties: str = "by_item") -> list[str]:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    df = steps.sort_canonical(df, ties)
    files = []
    n_shards = max(1, -(-len(df) // shard_rows))
    for i in range(n_shards):
        part = df.iloc[i * shard_rows : (i + 1) * shard_rows]
        path = d / f"part-{i:05d}.parquet"
        pq.write_table(_to_arrow(part), path, compression="zstd")
        files.append(str(path.relative_to(out)))
    return files


def _stats(df: pd.DataFrame) -> dict[str, int]:
    return {
        "events": int(len(df)),
        "sessions": int(df["session_id"].nunique()),
        "users": int(df["user_id"].nunique()),
        "items": int(df["item_id"].nunique()),
    }


def _file_digest(path: str) -> dict[str, Any]:
    p = Path(path)
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": h.hexdigest()}


def _quarantine_table(bad: pd.DataFrame) -> pa.Table:
    q = pd.DataFrame(
        {
            "source_file": bad["source_file"].astype(object),
            "source_row": bad["source_row"].astype("int64"),
            "reason": bad["reason"].astype(object),
            "user_id": bad.get("user_id", pd.Series(dtype=object)).astype(object),
            "session_id": bad.get("session_id", pd.Series(dtype=object)).astype(object),
            "item_id": bad.get("item_id", pd.Series(dtype=object)).astype(object),
            "ts": bad.get("raw_ts", pd.Series(dtype=object)).astype(object),
            "event": bad.get("event", pd.Series(dtype=object)).astype(object),
            "value": bad.get("raw_value", pd.Series(dtype=object)).astype(object),
            "raw": bad.get("raw", pd.Series(dtype=object)).astype(object),
        }
    ).sort_values(["source_file", "source_row"], kind="stable")
    schema = pa.schema([(c, pa.int64() if c == "source_row" else pa.string()) for c in QUARANTINE_COLUMNS])
    return pa.Table.from_pandas(q.where(q.notna(), None), schema=schema, preserve_index=False).replace_schema_metadata(None)


def _inputs(cfg: PreprocessJobConfig) -> list[tuple[str | None, str, Any, str]]:
    """``(split name or None, path, source config, config key)`` of every input file, in the
    job's order (its position is the row's ``_src``: the file order of ``keep_file_order``
    and of duplicate removal)."""
    many = isinstance(cfg.source, list)
    out = []
    for i, src in enumerate(cfg.sources):
        where = f"source.{i}" if many else "source"
        if src.paths:
            out += [(name, p, src, f"{where}.paths.{name}") for name, p in src.paths.items()]
        else:
            out.append((None, src.path, src, f"{where}.path"))
    return out


def load_previous_index(spec: str) -> pd.DataFrame:
    """``output.item_index_from``: an ``items.parquet`` or a directory holding one."""
    p = Path(spec)
    f = p / "items.parquet" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"output.item_index_from: {f} does not exist (give a previous preprocess "
                         "output directory or its items.parquet)")
    items = pq.read_table(f).to_pandas()
    missing = [c for c in ("item_idx", "item_id") if c not in items.columns]
    if missing:
        raise ValueError(f"output.item_index_from: {f} has no column(s) {missing}; not an items.parquet")
    idx = items["item_idx"].to_numpy()
    if not np.array_equal(np.sort(idx), np.arange(len(items))) or items["item_id"].duplicated().any():
        raise ValueError(f"output.item_index_from: {f} is not a dense index (item_idx 0..{len(items) - 1}, "
                         "unique item_id)")
    return items.sort_values("item_idx").reset_index(drop=True).assign(
        item_id=lambda d: d["item_id"].astype(str))


def decide_ray(cfg: PreprocessJobConfig, log: Log = print) -> PreprocessJobConfig:
    """``ray.use_ray: auto`` resolved by the size of the input files (``ray.auto_max_mb``)."""
    if cfg.ray.use_ray != "auto":
        return cfg
    mb = sum(Path(path).stat().st_size for _s, path, _src, _w in _inputs(cfg) if Path(path).is_file()) / 2**20
    use = resolve_use_ray("auto", cfg.ray.address, mb, cfg.ray.auto_max_mb, "MB of input", log)
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"use_ray": use})})


def preflight(cfg: PreprocessJobConfig) -> pd.DataFrame | None:
    """What can be checked without reading the data, before Ray starts: every input file
    exists, generic sources' column maps fit their files' columns, ``output.item_index_from``
    is a dense index.  Returns that previous index (None when not set)."""
    for _split, path, src, where in _inputs(cfg):
        if not Path(path).is_file():
            raise readers.ReaderError(f"{where}: {path} does not exist")
        if src.format in ("csv", "parquet"):
            readers.check_generic(Path(path), src.column_map, src.sep, where=where.rsplit(".path", 1)[0])
    return load_previous_index(cfg.output.item_index_from) if cfg.output.item_index_from else None


def run_preprocess(cfg: PreprocessJobConfig, log: Log = print) -> dict[str, Any]:
    """Run the whole job; returns the manifest (also written to ``manifest.json``)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    counts: dict[str, Any] = {}
    previous_index = preflight(cfg)  # read before output.path may be replaced
    cfg = decide_ray(cfg, log)

    # ---- read ----------------------------------------------------------------
    inputs = _inputs(cfg)
    raws, rejects, notes = [], [], {}
    ts_formats, sessions = [], []
    for src_i, (split_name, path, src, where) in enumerate(inputs):
        kwargs: dict[str, Any] = {}
        if src.format in ("csv", "parquet"):
            kwargs = dict(column_map=src.column_map, ts_format=src.ts_format, sep=src.sep)
        if src.event:
            kwargs["event"] = src.event
        rf = readers.read_source(src.format, path, **kwargs)
        log(f"read {path}: {len(rf.frame)} rows, {len(rf.rejects)} malformed lines")
        ts_formats.append(rf.ts_format)
        sessions.append((where, rf.has_sessions))
        raws.append(rf.frame.assign(_split=split_name, _src=np.int64(src_i), _ts_format=rf.ts_format))
        for k, v in rf.notes.items():
            notes[k] = notes.get(k, 0) + v
        rejects.append(rf.rejects)
    if len({h for _, h in sessions}) > 1:
        raise ValueError(
            "source: the sources disagree on sessions: "
            + ", ".join(f"{w} {'has session ids' if h else 'is sessionized by gap'}" for w, h in sessions)
            + "; map session_id in every generic source or in none")
    has_sessions = sessions[0][1]
    ts_format = ts_formats[0]
    raw = pd.concat(raws, ignore_index=True)
    if len(set(ts_formats)) == 1:
        raw = raw.drop(columns="_ts_format")
    rejects_df = pd.concat(rejects, ignore_index=True)
    n_lines = len(raw) + len(rejects_df) + sum(notes.values())
    counts["read"] = {"lines": int(n_lines), "rows": int(len(raw)), "malformed_lines": int(len(rejects_df)), **notes}
    timings["read"] = time.perf_counter() - t0

    # ---- validate + dedupe + sessionize (Ray Data, per key partition) ------------
    t = time.perf_counter()
    processed = _run_partitions(raw, cfg, ts_format, has_sessions, log)
    is_bad = processed["reason"].notna().to_numpy()
    bad = pd.concat([processed.loc[is_bad], rejects_df.assign(raw=rejects_df["raw"])], ignore_index=True)
    good = processed.loc[~is_bad].drop(columns=["reason", "raw_ts", "raw_value"]).reset_index(drop=True)
    by_reason = {k: int(v) for k, v in sorted(bad["reason"].value_counts().items())}
    counts["quarantine"] = {"total": int(len(bad)), "by_reason": by_reason}
    counts["dedupe"] = {"exact_duplicates": by_reason.get("exact duplicate", 0),
                        "across_sources": by_reason.get(ACROSS_SOURCES, 0), "sources": len(inputs)}
    log(f"validate: {len(good)} good rows, {len(bad)} quarantined {by_reason}")
    counts["ts_ties"] = _ts_ties(good, cfg, log)
    timings["validate_sessionize"] = time.perf_counter() - t

    out = Path(cfg.output.path)
    if out.exists():
        if not cfg.output.overwrite:
            raise FileExistsError(f"output.path {out} exists and output.overwrite is false")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pq.write_table(_quarantine_table(bad), out / "quarantine.parquet", compression="zstd")
    check_bad_share(n_lines, bad.assign(source_file=bad["source_file"].astype(str)), cfg.validation.max_bad_fraction,
                    what=", ".join(str(p) for _, p, _, _ in inputs))

    # ---- value filter, item filters ------------------------------------------
    t = time.perf_counter()
    if cfg.filter.value_above is not None:
        keep = good["value"].to_numpy() > cfg.filter.value_above
        counts["filter_value_above"] = {"dropped": int((~keep).sum()), "threshold": cfg.filter.value_above}
        good = good.loc[keep].reset_index(drop=True)
    f = cfg.filter
    fkw = dict(
        min_session_length=f.min_session_length, min_item_support=f.min_item_support,
        min_events_per_user=f.min_events_per_user, max_events_per_user=f.max_events_per_user,
        max_rounds=f.max_rounds,
    )
    sp = cfg.split
    splits: dict[str, pd.DataFrame] = {}
    boundaries: dict[str, Any] = {}
    removed: dict[str, int] = {}
    src = cfg.sources[0]
    if sp.name == "predefined" and isinstance(cfg.source, list):
        raise ValueError("split.name=predefined takes one source with source.paths, not a list of sources")
    index_info: dict[str, Any] = {}

    def index(train_rows: pd.DataFrame) -> pd.DataFrame:
        if previous_index is None:
            return steps.build_item_index(train_rows)
        items, n_new = steps.extend_item_index(previous_index, train_rows)
        index_info.update({"from": str(cfg.output.item_index_from), "kept": int(len(previous_index)),
                           "appended": n_new})
        log(f"item index: {len(previous_index)} items kept from {cfg.output.item_index_from}, "
            f"{n_new} new appended")
        return items

    def restrict(name: str, df: pd.DataFrame, items: pd.DataFrame, min_len: int) -> pd.DataFrame:
        df, unknown = steps.attach_index(df, items)
        df, short = steps.drop_short_sessions(df, min_len)
        removed[f"{name}.unknown_items"] = unknown
        removed[f"{name}.short_sessions_events"] = short
        return df

    if sp.name == "predefined":
        if sp.index_split not in (src.paths or {}):
            raise ValueError(
                f"split.index_split={sp.index_split!r} is not one of source.paths: {sorted(src.paths or {})}"
            )
        base = good.loc[good["_split"] == sp.index_split]
        base, frep = steps.apply_filters(base, **fkw)
        items = index(base)
        splits[sp.index_split], _ = steps.attach_index(base, items)
        for name in src.paths:
            if name != sp.index_split:
                splits[name] = restrict(name, good.loc[good["_split"] == name], items, sp.min_test_session_length)
    elif sp.name == "session_time":
        good, frep = steps.apply_filters(good, **fkw)
        train, test, b = steps.session_time_split(good, sp.test_days, sp.test_fraction)
        items = index(train)
        splits["train_full"], _ = steps.attach_index(train, items)
        splits["test"] = restrict("test", test, items, sp.min_test_session_length)
        boundaries["test_from"] = _iso_ms(b)
        if sp.valid_days is not None:
            tr, va, vb = steps.session_time_split(train, sp.valid_days, None)
            tr_items = set(tr["item_id"].unique())
            splits["train_tr"], _ = steps.attach_index(tr, items)
            va = va.loc[va["item_id"].isin(tr_items)]
            splits["train_valid"] = restrict("train_valid", va, items, sp.min_test_session_length)
            boundaries["valid_from"] = _iso_ms(vb)
    elif sp.name == "date_windows":
        good, frep = steps.apply_filters(good, **fkw)
        ts = good["ts"].to_numpy()
        lo, hi = _day_ms(sp.dx), _day_ms(sp.dz)
        if ts.size == 0 or hi <= ts.min() or lo > ts.max():
            raise ValueError(
                f"split windows [{sp.dx}, {sp.dz}) lie outside the data "
                f"({_iso_ms(int(ts.min()))} .. {_iso_ms(int(ts.max()))})" if ts.size else "no data"
            )
        shift = timedelta(days=sp.valid_shift_days)
        sets = {
            "": (sp.dx, sp.dxy, sp.dyz, sp.dz),
            "valid_": (sp.dx - shift, sp.dxy - shift, sp.dyz - shift, sp.dz - shift),
        }
        parts: dict[str, pd.DataFrame] = {}
        for prefix, (a, b_, c, d) in sets.items():
            w = steps.date_windows_split(
                good, _day_ms(a), _day_ms(b_), _day_ms(c), _day_ms(d), sp.min_input_events, sp.min_output_events
            )
            for k, v in w.items():
                parts[prefix + k] = v
            boundaries[prefix + "windows"] = {"dx": str(a), "dxy": str(b_), "dyz": str(c), "dz": str(d)}
        input_rows = good.loc[(ts >= _day_ms(sp.dx)) & (ts < _day_ms(sp.dyz))]
        items = index(input_rows)
        for k, v in parts.items():
            splits[k] = restrict(k, v, items, 1)
    else:  # user_holdout
        good, frep = steps.apply_filters(good, **fkw)
        parts = steps.user_holdout_split(good, sp.valid_fraction, sp.holdout_test_fraction, sp.seed)
        items = index(parts["train"])
        splits["train"], _ = steps.attach_index(parts["train"], items)
        for name in ("valid", "test"):
            known, unknown = steps.attach_index(parts[name], items)
            inp, tgt = steps.holdout_targets(known, sp.n_targets, cfg.sessionize.ts_ties)
            removed[f"{name}.unknown_items"] = unknown
            removed[f"{name}.users_without_history_events"] = len(known) - len(inp) - len(tgt)
            splits[f"{name}_input"], splits[f"{name}_target"] = inp, tgt
    counts["filter"] = {"rounds": frep.rounds, "fixed_point": frep.fixed_point, "dropped": frep.dropped}
    counts["removed_after_split"] = removed
    timings["filter_index_split"] = time.perf_counter() - t

    # ---- write ---------------------------------------------------------------
    t = time.perf_counter()
    files: dict[str, list[str]] = {}
    split_stats: dict[str, Any] = {}
    for name in sorted(splits):
        df = splits[name]
        files[name] = _write_split(out, name, df, cfg.output.shard_rows, cfg.sessionize.ts_ties)
        split_stats[name] = _stats(df)
        if len(df):
            split_stats[name]["ts_min"] = _iso_ms(int(df["ts"].min()), full=True)
            split_stats[name]["ts_max"] = _iso_ms(int(df["ts"].max()), full=True)
    items_tbl = pa.Table.from_pandas(items, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(items_tbl, out / "items.parquet", compression="zstd")
    if src.item_metadata:  # -> item_meta.parquet (item-feature models), quarantine + counts
        from rayrec.platform.preprocessing.metadata import write_item_meta
        counts["item_meta"] = write_item_meta(src.item_metadata, src.format, out, log)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": {
            "format": [s_.format for s_ in cfg.source] if isinstance(cfg.source, list) else src.format,
            "files": [{"split": s, **({"source": w.rsplit(".path", 1)[0]} if isinstance(cfg.source, list) else {}),
                       **_file_digest(p)} for s, p, _, w in inputs],
        },
        "config": cfg.model_dump(mode="json"),
        "counts": counts,
        "split": {"name": sp.name, "boundaries": boundaries, "splits": split_stats, "files": files},
        "items": {"n_items": int(len(items)), "file": "items.parquet",
                  **({"index_from": index_info} if index_info else {})},
        "quarantine_file": "quarantine.parquet",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    (out / "timings.json").write_text(json.dumps(timings, indent=1), encoding="utf-8")
    for name in sorted(split_stats):
        s = split_stats[name]
        log(f"  {name:>16}: {s['events']:>9} events {s['sessions']:>8} sessions {s['items']:>7} items")
    log(f"wrote {out} in {timings['total']:.1f}s")
    return manifest


def _ts_ties(good: pd.DataFrame, cfg: PreprocessJobConfig, log: Log) -> dict[str, Any]:
    """Events tying with an earlier event of their session on ``ts`` (``sessionize.ts_ties``):
    counted for the manifest, a warning above ``ties_warn_fraction``, an error under
    ``ts_ties: error``."""
    sc = cfg.sessionize
    n_ties = steps.count_ts_ties(good)
    frac = n_ties / len(good) if len(good) else 0.0
    out = {"events": n_ties, "fraction": round(frac, 6), "policy": sc.ts_ties,
           "warn_fraction": sc.ties_warn_fraction, "warned": False}
    if n_ties and sc.ts_ties == "error":
        dup = good.duplicated(subset=["session_id", "ts"], keep=False).to_numpy()
        first = good.loc[dup].sort_values(["session_id", "ts", "_src", "source_row"], kind="stable").head(2)
        a, b = first.iloc[0], first.iloc[1]
        raise ValueError(
            f"sessionize.ts_ties=error: {n_ties} of {len(good)} events ({frac:.1%}) share their "
            f"session's ts with another event; first: file {a['source_file']} rows {int(a['source_row'])} "
            f"and {int(b['source_row'])} (session {a['session_id']}, ts {_iso_ms(int(a['ts']), full=True)}); "
            "set sessionize.ts_ties to by_item or keep_file_order to order them")
    if frac > sc.ties_warn_fraction:
        out["warned"] = True
        log(f"WARNING: {n_ties} of {len(good)} events ({frac:.1%}) tie with an earlier event of their "
            f"session on ts (above sessionize.ties_warn_fraction={sc.ties_warn_fraction}): the timestamps "
            f"are coarse (day-granular?); ties are ordered {sc.ts_ties.replace('_', ' ')} "
            "(sessionize.ts_ties: by_item | keep_file_order | error)")
    return out


def _iso_ms(ms: int, full: bool = False) -> str:
    ts = pd.Timestamp(ms, unit="ms", tz="UTC")
    return ts.isoformat() if full else ts.strftime("%Y-%m-%d")


__all__ = ["run_preprocess", "process_partition", "ValidationFailed"]
