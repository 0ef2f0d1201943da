"""Data families: how the platform loads, checks, shards and evaluates the training data of a
model kind (``ModelSpec.kind``), so the one loop never branches on a model.

* ``session`` (GRU4Rec and every next-item model): the preprocess output's session splits as
  CSR :class:`rayrec.models.session_parallel.SessionArrays`; data-parallel shards are whole
  sessions (a Ray Data dataset of one row per session); evaluation is the ``next_item``
  protocol (seed 003 section 4: full ranking, conservative ties).
* ``daily`` (the seed 000 model): the date-window splits as user windows over a catalog
  clipped to P products; every worker loads all of it (tensor parallelism splits the model,
  not the data); evaluation is the ``future_window`` protocol (Precision@K, PCC@K).
* ``embedding`` (item2vec, seed 002 section 3): one sequence per user over ``data.splits``.
* ``history`` (attention CF, DAN, seed 002 section 4): users' sequences, the frozen item
  vectors of ``data.embeddings``; validation on held-out users' sampled candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrec.models.session_parallel import (
    SessionArrays,
    group_by_user,
    item_counts,
    n_training_pairs,
    ts_seconds,
)
from rayrec.platform import data as pdata

__all__ = ["FAMILIES", "EmbeddingFamily", "HistoryFamily", "TrainData", "TrainingInputError", "distinct_user_counts",
           "family_of", "user_sequences"]


class TrainingInputError(ValueError):
    """The data cannot be trained on (empty split, no pair, item index mismatch)."""


@dataclass
class TrainData:
    train: Any
    valid: Any | None
    item_ids: list[str]
    counts: np.ndarray
    """Global training item counts (N,) int64."""


#: per-event context columns of SessionArrays that travel with a data-parallel shard
_CONTEXT = ("events", "values", "users")


def _by_user(job: Any) -> bool:
    return getattr(job.train, "sequence_key", "session") == "user"


def _sequences(job: Any, arrays: SessionArrays, where: str) -> SessionArrays:
    """The training / validation sequences: sessions, or (``train.sequence_key: user``) each
    user's sessions joined in time order."""
    if not _by_user(job):
        return arrays
    if arrays.users is None or not (arrays.users >= 0).any():
        raise TrainingInputError(
            f"train.sequence_key=user: {where} has no user_id (no event names its user); use "
            "train.sequence_key=session or preprocess data with a user_id column")
    return group_by_user(arrays)


