"""``docs/your_data.md`` followed verbatim: every ```bash block of the page is parsed out of the
markdown and run, in order, as a subprocess (``python`` = this interpreter) in a throw-away
work directory laid out like a checkout (``jobs -> <repo>/jobs``) with generated input files
at the paths the page uses (``data/my_events.csv``, then ``data/my_events_day2.csv``: the same
events plus new days with new items).  So the page and the jobs cannot drift: preprocess ->
train -> evaluate -> next day's preprocess with a stable item index -> warm-started training.

The page's serving block (``serve run``, wait for ``/ready``, post events, ask, ``kill``) runs
as written by bash in the slow tier (``test_your_data_page_serving_verbatim``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "your_data.md"
DAY = 86_400

pytestmark = pytest.mark.integration


def doc_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, backslash continuations joined."""
    cmds: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        cur = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                cur += line.rstrip()[:-1] + " "
                continue
            cur += line
            if cur.strip():
                cmds.append(cur.strip())
            cur = ""
    return cmds


def _events(seed: int, n_users: int, n_items: int, day0: int, days: int, user0: int = 0,
            prefix: str = "i") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(user0, user0 + n_users):
        n = int(rng.integers(5, 15))
        ts = np.sort(rng.integers(0, days * DAY, n)) + day0
        ts -= ts % DAY  # day-granular, like review dumps
        for t, i in zip(ts, rng.zipf(1.4, n) % n_items):
            rows.append((f"u{u}", f"{prefix}{i:03d}", int(rng.integers(1, 6)), int(t)))
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return df.drop_duplicates(["user", "item", "timestamp"])


def test_your_data_page_verbatim(tmp_path):
    cmds = doc_commands(DOC.read_text(encoding="utf-8"))
    jobs = [shlex.split(c)[2] for c in cmds]
    assert jobs == ["rayrec.jobs.preprocess", "rayrec.jobs.train", "rayrec.jobs.evaluate",
                    "rayrec.jobs.preprocess", "rayrec.jobs.train"], cmds
    work = tmp_path / "repo"
    (work / "data").mkdir(parents=True)
    (work / "jobs").symlink_to(REPO / "jobs")
    day0 = 1_600_000_000 - 1_600_000_000 % DAY
    day1 = _events(0, 300, 120, day0, 20)
    day1.to_csv(work / "data" / "my_events.csv", index=False)
    new = pd.concat([_events(1, 120, 120, day0 + 20 * DAY, 4, user0=1000),
                     _events(2, 40, 10, day0 + 18 * DAY, 4, user0=2000, prefix="new")])
    pd.concat([day1, new]).to_csv(work / "data" / "my_events_day2.csv", index=False)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}
    logs = []
    for i, cmd in enumerate(cmds):
        argv = shlex.split(cmd)
        assert argv[0] == "python"
        if i == 3:  # before the next day's preprocess replaces it: the day-1 index
            items_day1 = pd.read_parquet(work / "outputs" / "my_data" / "items.parquet")
        r = subprocess.run([sys.executable, *argv[1:]], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        logs.append(r.stdout + r.stderr)

    # day 1: the one-sequence-per-user data set, a model, its evaluation next to the baselines
    ev = json.loads((work / "outputs" / "my_data_eval.json").read_text())
    text = json.dumps(ev)
    assert "gru4rec" in text and "pop" in text and "recall@20" in text
    assert "WARNING" in logs[0] and "tie with an earlier event" in logs[0]  # day-granular ts
    # day 2: every old item keeps its item_idx, new items are appended; the warm start copied rows
    items_day2 = pd.read_parquet(work / "outputs" / "my_data" / "items.parquet")
    n1 = len(items_day1)
    assert items_day2["item_id"].tolist()[:n1] == items_day1["item_id"].tolist()
    appended = items_day2.iloc[n1:]  # new ids (and old ids rare on day 1), by popularity
    assert appended["item_id"].str.startswith("new").any()
    assert (np.diff(appended["count"].to_numpy()) <= 0).all()
    manifest = json.loads((work / "outputs" / "my_data" / "manifest.json").read_text())
    assert manifest["items"]["index_from"]["appended"] == len(items_day2) - n1
    assert f"warm start from {work / 'runs' / 'my-gru4rec'}: {n1} known items copied by id" in logs[4]
    ck = sorted((work / "runs" / "my-gru4rec-day2").glob("checkpoint_*"))[-1]
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["init_from"] == str(work / "runs" / "my-gru4rec")


@pytest.mark.slow
def test_your_data_page_serving_verbatim(tmp_path):
    """The page's ``sh`` block (serve run, wait for /ready, post events, ask, kill) run as
    written by bash, on the model the page's first two commands train."""
    text = DOC.read_text(encoding="utf-8")
    cmds = doc_commands(text)[:2]  # preprocess, train
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1 and "serve run serve_apps/configs/recommender_my_data.yaml" in blocks[0]
    work = tmp_path / "repo"
    (work / "data").mkdir(parents=True)
    for d in ("jobs", "serve_apps"):
        (work / d).symlink_to(REPO / d)
    day0 = 1_600_000_000 - 1_600_000_000 % DAY
    _events(0, 300, 120, day0, 20).to_csv(work / "data" / "my_events.csv", index=False)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    for suffix in ("", "-wal", "-shm"):  # the page's session store: a fresh session s1
        Path(f"/tmp/rayrec/my_data_sessions.db{suffix}").unlink(missing_ok=True)
    for cmd in cmds:
        r = subprocess.run([sys.executable, *shlex.split(cmd)[1:]], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    r = subprocess.run(["bash", "-c", blocks[0]], cwd=work, env=env, capture_output=True, text=True,
                       timeout=900, start_new_session=True)
    log = (work / "serve.log").read_text() if (work / "serve.log").is_file() else ""
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{log[-3000:]}"
    answers, dec, pos = [], json.JSONDecoder(), 0  # curl prints the bodies back to back
    while (start := r.stdout.find("{", pos)) >= 0:
        obj, pos = dec.raw_decode(r.stdout, start)
        answers.append(obj)
    assert len(answers) == 2, r.stdout
    posted, recs = answers
    assert posted["accepted"] == 2 and posted["rejected"] == 0, posted
    assert len(recs["items"]) == 5 and recs["source"] == "session", recs
