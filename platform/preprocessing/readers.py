"""Readers: public log formats -> raw canonical frames.

A reader never drops a row silently.  It returns a :class:`RawFrame`: every data
line of the file either becomes a row of ``frame`` (all canonical columns as
*strings*, exactly as read, plus ``source_file`` and ``source_row``, the 1-based
physical line number) or a row of ``rejects`` with a ``reason`` (a truncated line,
a line with too many fields, bytes that are not UTF-8).  Parsing strings into typed
columns, and quarantining what does not parse, is the job of
:mod:`rayrec.platform.preprocessing.validate`, which knows each source's timestamp
format from ``RawFrame.ts_format``.

Formats (the canonical schema: docs/your_data.md):

- ``rsc15_prepared``: TSV with header ``SessionId ItemId Time`` (unix seconds, float).
- ``rsc15_raw``: ``yoochoose-clicks.dat``: ``session,timestamp(ISO),item,category`` no header.
- ``movielens``: ``u.data`` (TAB, no header), ``ratings.dat`` (``::``),
  ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).
- ``diginetica``: ``;``-separated views ``session_id;user_id;item_id;timeframe;eventdate``
  with ``NA`` for anonymous users.
- ``lastfm``: ``user_taggedartists.dat``: ``userID artistID tagID day month year`` (TAB).
- ``csv`` / ``parquet``: generic, with a column map onto the canonical names.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CANONICAL_RAW = ["user_id", "session_id", "item_id", "ts", "event", "value"]

TS_FORMATS = ("unix_s", "unix_ms", "iso", "date", "dmy")


class ReaderError(ValueError):
    """A file cannot be read as the declared format at all."""


@dataclass
class RawFrame:
    frame: pd.DataFrame  # CANONICAL_RAW as strings (None = missing) + source_file, source_row
    rejects: pd.DataFrame  # source_file, source_row, raw, reason
    ts_format: str
    has_sessions: bool
    notes: dict = field(default_factory=dict)

    @property
    def n_lines(self) -> int:
        return len(self.frame) + len(self.rejects)


def _reject_frame(rows: list[tuple[str, int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["source_file", "source_row", "raw", "reason"]).astype(
        {"source_file": "string", "source_row": "int64", "raw": "string", "reason": "string"}
    )


def _split_lines(
    path: Path, sep: str, n_fields: int, header: bool, min_fields: int | None = None
) -> tuple[list[list[str]], list[int], list[tuple[str, int, str, str]], list[str] | None]:
    """Split a delimited text file into field lists, robust to hostile bytes.

    Returns (rows, line_numbers, rejects, header_fields).  A line whose field count
    differs from ``n_fields`` (fewer than ``min_fields`` when given) is rejected as
    ``truncated line`` / ``too many fields``; a line that is not UTF-8 as
    ``invalid utf-8``.  Blank lines are skipped (they carry no record) but counted.
    """
    data = path.read_bytes()
    if not data.strip():
        raise ReaderError(f"{path}: file is empty")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    header_fields = None
    start = 0
    src = str(path)
    if header:
        try:
            header_line = lines[0].decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise ReaderError(f"{path}: header line is not UTF-8 ({exc})") from None
        header_fields = header_line.split(sep)
        start = 1
    rows: list[list[str]] = []
    numbers: list[int] = []
    rejects: list[tuple[str, int, str, str]] = []
    lo = n_fields if min_fields is None else min_fields
    for i in range(start, len(lines)):
        raw = lines[i]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            rejects.append((src, i + 1, raw.decode("utf-8", "replace"), "invalid utf-8"))
            continue
        fields = text.split(sep)
        if len(fields) < lo:
            rejects.append((src, i + 1, text, "truncated line"))
            continue
        if len(fields) > n_fields:
            rejects.append((src, i + 1, text, "too many fields"))
            continue
        if len(fields) < n_fields:
            fields = fields + [""] * (n_fields - len(fields))
        rows.append(fields)
        numbers.append(i + 1)
    if not rows and not rejects:
        raise ReaderError(f"{path}: no data rows")
    return rows, numbers, rejects, header_fields


def _fast_table(path: Path, sep: str, header: bool, n_fields: int) -> pa.Table | None:
    """Fast path with pyarrow's C++ CSV parser; None when the file needs the careful path."""
    invalid: list[int] = []

    def on_invalid(_row: object) -> str:
        invalid.append(1)
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                use_threads=True,
                autogenerate_column_names=True,
                skip_rows=1 if header else 0,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=sep,
                quote_char=False,
                invalid_row_handler=on_invalid,
                ignore_empty_lines=True,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(n_fields)},
                strings_can_be_null=False,
                check_utf8=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    if invalid or table.num_columns != n_fields:
        return None
    return table