class SessionFamily:
    kind = "session"

    @staticmethod
    def load(job: Any, with_valid: bool = True) -> TrainData:
        d = job.data
        if d.synthetic is not None or d.catalog_size is not None:
            bad = "data.synthetic" if d.synthetic is not None else "data.catalog_size"
            raise TrainingInputError(f"{bad}: not supported by session models (model {job.model.name})")
        items = pdata.load_items(d.path)
        item_ids = items["item_id"].astype(str).tolist()
        context = bool(getattr(job.model, "session_context", False))  # per-event context inputs
        train = pdata.session_arrays(d.path, d.train_split, context=context or _by_user(job))
        train = _sequences(job, train, f"data.train_split {d.train_split!r}")
        if n_training_pairs(train) == 0:
            raise TrainingInputError(
                f"data.train_split {d.train_split!r} has {train.n_events} event(s) in "
                f"{train.n_sessions} session(s) and no session with 2 or more events: nothing to train on"
            )
        bad = np.flatnonzero((train.items < 0) | (train.items >= len(item_ids)))
        if bad.size:  # never reaches a step: item tables have exactly len(item_ids) rows
            e = int(bad[0])
            s = int(np.searchsorted(train.offsets, e, side="right") - 1)
            raise TrainingInputError(
                f"data.train_split {d.train_split!r}: event {e} (session {s}) has item_idx "
                f"{int(train.items[e])}, outside items.parquet's {len(item_ids)} items "
                f"(0..{len(item_ids) - 1}); {bad.size} event(s) in all: re-run preprocess"
            )
        counts = item_counts(train, len(item_ids))
        feats = tuple(getattr(job.model, "item_features", ()) or ())
        if feats:  # item metadata (model.item_features): vocabularies from the training rows
            train.item_features = pdata.load_item_features(d.path, feats, item_ids, counts)
        valid = SessionFamily.load_valid(job, train.event_names) if with_valid else None
        if valid is not None:
            valid.item_features = train.item_features
        return TrainData(train, valid, item_ids, counts)

    @staticmethod
    def load_valid(job: Any, event_names: tuple[str, ...] | None = None) -> SessionArrays | None:
        """The validation split alone (a data-parallel rank 0 has its training shard already);
        with the model's per-event context, event types coded by ``event_names`` (training's)."""
        if not job.data.valid_split:
            return None
        if not (getattr(job.model, "session_context", False) or _by_user(job)):
            return pdata.session_arrays(job.data.path, job.data.valid_split)
        valid = pdata.session_arrays(job.data.path, job.data.valid_split, context=True, event_names=event_names)
        return _sequences(job, valid, f"data.valid_split {job.data.valid_split!r}")

    @staticmethod
    def shard_context(train: SessionArrays) -> dict[str, Any]:
        """What a data-parallel worker needs besides its shard of :meth:`to_rows`: the training
        split's event-type vocabulary and the item metadata (vocabularies from all training
        rows), as the driver loaded them."""
        return {"event_names": tuple(train.event_names), "item_features": train.item_features}

    @staticmethod
    def attach_context(arrays: SessionArrays | None, shared: dict[str, Any]) -> None:
        """Give a worker's shard (or validation split) the driver's :meth:`shard_context`."""
        if arrays is None or not shared:
            return
        arrays.event_names = tuple(shared["event_names"])
        arrays.item_features = shared["item_features"]

    @staticmethod
    def metric_names(ks: Sequence[int]) -> list[str]:
        return [f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "hit") for k in ks] + ["n", "n_sessions"]

    @staticmethod
    def evaluate(scorer: Any, valid: SessionArrays, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        from rayrec.platform.evaluation.protocols import evaluate_next_item

        return evaluate_next_item(scorer, valid.offsets, valid.items, tuple(ks), batch_size,
                                  ppl=bool(getattr(scorer, "reports_ppl", False)))

    @staticmethod
    def to_rows(train: SessionArrays) -> list[dict[str, Any]]:
        """One row per session (a Ray Data dataset of whole sessions)."""
        rows = []
        ts = train.ts
        for s in range(train.n_sessions):
            a, b = int(train.offsets[s]), int(train.offsets[s + 1])
            rows.append({
                "start": float(ts[a]) if ts is not None else float(s),
                "order": s,
                "items": train.items[a:b].tolist(),
                "ts": ts[a:b].tolist() if ts is not None else [0.0] * (b - a),
                **{k: getattr(train, k)[a:b].tolist() for k in _CONTEXT if getattr(train, k) is not None},
                **({"event_names": list(train.event_names)} if train.events is not None else {}),
            })
        return rows

    @staticmethod
    def from_rows(df: Any) -> SessionArrays:
        """Inverse of :meth:`to_rows` for a worker's shard (sorted by start, order)."""
        if len(df) == 0:
            return SessionArrays(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
        df = df.sort_values(["start", "order"], kind="stable")
        lens = np.array([len(x) for x in df["items"]], dtype=np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in df["items"]])
        ts = np.concatenate([np.asarray(x, dtype=np.float64) for x in df["ts"]])
        ctx: dict[str, Any] = {k: np.concatenate([np.asarray(x) for x in df[k]]) for k in _CONTEXT if k in df.columns}
        if "event_names" in df.columns:  # the training split's event-type vocabulary
            ctx["event_names"] = tuple(str(n) for n in df["event_names"].iloc[0])
        return SessionArrays(offsets, items, ts, **ctx)


class DailyFamily:
    kind = "daily"

    @staticmethod
    def load(job: Any, with_valid: bool = True) -> TrainData:
        from rayrec.platform.daily.data import (
            Catalog,
            load_catalog,
            load_windows,
            synthetic_windows,
        )

        d = job.data
        if d.synthetic is not None:
            w = synthetic_windows(d.synthetic)
            cat = Catalog([str(i) for i in range(d.synthetic.n_items)], np.arange(d.synthetic.n_items))
            return TrainData(w, None, cat.item_ids, _window_counts(w, cat.size))
        cat = load_catalog(d.path, d.catalog_size)
        train = load_windows(d.path, d.train_split, cat)
        valid = load_windows(d.path, d.valid_split, cat) if (with_valid and d.valid_split) else None
        return TrainData(train, valid, list(cat.item_ids), _window_counts(train, cat.size))

    @staticmethod
    def metric_names(ks: Sequence[int]) -> list[str]:
        return [f"{m}@{k}" for m in ("precision", "pcc", "coverage") for k in ks] + ["n_users"]

    @staticmethod
    def evaluate(model: Any, windows: Any, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        """``future_window`` (seed 000 eqs. 1-2): input items excluded, Precision@K, PCC@K.

        An unsharded model takes the fused top-K (``rayrec.ops_kernels.topk_scores``, no
        ``(B, P)`` block); a tensor-parallel slice gathers its ranges' scores (every rank calls)."""
        import torch

        from rayrec.platform.evaluation.protocols import (
            evaluate_future_window,
            evaluate_future_window_topk,
        )

        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                if not model.is_sharded:
                    return evaluate_future_window_topk(
                        lambda users: model(windows.batch(users)[0]), model.output_layer.weight,
                        model.output_layer.bias, windows.x_lists(), windows.y_lists(), list(ks), batch_size)
                return evaluate_future_window(
                    lambda users: model.score(model(windows.batch(users)[0])), windows.x_lists(),
                    windows.y_lists(), list(ks), windows.n_items, batch_size)
        finally:
            model.train(was)


def _window_counts(windows: Any, n_items: int) -> np.ndarray:
    return np.bincount(np.asarray(windows.x_items, dtype=np.int64), minlength=n_items).astype(np.int64)


FAMILIES: dict[str, Any] = {"session": SessionFamily, "daily": DailyFamily}


def family_of(spec: Any) -> Any:
    try:
        return FAMILIES[spec.kind]
    except KeyError:
        raise TrainingInputError(f"model {spec.name!r}: no training data family for kind {spec.kind!r}") from None


#: splits an embedding model reads by default (never a ``*_target``: held-out answers)
EMBEDDING_SPLITS = ("train", "valid_input", "test_input")


def user_sequences(root: str, splits: Sequence[str]) -> tuple[SessionArrays, list[Any]]:
    """One CSR row per user over ``splits`` (events by ts, then item_idx) and the user ids;
    the split of a held-out user holds its input only, so a user appears in one split."""
    import pandas as pd

    parts = [pdata.load_split(root, s, ["user_id", "item_idx", "ts"]) for s in splits]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["user_id", "item_idx", "ts"])
    if df.empty:
        return SessionArrays(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)), []
    if df["user_id"].isna().any():
        raise TrainingInputError(f"splits {list(splits)}: {int(df['user_id'].isna().sum())} event(s) without "
                                 "user_id (per-user sequences need one)")
    t = ts_seconds(df["ts"])
    item = df["item_idx"].to_numpy(np.int64)
    uid = df["user_id"].astype(str).to_numpy()
    order = np.lexsort((item, t, uid))  # by user, then time, then item
    users, lens = np.unique(uid[order], return_counts=True)
    offsets = np.zeros(users.size + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return SessionArrays(offsets, item[order], t[order]), list(users)


def distinct_user_counts(seqs: SessionArrays, n_items: int) -> np.ndarray:
    """(N,) users who interacted with each item (seed 002 eq. 5's ``sum_u 1{i in A_u}``)."""
    user = np.repeat(np.arange(seqs.n_sessions), np.diff(seqs.offsets))
    pairs = np.unique(user * np.int64(n_items) + seqs.items)
    return np.bincount(pairs % n_items, minlength=n_items).astype(np.int64)


def _check_items(name: str, split_label: str, seqs: SessionArrays, n_items: int) -> None:
    bad = np.flatnonzero((seqs.items < 0) | (seqs.items >= n_items))
    if bad.size:
        raise TrainingInputError(f"{split_label}: {bad.size} event(s) with item_idx outside items.parquet's "
                                 f"{n_items} items (first {int(seqs.items[bad[0]])}): re-run preprocess")


class EmbeddingFamily:
    """Item embeddings (item2vec, seed 002 section 3): one sequence per user over
    ``data.splits`` (default :data:`EMBEDDING_SPLITS`); data-parallel shards are whole users;
    no validation protocol (the vectors are judged downstream)."""

    kind = "embedding"

    @staticmethod
    def splits(job: Any) -> list[str]:
        splits = list(job.data.splits or EMBEDDING_SPLITS)
        bad = [s for s in splits if s.endswith("_target")]
        if bad:
            raise TrainingInputError(f"data.splits: {bad} hold held-out targets; embeddings never train on them")
        return splits

    @staticmethod
    def load(job: Any, with_valid: bool = True) -> TrainData:
        from rayrec.models.item2vec import skipgram_pairs

        d = job.data
        items = pdata.load_items(d.path)
        item_ids = items["item_id"].astype(str).tolist()
        splits = EmbeddingFamily.splits(job)
        manifest = pdata.read_manifest(d.path)
        missing = [s for s in splits if s not in manifest["split"]["files"]]
        if missing:
            raise TrainingInputError(f"data.splits: {missing} not in {d.path} (splits: "
                                     f"{sorted(manifest['split']['files'])})")
        train, _ = user_sequences(d.path, splits)
        _check_items(job.model.name, f"data.splits {splits}", train, len(item_ids))
        window = int(getattr(job.model, "window", 1))
        if len(skipgram_pairs(train.offsets, train.items, window, reduced_window=False)) == 0:
            raise TrainingInputError(
                f"data.splits {splits}: {train.n_events} event(s) of {train.n_sessions} user(s) give no "
                f"(item, context) pair of two different items within window {window}: nothing to train on")
        counts = np.bincount(train.items, minlength=len(item_ids)).astype(np.int64)
        return TrainData(train, None, item_ids, counts)

    @staticmethod
    def load_valid(job: Any, event_names: tuple[str, ...] | None = None) -> None:
        return None

    @staticmethod
    def metric_names(ks: Sequence[int]) -> list[str]:
        return ["pairs", "same_item_pairs_dropped"]

    @staticmethod
    def evaluate(model: Any, valid: Any, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        return {}

    to_rows = staticmethod(SessionFamily.to_rows)
    from_rows = staticmethod(SessionFamily.from_rows)


@dataclass
class HistoryValid:
    """Validation users with their negatives drawn once (fixed seed): the same candidates every
    assessment (seed 002 section 4.3: "assessed on a small holdout set of users")."""

    candidates: Any
    """:class:`rayrec.platform.evaluation.protocols.CandidateSet`"""


class HistoryFamily:
    """History models (attention CF, DAN; seed 002 section 4): ``data.train_split``'s users
    as sequences (every cut of one is a training example), the frozen item vectors of
    ``data.embeddings`` (checked against ``items.parquet``), ``data.valid_split``'s
    ``<split>_input`` / ``<split>_target`` users for validation: L-hat, NDCG and Recall@K on
    ``model.negatives`` candidates from ``P_alpha`` drawn once."""

    kind = "history"

    @staticmethod
    def _embeddings(job: Any):
        from rayrec.platform.embeddings import load_embeddings

        if not job.data.embeddings:
            raise TrainingInputError(f"data.embeddings: model {job.model.name} needs a published embedding "
                                     "version (e.g. runs/item2vec-ml100k@current)")
        from rayrec.platform.embeddings import EmbeddingError

        try:
            return load_embeddings(job.data.embeddings, job.data.path)
        except EmbeddingError as exc:
            raise TrainingInputError(str(exc)) from None

    @staticmethod
    def load(job: Any, with_valid: bool = True) -> TrainData:
        d = job.data
        emb = HistoryFamily._embeddings(job)
        if emb.x.shape[1] != job.model.dim:
            raise TrainingInputError(f"model.dim={job.model.dim} but data.embeddings {job.data.embeddings} "
                                     f"has dim {emb.x.shape[1]}")
        item_ids = list(emb.item_ids)
        train, _ = user_sequences(d.path, [d.train_split])
        _check_items(job.model.name, f"data.train_split {d.train_split!r}", train, len(item_ids))
        if not (np.diff(train.offsets) >= 2).any():
            raise TrainingInputError(f"data.train_split {d.train_split!r}: no user with 2 or more events "
                                     "(a history and a future): nothing to train on")
        counts = distinct_user_counts(train, len(item_ids))
        valid = HistoryFamily.load_valid(job) if with_valid else None
        return TrainData(train, valid, item_ids, counts)

    @staticmethod
    def load_valid(job: Any, event_names: tuple[str, ...] | None = None) -> HistoryValid | None:
        from rayrec.platform.evaluation.protocols import draw_candidates, history_cases

        d = job.data
        if not d.valid_split:
            return None
        emb = HistoryFamily._embeddings(job)
        train, _ = user_sequences(d.path, [d.train_split])
        counts = distinct_user_counts(train, len(emb.item_ids))
        inp, users = user_sequences(d.path, [f"{d.valid_split}_input"])
        tgt, t_users = user_sequences(d.path, [f"{d.valid_split}_target"])
        if users != t_users:
            raise TrainingInputError(f"data.valid_split {d.valid_split!r}: the _input and _target splits "
                                     "hold different users")
        cases = history_cases(inp.offsets, inp.items, tgt.offsets, tgt.items, job.model.history.max_len,
                              known=emb.pair_counts > 0, users=users)
        if not cases.histories:
            raise TrainingInputError(f"data.valid_split {d.valid_split!r}: no validation user left "
                                     f"({cases.counts})")
        return HistoryValid(draw_candidates(cases, counts, job.model.alpha, job.model.negatives, seed=0))

    @staticmethod
    def task_inputs(job: Any) -> dict[str, Any]:
        import torch

        return {"embeddings": torch.from_numpy(np.ascontiguousarray(HistoryFamily._embeddings(job).x))}

    @staticmethod
    def metric_names(ks: Sequence[int]) -> list[str]:
        return ["valid_loss", "ndcg", *[f"recall@{k}" for k in ks], "n"]

    @staticmethod
    def evaluate(model: Any, valid: HistoryValid, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        import torch

        from rayrec.models.attention_cf import score_candidates
        from rayrec.models.losses import balanced_logistic
        from rayrec.platform.evaluation.protocols import evaluate_candidate_set

        cs = valid.candidates
        kept: dict[str, np.ndarray] = {}

        def score(histories, cand):
            kept["s"] = score_candidates(model, histories, cand, batch_size)
            return kept["s"]

        res = evaluate_candidate_set(score, cs, ks)
        s = torch.from_numpy(np.where(cs.candidates >= 0, kept["s"], 0.0))
        w = cs.width_pos
        res["valid_loss"] = float(balanced_logistic(s[:, :w], torch.from_numpy(cs.candidates[:, :w] >= 0),
                                                    s[:, w:], torch.ones_like(s[:, w:], dtype=torch.bool)))
        res.pop("counts", None)
        return res

    to_rows = staticmethod(SessionFamily.to_rows)
    from_rows = staticmethod(SessionFamily.from_rows)


FAMILIES.update({"embedding": EmbeddingFamily, "history": HistoryFamily})
