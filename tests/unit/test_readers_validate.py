"""Readers and validation on hostile inputs: nothing is lost silently."""

from __future__ import annotations

import pandas as pd
import pytest

from rayrec.platform.config import load_config
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess
from rayrec.platform.preprocessing.readers import ReaderError, read_source
from rayrec.platform.preprocessing.validate import ValidationFailed, validate_frame

HEADER = "SessionId\tItemId\tTime\n"


def _tsv(tmp_path, lines, name="clicks.tsv"):
    p = tmp_path / name
    p.write_bytes((HEADER + "".join(ln + "\n" for ln in lines)).encode("utf-8") if isinstance(lines[0], str) else lines)
    return p


def _good_lines(n, start_session=1):
    out = []
    for s in range(n // 4):
        for k in range(4):
            out.append(f"{start_session + s}\t{100 + (s + k) % 7}\t{1396310400 + s * 3600 + k * 60}.5")
    return out


def _run(tmp_path, path, *extra):
    cfg = load_config(
        PreprocessJobConfig, None,
        ["source.format=rsc15_prepared", f"source.path={path}", f"output.path={tmp_path / 'out'}",
         "ray.use_ray=false", "filter.min_item_support=1", "split.test_days=0.5", *extra],
    )
    return run_preprocess(cfg, log=lambda _m: None)


def test_truncated_and_long_lines_are_named(tmp_path):
    lines = _good_lines(400)
    lines[10] = "5\t101"  # truncated
    lines[20] = "6\t102\t1396310400\textra"  # too many fields
    rf = read_source("rsc15_prepared", _tsv(tmp_path, lines))
    assert len(rf.frame) == 398
    rej = rf.rejects.set_index("source_row")["reason"].to_dict()
    assert rej == {12: "truncated line", 22: "too many fields"}  # 1-based, header is line 1


def test_non_utf8_bytes_are_quarantined_not_fatal(tmp_path):
    body = HEADER.encode() + b"".join(ln.encode() + b"\n" for ln in _good_lines(400))
    body += b"9999\t\xff\xfe\x00bad\t1396310400\n"
    p = tmp_path / "x.tsv"
    p.write_bytes(body)
    rf = read_source("rsc15_prepared", p)
    assert rf.rejects["reason"].tolist() == ["invalid utf-8"]
    assert int(rf.rejects["source_row"].iloc[0]) == 402


def test_bad_values_each_get_a_reason():
    raw = pd.DataFrame(
        {
            "user_id": ["u1"] * 7,
            "session_id": ["1", "1", None, "2", "2", "2", "3"],
            "item_id": ["a", None, "b", "c", "d", "e", "f"],
            "ts": ["1396310400", "1396310400", "1396310400", "-5", "99999999999", "abc", "1396310400"],
            "event": ["click"] * 7,
            "value": [None, None, None, None, None, None, "nan"],
            "source_file": ["f"] * 7,
            "source_row": list(range(2, 9)),
        }
    ).astype({c: "string" for c in ["user_id", "session_id", "item_id", "ts", "event", "value", "source_file"]})
    good, bad = validate_frame(raw, "unix_s", has_sessions=True)
    assert len(good) == 1 and len(good) + len(bad) == len(raw)
    assert dict(zip(bad["source_row"], bad["reason"])) == {
        3: "missing item_id",
        4: "missing session_id and user_id",
        5: "negative ts",
        6: "ts out of range",
        7: "unparseable ts",
        8: "non-finite value",
    }


def test_quarantine_file_and_manifest_counts(tmp_path):
    lines = _good_lines(800)
    lines.append(lines[0])  # exact duplicate
    lines.append("77\t123\tNaN")  # NaN timestamp
    m = _run(tmp_path, _tsv(tmp_path, lines))
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert sorted(q["reason"]) == ["exact duplicate", "unparseable ts"]
    assert m["counts"]["quarantine"]["by_reason"] == {"exact duplicate": 1, "unparseable ts": 1}
    splits = m["split"]["splits"]
    removed = m["counts"]["removed_after_split"]
    # every line is accounted for: written, quarantined, or dropped by a counted step
    accounted = (
        splits["train_full"]["events"] + splits["test"]["events"] + 2
        + sum(m["counts"]["filter"]["dropped"].values())
        + sum(v for k, v in removed.items() if k.startswith("test."))
    )
    assert m["counts"]["read"]["lines"] == 802 == accounted


def test_garbage_file_fails_with_file_row_and_reason(tmp_path):
    lines = _good_lines(800)
    for i in range(0, 800, 10):  # 10 % garbage
        lines[i] = f"{i}\tx\tnot-a-time"
    p = _tsv(tmp_path, lines)
    with pytest.raises(ValidationFailed) as ei:
        _run(tmp_path, p)
    msg = str(ei.value)
    assert str(p) in msg and "row 2" in msg and "unparseable ts" in msg and "10.0%" in msg


def test_wrong_separator_fails_clearly(tmp_path):
    lines = [ln.replace("\t", ",") for ln in _good_lines(400)]
    p = tmp_path / "commas.tsv"
    p.write_text("SessionId,ItemId,Time\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValidationFailed, match="truncated line"):
        _run(tmp_path, p)


def test_far_future_and_negative_timestamps(tmp_path):
    lines = _good_lines(800)
    lines[5] = "3\t100\t32503680000"  # year 3000
    lines[6] = "3\t100\t-86400"
    m = _run(tmp_path, _tsv(tmp_path, lines))
    assert m["counts"]["quarantine"]["by_reason"] == {"negative ts": 1, "ts out of range": 1}


def test_empty_file_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.tsv"
    p.write_text("")
    with pytest.raises(ReaderError, match="empty"):
        read_source("rsc15_prepared", p)
    p.write_text(HEADER)
    with pytest.raises(ReaderError, match="no data rows"):
        read_source("rsc15_prepared", p)


def test_blank_lines_keep_exact_line_numbers(tmp_path):
    lines = _good_lines(8)
    p = tmp_path / "b.tsv"
    p.write_text(HEADER + lines[0] + "\n\n" + lines[1] + "\n" + "1\t2\n")
    rf = read_source("rsc15_prepared", p)
    assert rf.frame["source_row"].tolist() == [2, 4]
    assert rf.rejects["source_row"].tolist() == [5]


def test_generic_csv_column_map_errors(tmp_path):
    p = tmp_path / "g.csv"
    p.write_text("uid,iid,when\nu1,i1,1396310400\n")
    with pytest.raises(ReaderError, match="lacks column"):
        read_source("csv", p, column_map={"user_id": "uid", "item_id": "item", "ts": "when"})
    with pytest.raises(ReaderError, match="unknown canonical"):
        read_source("csv", p, column_map={"usr": "uid", "item_id": "iid", "ts": "when"})
    rf = read_source("csv", p, column_map={"user_id": "uid", "item_id": "iid", "ts": "when"})
    assert rf.frame[["user_id", "item_id", "ts"]].iloc[0].tolist() == ["u1", "i1", "1396310400"]