def _read_delimited(
    path: Path, sep: str, n_fields: int, header: bool, names: list[str]
) -> tuple[pd.DataFrame, list[tuple[str, int, str, str]]]:
    """Read a delimited file into a string DataFrame with ``source_row`` line numbers.

    Clean files go through pyarrow's parser; a file with any malformed line falls back
    to the line-by-line path so every bad line is named.  Single-character separators
    only on the fast path (``::`` always takes the careful path).
    """
    if not path.is_file():
        raise ReaderError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ReaderError(f"{path}: file is empty")
    table = _fast_table(path, sep, header, n_fields) if len(sep) == 1 else None
    if table is not None:
        df = table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
        df.columns = names
        # pyarrow skips blank lines; line numbers are exact when the file has none.
        # Files with blank lines inside go through the careful path below.
        if len(df) == _count_data_lines(path, header):
            df["source_row"] = np.arange(len(df), dtype=np.int64) + (2 if header else 1)
            df["source_file"] = str(path)
            if len(df) == 0:
                raise ReaderError(f"{path}: no data rows")
            return df, []
    rows, numbers, rejects, _ = _split_lines(path, sep, n_fields, header)
    df = pd.DataFrame(rows, columns=names, dtype="string")
    df["source_row"] = np.asarray(numbers, dtype=np.int64)
    df["source_file"] = str(path)
    return df, rejects


def _count_data_lines(path: Path, header: bool) -> int:
    with path.open("rb") as fh:
        n = 0
        blank = False
        last = b""
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            n += chunk.count(b"\n")
            blank = blank or b"\n\n" in chunk or b"\n\r\n" in chunk
            last = chunk
        if last and not last.endswith(b"\n"):
            n += 1
    if blank:
        return -1
    return n - (1 if header else 0)


def _finish(
    df: pd.DataFrame,
    rejects: list[tuple[str, int, str, str]],
    ts_format: str,
    has_sessions: bool,
    event: str,
) -> RawFrame:
    for col in CANONICAL_RAW:
        if col not in df.columns:
            df[col] = pd.Series(pd.NA, index=df.index, dtype="string")
        else:
            df[col] = df[col].astype("string").str.strip()
            df.loc[df[col] == "", col] = pd.NA
    df["event"] = df["event"].fillna(event)
    out = df[CANONICAL_RAW + ["source_file", "source_row"]].reset_index(drop=True)
    return RawFrame(out, _reject_frame(rejects), ts_format, has_sessions)


def read_rsc15_prepared(path: Path, event: str = "click") -> RawFrame:
    df, rej = _read_delimited(path, "\t", 3, True, ["session_id", "item_id", "ts"])
    return _finish(df, rej, "unix_s", True, event)


def read_rsc15_raw(path: Path, event: str = "click") -> RawFrame:
    df, rej = _read_delimited(path, ",", 4, False, ["session_id", "ts", "item_id", "category"])
    return _finish(df, rej, "iso", True, event)


