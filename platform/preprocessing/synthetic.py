"""A deterministic synthetic session generator (for the demo without data, and benchmarks).

Items have power-law (Zipf-like) popularity; sessions have sequential structure:
each item has a few preferred successors (a sparse random Markov chain whose
targets are themselves drawn by popularity), so a sequence model can beat
popularity, as on real click logs.  Users come back for several sessions
separated by more than the sessionizing gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def generate_events(
    n_events: int,
    n_items: int = 5000,
    n_users: int | None = None,
    zipf_a: float = 1.1,
    follow_p: float = 0.6,
    n_successors: int = 4,
    mean_session_len: float = 5.0,
    start_ts: float = 1_396_310_400.0,  # 2014-04-01
    days: float = 30.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Return ``user_id, session_id, item_id, ts`` (ts in unix seconds), ``n_events`` rows.

    Vectorised: session lengths ~ 2 + Geometric, per-step choice between following the
    Markov successor (prob ``follow_p``) and a popularity draw.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    pop = ranks ** (-zipf_a)
    pop /= pop.sum()
    succ = rng.choice(n_items, size=(n_items, n_successors), p=pop)  # (N, S)
    # session lengths
    p_geom = 1.0 / max(mean_session_len - 1.0, 1.0)
    lens = []
    total = 0
    while total < n_events:
        chunk = 2 + rng.geometric(p_geom, size=max(1024, (n_events - total) // 3)) - 1
        lens.append(chunk)
        total += int(chunk.sum())
    lens = np.concatenate(lens)
    cum = np.cumsum(lens)
    n_sessions = int(np.searchsorted(cum, n_events) + 1)
    lens = lens[:n_sessions]
    lens[-1] -= int(cum[n_sessions - 1] - n_events)
    if lens[-1] < 1:
        lens[-1] = 1
    E = int(lens.sum())
    sess_of_event = np.repeat(np.arange(n_sessions), lens)  # (E,)
    first = np.zeros(E, dtype=bool)
    first[np.concatenate([[0], np.cumsum(lens)[:-1]])] = True
    pop_draws = rng.choice(n_items, size=E, p=pop)
    follow = rng.random(E) < follow_p
    succ_pick = rng.integers(0, n_successors, size=E)
    items = np.empty(E, dtype=np.int64)
    # sequential dependency: resolve step by step over positions (max session length
    # iterations, each vectorised over all sessions)
    pos = np.arange(E) - np.repeat(np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    items[first] = pop_draws[first]
    for p in range(1, int(lens.max())):
        sel = np.nonzero(pos == p)[0]
        prev = items[sel - 1]
        nxt = np.where(follow[sel], succ[prev, succ_pick[sel]], pop_draws[sel])
        items[sel] = nxt
    if n_users is None:
        n_users = max(1, n_sessions // 3)
    user_of_session = rng.integers(0, n_users, size=n_sessions)
    sess_start = start_ts + np.sort(rng.random(n_sessions)) * days * 86400.0
    gaps = rng.exponential(60.0, size=E)  # seconds between clicks
    gaps[first] = 0.0
    offs = np.cumsum(gaps)
    offs -= np.repeat(offs[first], lens)
    ts = np.repeat(sess_start, lens) + offs
    return pd.DataFrame(
        {
            "user_id": pd.array([f"u{u}" for u in user_of_session[sess_of_event]], dtype="string"),
            "session_id": sess_of_event.astype(np.int64) + 1,
            "item_id": items + 1_000_000,
            "ts": np.round(ts, 3),
        }
    )


def write_rsc15_style(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the prepared RSC15 TSV format (``SessionId ItemId Time``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.rename(columns={"session_id": "SessionId", "item_id": "ItemId", "ts": "Time"})
    out[["SessionId", "ItemId", "Time"]].to_csv(path, sep="\t", index=False)
    return path


def write_user_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``user_id,item_id,ts`` CSV (no session ids: the job sessionizes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df[["user_id", "item_id", "ts"]].to_csv(path, index=False)
    return path
