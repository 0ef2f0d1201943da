"""Serving HRNN-meta (seed 001) through the session deployment's model side
(:class:`rayrec.serve_apps.scoring.SessionModel`, no Serve): the stored events are replayed with
their times, types and values, the last event's time delta measured to the request time, so the
served top-K is the offline ``next_item`` top-K for equal events and time deltas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayrec.models.hrnn import HRNNScorer
from rayrec.platform.config import load_config
from rayrec.platform.data import session_arrays
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.trainer import fit
from rayrec.serve_apps.messages import ScoreRequest
from rayrec.serve_apps.scoring import SessionModel
from tests.fixtures import synthetic_user_sessions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hrnn-serve")
    root = synthetic_user_sessions(tmp)
    job = load_config(TrainJobConfig, None, [
        "model.name=hrnn_meta", f"data.path={root}", "data.valid_split=test", "ray.use_ray=false",
        "train.epochs=2", "train.batch_size=16", "model.inputs=[item_id,item_features,feedback,time]",
        "model.item_features=[genre]", "model.decoder=mixed", f"run.storage_path={tmp / 'runs'}",
        "run.name=h"])
    res = fit(job, log=lambda _m: None)
    return root, SessionModel(res.checkpoint_dir)


def _events(sm: SessionModel, a, lo: int, hi: int) -> list[tuple[str, int, str, float | None]]:
    names = sm.model.event_names()
    ids = sm.catalog.item_ids
    return [(ids[int(a.items[x])], int(round(a.ts[x] * 1000)), names[int(a.events[x])],
             None if not np.isfinite(a.values[x]) else float(a.values[x])) for x in range(lo, hi)]


def _long_session(a, n: int = 4) -> tuple[int, int]:
    s = int(np.flatnonzero(np.diff(a.offsets) >= n)[0])
    return int(a.offsets[s]), int(a.offsets[s + 1])


def test_served_topk_equals_offline_topk_for_equal_events_and_time_deltas(trained):
    root, sm = trained
    test = session_arrays(root, "test", context=True, event_names=sm.model.event_names())
    offline = HRNNScorer(sm.model, test)
    lo, hi = _long_session(test)
    state = offline.init_state(1)
    for j in range(lo, hi - 1):
        scores, state = offline.step(state, torch.tensor([int(test.items[j])]), torch.tensor([j == lo]),
                                     positions=torch.tensor([j]))
        want = torch.topk(scores[0], 10)
        evs = _events(sm, test, lo, j + 1)
        req = ScoreRequest([e[0] for e in evs], 10, events=evs, now_ms=int(round(test.ts[j + 1] * 1000)))
        got = sm.score_batch([req])[0]
        assert got.source == "session"
        assert got.items == [sm.catalog.item_ids[t] for t in want.indices.tolist()]
        assert got.scores == pytest.approx(want.values.tolist(), rel=1e-4, abs=1e-5)


def test_time_since_the_last_event_changes_the_list_and_plain_requests_still_score(trained):
    root, sm = trained
    test = session_arrays(root, "test", context=True, event_names=sm.model.event_names())
    lo, _ = _long_session(test)
    evs = _events(sm, test, lo, lo + 3)
    last = evs[-1][1]
    items = [e[0] for e in evs]
    now, day, plain = sm.score_batch([ScoreRequest(items, 20, events=evs, now_ms=last),
                                      ScoreRequest(items, 20, events=evs, now_ms=last + 86_400_000),
                                      ScoreRequest(items, 20)])  # Table 2: 0 s vs 1 day
    assert now.items != day.items
    assert plain.source == "session" and len(plain.items) == 20
    # an event in the accepted future skew (after the request time) counts as no time elapsed
    assert sm.score_batch([ScoreRequest(items, 20, events=evs, now_ms=last - 5000)])[0].items == now.items


def test_a_user_memory_scorer_replays_the_users_events(trained):
    root, sm = trained
    test = session_arrays(root, "test", context=True, event_names=sm.model.event_names())
    lo, _ = _long_session(test)
    user = _events(sm, test, lo, lo + 4)
    live = user[2:]
    t = live[-1][1]
    alone = sm.score_batch([ScoreRequest([e[0] for e in live], 20, events=live, now_ms=t)])[0]
    whole = sm.score_batch([ScoreRequest([e[0] for e in user], 20, events=user, now_ms=t)])[0]
    sm.scorer.context_scope = "user"
    try:
        got = sm.score_batch([ScoreRequest([e[0] for e in live], 20, events=live, user_events=user,
                                           now_ms=t)])[0]
    finally:
        sm.scorer.context_scope = "session"
    assert got.items == whole.items and got.scores == pytest.approx(whole.scores)
    assert alone.items != whole.items