def read_movielens(path: Path, event: str = "rating") -> RawFrame:
    name = path.name
    if name.endswith(".csv"):
        df, rej = _read_delimited(path, ",", 4, True, ["user_id", "item_id", "value", "ts"])
    elif name.endswith(".dat"):
        df, rej = _read_delimited(path, "::", 4, False, ["user_id", "item_id", "value", "ts"])
    else:  # u.data and u1.base-style files
        df, rej = _read_delimited(path, "\t", 4, False, ["user_id", "item_id", "value", "ts"])
    return _finish(df, rej, "unix_s", False, event)


def read_diginetica(path: Path, event: str = "view") -> RawFrame:
    df, rej = _read_delimited(
        path, ";", 5, True, ["session_id", "user_id", "item_id", "timeframe", "ts"]
    )
    df.loc[df["user_id"] == "NA", "user_id"] = pd.NA
    # eventdate is a day; timeframe (ms since the session's first event) orders the
    # events within a day.  ts = date + timeframe keeps both.
    df["ts"] = df["ts"].astype("string") + "+" + df["timeframe"].astype("string")
    return _finish(df, rej, "date_plus_ms", True, event)


def read_lastfm(path: Path, event: str = "tag") -> RawFrame:
    """``user_taggedartists.dat``: one line per (user, artist, tag, day).

    The canonical record is "user tagged artist on that day"; a user applying several
    tags to one artist on one day gives several lines that differ only in ``tagID``.
    They are folded into one row whose ``value`` is the number of tags (the first
    line's number is kept as ``source_row``); ``notes["folded_tag_lines"]`` counts
    the lines folded, so the manifest accounts for every line.
    """
    df, rej = _read_delimited(
        path, "\t", 6, True, ["user_id", "item_id", "tag_id", "day", "month", "year"]
    )
    df["ts"] = (
        df["year"].astype("string") + "-" + df["month"].astype("string") + "-"
        + df["day"].astype("string")
    )
    keys = ["user_id", "item_id", "ts"]
    grouped = df.groupby(keys, sort=False, dropna=False)
    folded = grouped.agg(source_row=("source_row", "min"), value=("tag_id", "size"))
    folded = folded.reset_index()
    folded["value"] = folded["value"].astype("string")
    folded["source_file"] = str(path)
    folded = folded.sort_values("source_row", kind="stable")
    out = _finish(folded, rej, "dmy", False, event)
    out.notes["folded_tag_lines"] = int(len(df) - len(folded))
    return out


def file_columns(path: Path, sep: str = ",") -> list[str]:
    """The column names of a generic source: a Parquet file's schema or a CSV's header line."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return list(pq.read_schema(path).names)
    with path.open("rb") as fh:
        head = fh.readline(1 << 20)
    if not head.strip():
        raise ReaderError(f"{path}: file is empty (a CSV source needs a header line)")
    return head.decode("utf-8", "replace").rstrip("\r\n").split(sep)


def check_generic(path: Path, column_map: Mapping[str, str], sep: str = ",", where: str = "source") -> list[str]:
    """Check a generic source's ``column_map`` against the canonical names and the file's
    columns without reading the data (the job calls it before Ray starts); returns the
    file's columns.  Errors list the allowed canonical names and the file's columns."""
    from rayrec.platform.preprocessing.config import check_column_map

    cols = file_columns(path, sep)
    try:
        check_column_map(dict(column_map), f"{where}.column_map")
    except ValueError as exc:
        raise ReaderError(f"{exc}; the file {path} has columns {cols}") from None
    allowed = ", ".join(CANONICAL_RAW)
    absent = {canon: src for canon, src in column_map.items() if src not in cols}
    if absent:
        hint = "" if len(cols) > 1 or path.suffix == ".parquet" else f" (is the separator {sep!r} right? see source.sep)"
        raise ReaderError(
            f"{where}.column_map: {path} lacks column(s) "
            f"{', '.join(f'{s!r} (for {c})' for c, s in absent.items())}; the file has columns "
            f"{cols}{hint} (column_map maps canonical name -> file column; allowed canonical "
            f"names: {allowed})")
    return cols


def read_generic(
    path: Path,
    column_map: Mapping[str, str],
    ts_format: str = "unix_s",
    sep: str = ",",
    event: str = "interaction",
) -> RawFrame:
    """CSV (with header) or Parquet; ``column_map`` maps canonical name -> file column.

    One file column may feed several canonical names (``user_id`` and ``session_id`` both
    from the user column: one sequence per user)."""
    path = Path(path)
    cols = check_generic(path, column_map, sep)
    if path.suffix == ".parquet":
        table = pq.read_table(path, columns=sorted(set(column_map.values())))
        src_cols = {src: table[src].cast(pa.string()).to_pandas() for src in set(column_map.values())}
        df = pd.DataFrame({canon: src_cols[src] for canon, src in column_map.items()}).astype("string")
        df["source_row"] = np.arange(len(df), dtype=np.int64) + 1
        df["source_file"] = str(path)
        rej: list = []
    else:
        raw, rej = _read_delimited(path, sep, len(cols), True, [f"_c{i}" for i in range(len(cols))])
        pos = {c: i for i, c in reversed(list(enumerate(cols)))}  # first column of a repeated name
        df = pd.DataFrame({canon: raw[f"_c{pos[src]}"] for canon, src in column_map.items()})
        df["source_row"] = raw["source_row"]
        df["source_file"] = raw["source_file"]
    return _finish(df, rej, ts_format, "session_id" in column_map, event)


def read_source(fmt: str, path: str | Path, **kwargs) -> RawFrame:
    """Dispatch on the format name used in ``PreprocessJobConfig.source.format``."""
    path = Path(path)
    readers = {
        "rsc15_prepared": read_rsc15_prepared,
        "rsc15_raw": read_rsc15_raw,
        "movielens": read_movielens,
        "diginetica": read_diginetica,
        "lastfm": read_lastfm,
    }
    if fmt in readers:
        event = kwargs.get("event")
        return readers[fmt](path, event) if event else readers[fmt](path)
    if fmt in ("csv", "parquet"):
        return read_generic(path, **kwargs)
    raise ReaderError(f"source.format: unknown format {fmt!r}; allowed: {sorted(readers) + ['csv', 'parquet']}")


# ---- metadata tables ------------------------------------------------------------------


def read_movielens_items(path: Path) -> pd.DataFrame:
    """``u.item`` (pipe-separated, 19 genre flags) or ``movies.dat``/``movies.csv``."""
    path = Path(path)
    if path.name == "u.item":
        genres = [
            "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
            "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
            "Romance", "Sci-Fi", "Thriller", "War", "Western",
        ]
        text = path.read_bytes().decode("latin-1")
        rows = [line.split("|") for line in text.splitlines() if line.strip()]
        out = []
        for r in rows:
            flags = r[5:24]
            out.append((r[0], r[1], "|".join(g for g, f in zip(genres, flags) if f == "1")))
        return pd.DataFrame(out, columns=["item_id", "title", "category"]).astype("string")
    sep = "::" if path.suffix == ".dat" else ","
    text = path.read_bytes().decode("latin-1")
    if sep == ",":
        df = pd.read_csv(io.StringIO(text), dtype=str)
        df.columns = ["item_id", "title", "category"]
        return df.astype("string")
    rows = [line.split("::") for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["item_id", "title", "category"]).astype("string")


def read_movielens_users(path: Path) -> pd.DataFrame:
    """``u.user`` (id|age|gender|occupation|zip) or ``users.dat`` (id::gender::age::occ::zip)."""
    path = Path(path)
    text = path.read_bytes().decode("latin-1")
    if path.name == "u.user":
        rows = [line.split("|") for line in text.splitlines() if line.strip()]
        cols = ["user_id", "age", "gender", "occupation", "zip"]
    else:
        rows = [line.split("::") for line in text.splitlines() if line.strip()]
        cols = ["user_id", "gender", "age", "occupation", "zip"]
    return pd.DataFrame(rows, columns=cols).astype("string")


def read_diginetica_categories(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep=";", dtype=str)
    df.columns = ["item_id", "category"]
    return df.astype("string")
