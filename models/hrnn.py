"""HRNN-meta: a GRU session model with time, feedback and item-metadata inputs, a mixed
ID / metadata decoder, an item-trend bias and alias-sampled softmax (seed 001, Ma et al.,
KDD 2020), built on GRU4Rec's machinery (session-parallel batches, the popularity / alias
sampler, logQ, the sampled losses, ``ops_kernels.gru_step``, row-sparse item tables and
``ops_kernels.topk_scores``).

Where each piece comes from:

- Inputs (section 2.2, Figures 1-3): per event, the concatenation of the fields named in
  ``model.inputs`` -- ``item_id`` (a learned item embedding ``E``), ``item_features`` (one
  embedding per metadata field, the mean over a multi-valued field's values), ``feedback``
  (an event-type embedding and the standardized ``value``) and ``time`` -- through a small
  MLP (one ``tanh`` layer of ``mlp`` units) into the GRU layers (``ops_kernels.gru_step``).
- Time (section 2.2, Table 2): the time from the event to the prediction moment (the next
  event in training and evaluation) as a learned embedding of log-spaced buckets
  :data:`TIME_EDGES_S` (:func:`time_bucket`, shared by training and scoring) plus the
  session-start control bit ``dt > session_gap_s`` (Figure 2's second input bit).
- ``memory`` (Table 1's "Seq x" row, section 2.2): ``none`` forgets the state after every
  event, ``session`` resets it at session starts (GRU4Rec), ``user`` runs a user's sessions
  as one sequence whose breaks are signalled only by the time inputs (the sequences are the
  data family's, ``train.sequence_key: user``: a data-parallel shard holds whole users).
- Truncated back-propagation (``train.bptt``): one optimiser step per window of ``bptt``
  session-parallel steps, the gradient flowing through the window's GRU steps.
- Decoder (section 2.3, eq. 2): ``(1 - lam) (w_j^T h + b_j) + lam (w(f_j)^T h + b(f_j))`` with
  ``w(f) = P [mean field embeddings of f]`` and ``b(f)`` the sum over fields of the mean value
  bias; ``decoder: id`` is lam = 0, ``meta`` lam = 1, ``mixed`` draws lam ~ U[0, 1] per row
  in training (the dropout-like randomisation of section 2.3) and uses ``meta_lambda`` at
  inference, 1 for cold items (no training events). At inference the mix is folded into one
  ``(N, H)`` matrix and bias (:meth:`HRNNMeta.folded_decoder`) for ``topk_scores``.
- Trend bias (section 3.2, eq. 5): ``trend_bias.weight * log q_j(t)`` is added to every score,
  with ``q_j(t)`` the item's events in the trailing ``window_h`` hours strictly before the
  prediction moment ``t`` (causal; :class:`TrendIndex`, add-one smoothed).
- Loss (sections 3.1, 3.3): sampled softmax over the mini-batch targets and ``n_sample``
  negatives from ``count^sample_alpha`` (``sampler: alias``, Walker's method, the paper's
  ref. 28; ``n_sample: sqrt`` = round(sqrt(N)), Table 8's 255 / 362 / 1,087 for its three
  catalogs) with the logQ correction of eq. 4 (subtract log q); ``full-softmax`` uses the
  fused ``ops_kernels.linear_cross_entropy`` over the whole catalog. ``loss.rewards`` (per
  event type, in [0, 1]) scale only the target term: ``-(r_t z_t - log sum_j exp z_j)``
  (section 3.3), so a reward below the average pushes the target down.

``models/`` is pure PyTorch: no Ray, no file I/O, no import of ``rayrec.platform``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from rayrec.models.gru4rec import _uniform_block_
from rayrec.models.losses import LossConfig, negative_mask, sampled_loss
from rayrec.models.samplers import logq_tables, make_sampler
from rayrec.models.session_parallel import SessionArrays, group_by_user, session_parallel_batches
from rayrec.ops_kernels import gather_rows, gru_step, linear_cross_entropy, topk_scores

__all__ = [
    "HRNNLossConfig", "HRNNMeta", "HRNNMetaConfig", "HRNNScorer", "HRNNTask", "MAX_DT_S",
    "TIME_EDGES_S", "TrendIndex", "build", "event_context", "group_by_user", "rewarded_sampled_ce",
    "time_bucket",
]

#: lower edges (seconds) of the time buckets (seed 001 section 2.2): 0, 1 s, 10 s, 1 min,
#: 10 min, 1 h, 6 h, 1 d, 1 w, 30 d; bucket k holds ``TIME_EDGES_S[k] <= dt < TIME_EDGES_S[k+1]``
TIME_EDGES_S = (0.0, 1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0, 604800.0, 2592000.0)
N_TIME_BUCKETS = len(TIME_EDGES_S)
#: time deltas above a year saturate (counted by :func:`event_context`)
MAX_DT_S = 365.0 * 86400.0

Input = Literal["item_id", "item_features", "feedback", "time"]


def time_bucket(dt_seconds: Any, names: Any = None) -> np.ndarray:
    """The time bucket (int64, same shape) of each time delta in seconds (seed 001 section 2.2).

    Bucket k covers ``[TIME_EDGES_S[k], TIME_EDGES_S[k + 1])``: 0 s is the first bucket, a
    delta on an edge belongs to the bucket that edge opens, and everything from 30 days on
    (including deltas over :data:`MAX_DT_S`, which saturate) is the last bucket. A negative or
    NaN delta is an error naming its position (``names[i]`` when given: e.g. "event 17 of
    session 3")."""
    dt = np.asarray(dt_seconds, dtype=np.float64)
    bad = ~(dt >= 0.0)  # negative or NaN
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        where = names(i) if callable(names) else f"position {i}"
        raise ValueError(f"time delta {float(dt.ravel()[i])!r} s at {where} is negative or not a number: "
                         "events must be in time order")
    b = np.searchsorted(np.asarray(TIME_EDGES_S), np.minimum(dt, MAX_DT_S), side="right") - 1
    return b.astype(np.int64)


class TrendBias(BaseModel):
    """Eq. 5 (section 3.2): ``weight * log q_j(t)``, ``q`` the item's events in the trailing
    ``window_h`` hours before the prediction moment (0 = off)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = 0.0
    window_h: float = Field(24.0, gt=0)


class HRNNLossConfig(LossConfig):
    """GRU4Rec's :class:`~rayrec.models.losses.LossConfig` with seed 001's defaults (alias
    sampler, ``sample_alpha`` 0.75 of section 4.6, ``n_sample: sqrt`` of Table 8) plus
    ``full-softmax`` (``ops_kernels.linear_cross_entropy``) and ``rewards``: event type ->
    reward in [0, 1] scaling the target term of the cross-entropy (section 3.3; unlisted types
    get 1)."""

    name: Literal["top1", "bpr", "top1-max", "bpr-max", "cross-entropy", "full-softmax"] = "cross-entropy"
    n_sample: int | Literal["sqrt"] = "sqrt"
    sample_alpha: float = 0.75
    sampler: Literal["cdf", "alias"] = "alias"
    rewards: dict[str, float] = Field(default_factory=dict)

    @field_validator("n_sample")
    @classmethod
    def _check_n_sample(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"n_sample must be >= 0 or 'sqrt', got {v}")
        return v

    @field_validator("rewards")
    @classmethod
    def _check_rewards(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0.0 <= r <= 1.0}
        if bad:
            raise ValueError(f"rewards must lie in [0, 1] (section 3.3), got {bad}")
        return v

    @model_validator(mode="after")
    def _rewards_need_ce(self) -> HRNNLossConfig:
        if self.rewards and self.name not in ("cross-entropy", "full-softmax"):
            raise ValueError(f"rewards scale the cross-entropy's target term: name must be cross-entropy or "
                             f"full-softmax, got {self.name!r}")
        return self

    def samples(self, n_items: int) -> int:
        """S for a catalog of ``n_items`` (0 under ``full-softmax``)."""
        if self.name == "full-softmax":
            return 0
        return max(1, round(math.sqrt(n_items))) if self.n_sample == "sqrt" else int(self.n_sample)


class HRNNMetaConfig(BaseModel):
    """Hyper-parameters of HRNN-meta (module docstring).

    ``inputs``: the per-event input fields (non-empty subset of item_id, item_features,
    feedback, time). ``embedding``: item-id embedding size; ``feature_dim``: per-field metadata
    embedding size; ``event_dim`` / ``time_dim``: event-type and time-bucket embedding sizes;
    ``mlp``: units of the input layer. ``item_features``: the columns of the data's
    ``item_meta.parquet`` used (needed by the ``item_features`` input and the meta decoder).
    ``session_gap_s``: the session-start bit is ``dt > session_gap_s``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: Literal["hrnn_meta"] = "hrnn_meta"
    inputs: tuple[Input, ...] = ("item_id", "time")
    layers: tuple[int, ...] = (100,)
    embedding: int = Field(64, ge=1)
    feature_dim: int = Field(16, ge=1)
    event_dim: int = Field(4, ge=1)
    time_dim: int = Field(8, ge=1)
    mlp: int = Field(100, ge=1)
    dropout_p_hidden: float = Field(0.2, ge=0.0, lt=1.0)
    memory: Literal["none", "session", "user"] = "session"
    session_gap_s: float = Field(1800.0, gt=0)
    item_features: tuple[str, ...] = ()
    decoder: Literal["id", "meta", "mixed"] = "id"
    meta_lambda: float = Field(0.5, ge=0.0, le=1.0)
    trend_bias: TrendBias = Field(default_factory=TrendBias)
    loss: HRNNLossConfig = Field(default_factory=HRNNLossConfig)

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("inputs must name at least one of item_id, item_features, feedback, time")
        if len(set(v)) != len(v):
            raise ValueError(f"inputs lists a field twice: {list(v)}")
        return v

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"layers must be positive GRU sizes, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check_features(self) -> HRNNMetaConfig:
        uses = "item_features" in self.inputs or self.decoder != "id"
        if uses and not self.item_features:
            raise ValueError("inputs item_features / decoder meta|mixed need model.item_features: the "
                             "item_meta.parquet columns to use (e.g. [genre])")
        if self.item_features and not uses:
            raise ValueError(f"model.item_features={list(self.item_features)} is unused: add item_features "
                             "to model.inputs or set model.decoder to meta or mixed")
        if len(set(self.item_features)) != len(self.item_features):
            raise ValueError(f"item_features lists a column twice: {list(self.item_features)}")
        return self

    def check_train(self, train: Any) -> None:
        """Checks across the job's sections (``TrainJobConfig`` calls it): ``memory: user`` runs
        on the data family's user sequences (``train.sequence_key: user``); ``memory: session``
        needs the session boundaries that user sequences do not keep."""
        key = getattr(train, "sequence_key", "session")
        if self.memory == "user" and key != "user":
            raise ValueError("model.memory=user carries the state across a user's sessions: set "
                             "train.sequence_key=user (each user's sessions become one sequence)")
        if self.memory == "session" and key == "user":
            raise ValueError("model.memory=session resets the state at session starts, but "
                             "train.sequence_key=user joins a user's sessions into one sequence: set "
                             "model.memory=user (breaks signalled by the time inputs) or "
                             "train.sequence_key=session")

    @property
    def session_context(self) -> bool:
        """The training data must carry per-event event type / value / user (the data family
        reads this)."""
        return "feedback" in self.inputs or self.memory == "user" or bool(self.loss.rewards)


# --------------------------------------------------------------------------------------
# per-event context, shared by training and scoring
# --------------------------------------------------------------------------------------


def event_context(a: SessionArrays, cfg: HRNNMetaConfig, value_stats: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Per-event inputs of ``a`` (E,) for the event at each position predicting the next one:
    ``bucket`` (time bucket of the delta to the next event of its sequence; 0 for a sequence's
    last event), ``start`` (that delta > ``session_gap_s``), ``event`` codes, ``value``
    standardized with ``value_stats`` (mean, std; missing -> 0) and ``reward`` of the event
    as a *target* (``loss.rewards`` by its event type). ``n_saturated``: deltas over a year."""
    e = a.n_events
    ts = a.ts if a.ts is not None else np.zeros(e)
    dt = np.zeros(e, dtype=np.float64)
    last = np.zeros(e, dtype=bool)
    last[np.maximum(a.offsets[1:] - 1, 0)[np.diff(a.offsets) > 0]] = True
    dt[:-1] = np.where(last[:-1], 0.0, ts[1:] - ts[:-1]) if e else dt[:-1]

    def name(i: int) -> str:
        s = int(np.searchsorted(a.offsets, i, side="right") - 1)
        return f"event {i} (sequence {s}, to the next event)"

    bucket = time_bucket(dt, name)
    ev = a.events if a.events is not None else np.zeros(e, dtype=np.int64)
    v = a.values if a.values is not None else np.full(e, np.nan, dtype=np.float32)
    mean, std = value_stats
    vz = np.where(np.isfinite(v), (v - mean) / (std if std > 0 else 1.0), 0.0).astype(np.float32)
    rw = np.ones(e, dtype=np.float32)
    if cfg.loss.rewards:
        table = np.array([cfg.loss.rewards.get(n, 1.0) for n in a.event_names], dtype=np.float32)
        rw = table[ev]
    return {"bucket": bucket, "start": (dt > cfg.session_gap_s).astype(np.float32), "event": ev,
            "value": vz, "reward": rw, "n_saturated": int((dt > MAX_DT_S).sum())}


class TrendIndex:
    """Causal trailing-window popularity (eq. 5): ``log q_j(t) = log(1 + #events of item j in
    [t - window, t))`` from the events ``(items, ts)`` given (add-one smoothing keeps items
    without recent events finite)."""

    def __init__(self, items: np.ndarray, ts: np.ndarray, n_items: int, window_h: float) -> None:
        self.window = float(window_h) * 3600.0
        self.t0 = float(ts.min()) if ts.size else 0.0
        t = np.asarray(ts, dtype=np.float64) - self.t0
        self.span = float(t.max() if t.size else 0.0) + self.window + 2.0
        self.keys = np.sort(np.asarray(items, dtype=np.float64) * self.span + t)
        self.n_items = int(n_items)

    def log_q(self, cols: np.ndarray, t: np.ndarray) -> torch.Tensor:
        """(B, C) float32: log(1 + count) of items ``cols`` (C,) before times ``t`` (B,)."""
        tt = np.clip(np.asarray(t, dtype=np.float64) - self.t0, -1.0, self.span - 1.0)
        base = np.asarray(cols, dtype=np.float64)[None, :] * self.span  # (1, C)
        hi = np.searchsorted(self.keys, base + tt[:, None], side="left")
        lo = np.searchsorted(self.keys, base + np.maximum(tt - self.window, -1.0)[:, None], side="left")
        return torch.from_numpy(np.log1p(hi - lo).astype(np.float32))


# --------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------

#: tensors whose size comes from the data (vocabularies), resized by ``load_state_dict``
_DATA_SIZED = ("Ev", "Ef", "bf", "item_feat", "slot_field", "event_vocab")


class HRNNMeta(nn.Module):
    """The HRNN-meta network, one session-parallel step at a time.

    Parameters (``N`` items, ``H`` = ``layers[-1]``): ``E`` (N, embedding) item-id input
    embedding; ``T`` (10, time_dim) time buckets; ``Ev`` (n_event_types, event_dim);
    ``Ef`` (V, feature_dim) metadata values of all fields (field f's ids offset by its start)
    and ``bf`` (V,) their decoder bias; ``inp`` the input layer; per GRU layer ``Wx``, ``Wrz``,
    ``Wh``, ``b`` as in GRU4Rec; ``Wy`` (N, H) / ``By`` (N,) the ID decoder; ``P``
    (n_fields * feature_dim, H) the metadata decoder. Buffers: ``item_feat`` (N, L) value ids
    (-1 = empty slot), ``slot_field`` (L,), ``field_start`` (n_fields,), ``cold`` (N,) items
    without training events, ``value_stats`` (2,) the feedback value's mean and std."""

    def __init__(self, cfg: HRNNMetaConfig, n_items: int) -> None:
        super().__init__()
        if n_items <= 0:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.cfg, self.n_items, self.layers = cfg, int(n_items), tuple(cfg.layers)
        self.sparse_rows = False
        self.n_fields = len(cfg.item_features)
        ins = set(cfg.inputs)
        d_in = 0
        self.E = nn.Parameter(torch.empty(n_items, cfg.embedding)) if "item_id" in ins else None
        d_in += cfg.embedding if "item_id" in ins else 0
        self.T = nn.Parameter(torch.empty(N_TIME_BUCKETS, cfg.time_dim)) if "time" in ins else None
        d_in += cfg.time_dim + 1 if "time" in ins else 0
        self.Ev = nn.Parameter(torch.empty(1, cfg.event_dim)) if "feedback" in ins else None
        d_in += cfg.event_dim + 1 if "feedback" in ins else 0
        d_in += self.n_fields * cfg.feature_dim if "item_features" in ins else 0
        if self.n_fields:
            self.Ef = nn.Parameter(torch.empty(self.n_fields, cfg.feature_dim))
            self.bf = nn.Parameter(torch.zeros(self.n_fields))
            self.register_buffer("item_feat", torch.zeros(n_items, self.n_fields, dtype=torch.long))
            self.register_buffer("slot_field", torch.arange(self.n_fields, dtype=torch.long))
            self.register_buffer("field_start", torch.arange(self.n_fields, dtype=torch.long))
        else:
            self.Ef = self.bf = None
        self.inp = nn.Linear(d_in, cfg.mlp)
        self.Wx, self.Wrz, self.Wh, self.b = (nn.ParameterList() for _ in range(4))
        n_in = cfg.mlp
        for h in self.layers:
            self.Wx.append(nn.Parameter(torch.empty(n_in, 3 * h)))
            self.Wrz.append(nn.Parameter(torch.empty(h, 2 * h)))
            self.Wh.append(nn.Parameter(torch.empty(h, h)))
            self.b.append(nn.Parameter(torch.zeros(3 * h)))
            n_in = h
        h_last = self.layers[-1]
        self.Wy = nn.Parameter(torch.empty(n_items, h_last)) if cfg.decoder != "meta" else None
        self.By = nn.Parameter(torch.zeros(n_items)) if cfg.decoder != "meta" else None
        self.P = nn.Parameter(torch.empty(self.n_fields * cfg.feature_dim, h_last)) if cfg.decoder != "id" else None
        self.register_buffer("cold", torch.zeros(n_items, dtype=torch.bool))
        self.register_buffer("value_stats", torch.tensor([0.0, 1.0]))
        #: the training event types (code i = name i, code 0 = unknown), UTF-8 JSON bytes: the
        #: checkpoint alone maps a served event's name to its code
        self.register_buffer("event_vocab", torch.tensor(list(b'[""]'), dtype=torch.uint8))
        self.reset_parameters()

    # ---- data-sized tables ---------------------------------------------------------------
    def set_data(self, item_features: Any = None, n_event_types: int = 1,
                 cold: np.ndarray | None = None, value_stats: tuple[float, float] = (0.0, 1.0),
                 event_names: Sequence[str] | None = None) -> None:
        """Size the vocabulary tables for the data (before the optimiser is built) and store
        the item metadata ids, the cold-item mask and the value statistics."""
        if self.Ev is not None:
            self.Ev = nn.Parameter(torch.empty(max(1, int(n_event_types)), self.cfg.event_dim))
        if self.n_fields:
            if item_features is None:
                raise ValueError(f"model.item_features={list(self.cfg.item_features)}: the training data "
                                 "carries no item metadata")
            if tuple(item_features.names) != tuple(self.cfg.item_features):
                raise ValueError(f"item metadata fields {list(item_features.names)} != model.item_features "
                                 f"{list(self.cfg.item_features)}")
            sizes = np.asarray(item_features.vocab_sizes, dtype=np.int64)
            start = np.r_[0, np.cumsum(sizes)[:-1]]
            ids = np.asarray(item_features.ids, dtype=np.int64)
            slot = np.asarray(item_features.slot_field, dtype=np.int64)
            gid = np.where(ids >= 0, ids + start[slot][None, :], -1)
            self.Ef = nn.Parameter(torch.empty(int(sizes.sum()), self.cfg.feature_dim))
            self.bf = nn.Parameter(torch.zeros(int(sizes.sum())))
            self.item_feat = torch.from_numpy(gid)
            self.slot_field = torch.from_numpy(slot)
            self.field_start = torch.from_numpy(start)
        if cold is not None:
            self.cold = torch.as_tensor(np.asarray(cold, dtype=bool))
        self.value_stats = torch.tensor([float(value_stats[0]), float(value_stats[1])])
        if event_names is not None:
            raw = json.dumps(list(event_names), separators=(",", ":")).encode("utf-8")
            self.event_vocab = torch.tensor(list(raw), dtype=torch.uint8)

    def event_names(self) -> tuple[str, ...]:
        """The training event types by code (``""`` = code 0, unknown)."""
        return tuple(json.loads(bytes(self.event_vocab.tolist()).decode("utf-8")))

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        if "event_vocab" not in state:  # a checkpoint from before the event vocabulary was kept
            state = {**state, "event_vocab": torch.tensor(list(b'[""]'), dtype=torch.uint8)}
        for k in _DATA_SIZED:  # a fresh build has 1-row vocabularies: take the checkpoint's sizes
            cur = getattr(self, k, None)
            if cur is not None and k in state and tuple(cur.shape) != tuple(state[k].shape):
                new = torch.empty_like(state[k], device=cur.device)
                if isinstance(cur, nn.Parameter):
                    setattr(self, k, nn.Parameter(new))
                else:
                    setattr(self, k, new)
        return super().load_state_dict(state, strict=strict, assign=assign)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GRU4Rec's per-block uniform init for every weight block; biases zero."""
        g = generator
        for t in (self.E, self.T, self.Ev, self.Ef):
            if t is not None:
                _uniform_block_(t, t.shape[0], t.shape[1], g)
        if self.bf is not None:
            nn.init.zeros_(self.bf)
        _uniform_block_(self.inp.weight, self.inp.in_features, self.inp.out_features, g)
        nn.init.zeros_(self.inp.bias)
        for wx, wrz, wh, b, h in zip(self.Wx, self.Wrz, self.Wh, self.b, self.layers):
            for k in range(3):
                _uniform_block_(wx[:, k * h: (k + 1) * h], wx.shape[0], h, g)
            for k in range(2):
                _uniform_block_(wrz[:, k * h: (k + 1) * h], h, h, g)
            _uniform_block_(wh, h, h, g)
            nn.init.zeros_(b)
        if self.Wy is not None:
            _uniform_block_(self.Wy, self.n_items, self.layers[-1], g)
            nn.init.zeros_(self.By)
        if self.P is not None:
            _uniform_block_(self.P, self.P.shape[0], self.P.shape[1], g)

    def init_hidden(self, batch_size: int, device: torch.device | None = None) -> list[torch.Tensor]:
        dev = device if device is not None else self.inp.weight.device
        return [torch.zeros(batch_size, h, device=dev) for h in self.layers]

    # ---- metadata ------------------------------------------------------------------------
    def feature_means(self, items: torch.Tensor) -> torch.Tensor:
        """(C, n_fields * feature_dim): per field, the mean embedding of the items' values."""
        ids = self.item_feat.index_select(0, items)  # (C, L)
        mask = (ids >= 0).to(self.Ef.dtype)  # (C, L)
        emb = F.embedding(ids.clamp_min(0), self.Ef) * mask.unsqueeze(2)  # (C, L, d)
        onehot = F.one_hot(self.slot_field, self.n_fields).to(self.Ef.dtype)  # (L, F)
        sums = torch.einsum("cld,lf->cfd", emb, onehot)  # (C, F, d)
        cnt = (mask @ onehot).clamp_min(1.0)  # (C, F)
        return (sums / cnt.unsqueeze(2)).reshape(items.shape[0], -1)

    def feature_bias(self, items: torch.Tensor) -> torch.Tensor:
        """(C,) b(f_j): the sum over fields of the mean value bias."""
        ids = self.item_feat.index_select(0, items)  # (C, L)
        mask = (ids >= 0).to(self.bf.dtype)
        vals = F.embedding(ids.clamp_min(0), self.bf.unsqueeze(1)).squeeze(2) * mask  # (C, L)
        onehot = F.one_hot(self.slot_field, self.n_fields).to(self.bf.dtype)  # (L, F)
        return ((vals @ onehot) / (mask @ onehot).clamp_min(1.0)).sum(1)

    # ---- one step ------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, hidden: list[torch.Tensor], ctx: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """items (B,) the current events' items, ``ctx`` their ``bucket`` (B,) long, ``start``
        (B,), ``event`` (B,) long, ``value`` (B,) -> (out (B, H), new hidden)."""
        parts = []
        ins = self.cfg.inputs
        for name in ins:
            if name == "item_id":
                parts.append(gather_rows(self.E, items, self.sparse_rows, "E"))
            elif name == "item_features":
                parts.append(self.feature_means(items))
            elif name == "feedback":
                parts.append(F.embedding(ctx["event"].clamp(0, self.Ev.shape[0] - 1), self.Ev))
                parts.append(ctx["value"].unsqueeze(1).to(self.Ev.dtype))
            else:  # time
                parts.append(F.embedding(ctx["bucket"], self.T))
                parts.append(ctx["start"].unsqueeze(1).to(self.T.dtype))
        x = torch.tanh(self.inp(torch.cat(parts, 1)))  # (B, mlp)
        p_h = self.cfg.dropout_p_hidden if self.training else 0.0
        new_hidden = []
        for li in range(len(self.layers)):
            gx = torch.addmm(self.b[li], x, self.Wx[li])  # (B, 3H)
            h = gru_step(gx, hidden[li], self.Wrz[li], self.Wh[li])  # (B, H)
            if p_h > 0.0:
                h = F.dropout(h, p_h, training=True)
            new_hidden.append(h)
            x = h
        return x, new_hidden

    # ---- decoder (eq. 2) -----------------------------------------------------------------
    def score_cols(self, out: torch.Tensor, cols: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
        """(B, C) eq. 2 scores of items ``cols`` with per-row ``lam`` (B,) (None: the decoder's
        fixed lam, 0 for ``id``, 1 for ``meta``). ID tables are not read when every lam is 1."""
        d = self.cfg.decoder
        s_id = s_meta = None
        all_meta = d == "meta" or (lam is not None and bool((lam >= 1.0).all()))
        if not all_meta:
            w = gather_rows(self.Wy, cols, self.sparse_rows, "Wy")
            b = gather_rows(self.By, cols, self.sparse_rows, "By")
            s_id = torch.addmm(b, out, w.t())
        if d != "id" and (lam is None or bool((lam > 0.0).any())):
            s_meta = torch.addmm(self.feature_bias(cols), out, (self.feature_means(cols) @ self.P).t())
        if s_meta is None:
            return s_id
        if s_id is None:
            return s_meta
        lam = lam.unsqueeze(1).to(out.dtype)
        return (1.0 - lam) * s_id + lam * s_meta

    def item_lambda(self) -> torch.Tensor:
        """(N,) inference lam per item: 0 (``id``), 1 (``meta``), ``meta_lambda`` for warm and 1
        for cold items (``mixed``, section 2.3)."""
        d = self.cfg.decoder
        if d == "id":
            return torch.zeros(self.n_items, device=self.cold.device)
        if d == "meta":
            return torch.ones(self.n_items, device=self.cold.device)
        return torch.where(self.cold, 1.0, float(self.cfg.meta_lambda))

    @torch.no_grad()
    def folded_decoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2 at inference folded into one ``(N, H)`` matrix and ``(N,)`` bias:
        ``(1 - lam_j) w_j + lam_j w(f_j)``, ``(1 - lam_j) b_j + lam_j b(f_j)``."""
        lam = self.item_lambda().unsqueeze(1)  # (N, 1)
        w = torch.zeros(self.n_items, self.layers[-1], device=lam.device)
        b = torch.zeros(self.n_items, device=lam.device)
        if self.Wy is not None:
            w, b = w + (1 - lam) * self.Wy, b + (1 - lam[:, 0]) * self.By
        if self.P is not None:
            allj = torch.arange(self.n_items, device=lam.device)
            w = w + lam * (self.feature_means(allj) @ self.P)
            b = b + lam[:, 0] * self.feature_bias(allj)
        return w, b


def build(cfg: HRNNMetaConfig, n_items: int) -> HRNNMeta:
    """Registry builder (vocabulary tables are sized by ``set_data`` or by the checkpoint)."""
    return HRNNMeta(cfg, n_items)


# --------------------------------------------------------------------------------------
# scoring (SessionScorer / ServableScorer)
# --------------------------------------------------------------------------------------


class HRNNScorer:
    """The ``next_item`` scorer: the folded decoder (eq. 2) plus the trend bias (eq. 5).

    Bound to ``arrays`` (the evaluated sessions), it reads each event's context by the flat
    positions the protocol passes (``uses_event_positions``): the time to the next event,
    event type and value, encoded by :func:`event_context` exactly as in training; without
    ``arrays`` or positions the context is "no time elapsed, unknown event"."""

    def __init__(self, model: HRNNMeta, arrays: SessionArrays | None = None, trend: TrendIndex | None = None) -> None:
        self.model = model.eval()
        self.n_items = model.n_items
        self.w, self.bias = model.folded_decoder()
        self.trend = trend if model.cfg.trend_bias.weight != 0.0 else None
        self.arrays = arrays
        self.uses_event_positions = arrays is not None
        self.ctx = None
        #: the scores are softmax logits: the protocol reports the next item's perplexity
        self.reports_ppl = True
        #: serving replays the user's stored events (``memory: user``) or the live session's
        self.context_scope = "user" if model.cfg.memory == "user" else "session"
        self._codes = {n: i for i, n in enumerate(model.event_names())}
        if arrays is not None:
            vs = model.value_stats.tolist()
            self.ctx = {k: torch.from_numpy(np.asarray(v)) for k, v in
                        event_context(arrays, model.cfg, (vs[0], vs[1])).items() if k != "n_saturated"}

    def init_state(self, batch_size: int) -> list[torch.Tensor]:
        return self.model.init_hidden(batch_size)

    def event_code(self, name: str | None) -> int:
        """The training code of an event type (0 = unknown: a type training never saw)."""
        return self._codes.get(name or "", 0)

    def _context(self, positions: torch.Tensor | None, b: int) -> dict[str, torch.Tensor]:
        dev = self.w.device
        if positions is None or self.ctx is None:
            z = torch.zeros(b, dtype=torch.long, device=dev)
            return {"bucket": z, "start": z.float(), "event": z, "value": z.float()}
        p = positions.cpu().long()
        return {k: self.ctx[k][p].to(dev) for k in ("bucket", "start", "event", "value")}

    @torch.no_grad()
    def step(self, state, items, reset, positions: torch.Tensor | None = None):
        dev = self.w.device
        items = torch.as_tensor(items, dtype=torch.long, device=dev)
        reset = torch.as_tensor(reset, dtype=torch.bool, device=dev)
        if self.model.cfg.memory == "none":
            reset = torch.ones_like(reset)
        keep = (~reset).to(state[0].dtype).unsqueeze(1)
        state = [h * keep for h in state]
        out, state = self.model(items, state, self._context(positions, items.shape[0]))
        s = torch.addmm(self.bias, out, self.w.t())  # (B, N)
        if self.trend is not None and positions is not None:
            t_next = self.arrays.ts[positions.cpu().numpy() + 1]
            lq = self.trend.log_q(np.arange(self.n_items), t_next).to(dev)
            s = s + self.model.cfg.trend_bias.weight * lq
        return s, state

    def select(self, state, rows):
        rows = torch.as_tensor(rows, dtype=torch.long, device=state[0].device)
        return [h.index_select(0, rows) for h in state]

    @torch.no_grad()
    def encode(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, H) after each item sequence (no time elapsed between events, unknown event type)."""
        b = len(sequences)
        hidden = self.model.init_hidden(b)
        lens = [len(s) for s in sequences]
        for t in range(max(lens)):
            items = torch.tensor([s[min(t, len(s) - 1)] for s in sequences], dtype=torch.long)
            reset = torch.zeros(b, dtype=torch.bool) if t else torch.ones(b, dtype=torch.bool)
            _, new = self.step(hidden, items, reset)  # scores unused
            live = torch.tensor([n > t for n in lens]).unsqueeze(1)
            hidden = [torch.where(live, n, h) for n, h in zip(new, hidden)]
        return hidden[-1]

    @torch.no_grad()
    def encode_events(self, rows: Sequence[Sequence[tuple]], now_s: Sequence[float]) -> torch.Tensor:
        """(B, H) after each row's events ``(item_idx, ts_s, event_code, value)`` (oldest first;
        ``event_code`` into the training event types, 0 = unknown; ``value`` NaN = none), with
        the per-event context of training (:func:`event_context`): each event's time delta is
        to the next event, the last one's to ``now_s[b]``, the prediction moment (in serving
        the request time).  A negative delta is a ValueError naming the row and the event."""
        b = len(rows)
        if b == 0 or any(len(r) == 0 for r in rows):
            raise ValueError("encode_events: every row needs at least one event")
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(lens)]
        flat = [e for r in rows for e in r]
        items = np.array([int(e[0]) for e in flat], dtype=np.int64)
        ts = np.array([float(e[1]) for e in flat], dtype=np.float64)
        events = np.array([int(e[2]) for e in flat], dtype=np.int64)
        values = np.array([np.nan if e[3] is None else float(e[3]) for e in flat], dtype=np.float32)
        dt = np.empty(items.size, dtype=np.float64)
        dt[:-1] = ts[1:] - ts[:-1]
        dt[offsets[1:] - 1] = np.asarray(now_s, dtype=np.float64) - ts[offsets[1:] - 1]

        def name(i: int) -> str:
            r = int(np.searchsorted(offsets, i, side="right") - 1)
            return f"row {r}, event {i - int(offsets[r])} (to the {'request' if i == offsets[r + 1] - 1 else 'next event'})"

        cfg = self.model.cfg
        mean, std = self.model.value_stats.tolist()
        ctx = {"bucket": torch.from_numpy(time_bucket(dt, name)),
               "start": torch.from_numpy((dt > cfg.session_gap_s).astype(np.float32)),
               "event": torch.from_numpy(np.clip(events, 0, None)),
               "value": torch.from_numpy(np.where(np.isfinite(values), (values - mean) / (std or 1.0),
                                                  0.0).astype(np.float32))}
        dev = self.w.device
        hidden = self.model.init_hidden(b, dev)
        for t in range(int(lens.max())):
            live = np.flatnonzero(lens > t)
            pos = torch.from_numpy(offsets[live] + t)
            h = [x.index_select(0, torch.from_numpy(live).to(dev)) for x in hidden]
            if t == 0 or cfg.memory == "none":
                h = [torch.zeros_like(x) for x in h]
            out, h = self.model(torch.from_numpy(items).index_select(0, pos).to(dev), h,
                                {k: v.index_select(0, pos).to(dev) for k, v in ctx.items()})
            for x, y in zip(hidden, h):
                x[torch.from_numpy(live).to(dev)] = y
        return hidden[-1]

    def topk(self, encoded, k: int, exclude=None, item_mask=None):
        """Fused top-K over the folded decoder (``ops_kernels.topk_scores``)."""
        return topk_scores(encoded, self.w, k, self.bias, exclude, item_mask=item_mask)


# --------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------


def rewarded_sampled_ce(scores: torch.Tensor, cols: torch.Tensor, log_q: torch.Tensor | None, logq: float,
                        rewards: torch.Tensor, mask_sample_hits: bool = True) -> torch.Tensor:
    """Section 3.3's one-against-all loss over the (B, B + S) block: the mean over rows of
    ``logsumexp_j z_ij - r_i z_ii`` with ``z = s - logq * log_q`` (eq. 4) and accidental hits
    out of the partition; ``r = 1`` is the sampled cross-entropy."""
    b = scores.shape[0]
    z = scores if log_q is None or logq == 0.0 else scores - logq * log_q.unsqueeze(0)
    keep = negative_mask(cols[:b], cols, mask_sample_hits)
    keep[:, :b].fill_diagonal_(True)
    lse = torch.logsumexp(z.masked_fill(~keep, float("-inf")), 1)  # (B,)
    return (lse - rewards.to(z.dtype) * z[:, :b].diagonal()).mean()


# --------------------------------------------------------------------------------------
# training task
# --------------------------------------------------------------------------------------


class HRNNStep(nn.Module):
    """One window of ``bptt`` session-parallel steps inside ``forward`` (DDP / DeepSpeed see
    all of it: one forward, one backward per optimiser step): per step the rows that continue
    are kept, finished rows reset, then the GRU step and either the sampled (B, C) scores or,
    with ``full``, the per-row full-softmax cross-entropy and target scores."""

    def __init__(self, model: HRNNMeta) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden, steps, full: bool = False):
        """``steps``: per step ``(keep, mask, x, ctx, cols, lam, trend_lq, targets)`` (``keep``
        (B,) long rows of the previous state or None, ``mask`` (B,) 0 where the row starts a
        new sequence or None) -> (per-step results, the hidden state after the window)."""
        outs = []
        for keep, mask, x, ctx, cols, lam, trend_lq, targets in steps:
            if keep is not None:
                hidden = [h.index_select(0, keep) for h in hidden]
            if mask is not None:
                hidden = [h * mask.unsqueeze(1) for h in hidden]
            res, hidden = self.step(x, hidden, ctx, cols, lam, trend_lq, full, targets)
            outs.append(res)
        return outs, hidden

    def step(self, x, hidden, ctx, cols, lam, trend_lq, full: bool = False, targets=None):
        m = self.model
        out, hidden = m(x, hidden, ctx)
        if not full:
            s = m.score_cols(out, cols, lam)
            if trend_lq is not None:
                s = s + m.cfg.trend_bias.weight * trend_lq
            return s, hidden
        # full softmax: fold the per-row mix into the hidden side (B, 2H + 2)
        d = m.cfg.decoder
        lam_c = (torch.zeros_like(out[:, 0]) if d == "id" else torch.ones_like(out[:, 0]) if d == "meta"
                 else lam).unsqueeze(1)
        hs, ws = [], []
        if m.Wy is not None:
            hs += [(1 - lam_c) * out, 1 - lam_c]
            ws += [m.Wy, m.By.unsqueeze(1)]
        if m.P is not None:
            allj = torch.arange(m.n_items, device=out.device)
            hs += [lam_c * out, lam_c]
            ws += [m.feature_means(allj) @ m.P, m.feature_bias(allj).unsqueeze(1)]
        hcat, wcat = torch.cat(hs, 1), torch.cat(ws, 1)
        if trend_lq is not None:  # a per-row bias: the dense (B, N) block
            s = hcat @ wcat.t() + m.cfg.trend_bias.weight * trend_lq
            ce = torch.logsumexp(s, 1) - s.gather(1, targets.unsqueeze(1)).squeeze(1)
            return (ce, s.gather(1, targets.unsqueeze(1)).squeeze(1)), hidden
        ce = linear_cross_entropy(hcat, wcat, targets, reduction="none")
        return (ce, (hcat * wcat.index_select(0, targets)).sum(1)), hidden


class HRNNTask:
    """HRNN-meta's training on GRU4Rec's machinery: session-parallel batches over event
    positions (so every row's context is at hand), the sampler + logQ of
    :mod:`rayrec.models.samplers`, the sampled losses (or :func:`rewarded_sampled_ce`) and
    truncated back-propagation over ``train.bptt`` steps (one optimiser step per window).

    The sequences are the data family's: sessions, or with ``train.sequence_key: user`` (which
    ``memory: user`` requires) each user's sessions joined, whose breaks only the time inputs
    signal."""

    parallelism = "data"
    supports_bptt = True

    def __init__(self, job) -> None:
        self.cfg: HRNNMetaConfig = job.model
        self.batch_size = int(job.train.batch_size)
        self.shuffle = bool(job.train.shuffle)
        self.bptt = int(getattr(job.train, "bptt", 1))

    def build(self, env, generator: torch.Generator) -> nn.Module:
        cfg = self.cfg
        a = env.train
        self.train = a
        v = a.values if a.values is not None else np.zeros(0, np.float32)
        v = v[np.isfinite(v)]
        stats = (float(v.mean()), float(v.std()) or 1.0) if v.size else (0.0, 1.0)
        if cfg.item_features and a.item_features is None:
            raise ValueError(f"model.item_features={list(cfg.item_features)}: the training data carries no "
                             "item metadata (item_meta.parquet)")
        unknown = sorted(set(cfg.loss.rewards) - set(a.event_names))
        if unknown:  # a typo would silently train every event at reward 1
            raise ValueError(f"model.loss.rewards: event type(s) {unknown} are not in the training data; "
                             f"its event types: {[n for n in a.event_names if n]}")
        model = HRNNMeta(cfg, env.n_items)
        model.set_data(a.item_features, len(a.event_names), np.asarray(env.train_counts) == 0, stats,
                       a.event_names)
        model.reset_parameters(generator)
        model.sparse_rows = env.sparse_rows
        ctx = event_context(a, cfg, stats)
        if ctx["n_saturated"]:
            env.log(f"hrnn_meta: {ctx['n_saturated']} time delta(s) over 365 days saturate the last bucket")
        self.ctx = {k: torch.from_numpy(np.asarray(x)) for k, x in ctx.items() if k != "n_saturated"}
        self.n_saturated = ctx["n_saturated"]
        self.positions = SessionArrays(a.offsets, np.arange(a.n_events, dtype=np.int64))
        self.steps_per_epoch = self._steps(self.batch_size)
        self.trend = (TrendIndex(a.items, a.ts, env.n_items, cfg.trend_bias.window_h)
                      if cfg.trend_bias.weight != 0.0 else None)
        lc = cfg.loss
        self.full = lc.name == "full-softmax"
        self.n_sample = lc.samples(env.n_items)
        self.sampler = None
        if self.n_sample > 0:
            self.sampler = make_sampler(lc.sampler, env.train_counts, lc.sample_alpha, lc.sample_store_size,
                                        torch.Generator().manual_seed(env.seed + 17))
        self.logq = None
        if lc.name == "cross-entropy" and lc.logq > 0:
            lq_t, lq_s = logq_tables(env.train_counts, self.batch_size, self.sampler, self.n_sample, lc.logq_mode)
            self.logq = (lq_t.to(env.device), lq_s.to(env.device))
        self.device, self.n_items = env.device, env.n_items
        return HRNNStep(model)

    def item_tables(self, module: HRNNStep) -> list[nn.Parameter]:
        """Row-sparse item tables: the item-id input ``E`` and (sampled losses) ``Wy``, ``By``."""
        m = module.model
        out = [m.E] if m.E is not None else []
        return out + ([m.Wy, m.By] if (m.Wy is not None and not self.full) else [])

    def item_state_dims(self, module: HRNNStep) -> dict[str, int]:
        m = module.model
        return {k: 0 for k, t in (("E", m.E), ("Wy", m.Wy), ("By", m.By)) if t is not None}

    def param_groups(self, module: nn.Module, lr: float) -> list[dict]:
        return [{"params": list(module.parameters())}]

    def _steps(self, batch_size: int) -> int:
        return sum(1 for _ in session_parallel_batches(self.positions, batch_size))

    def num_batches(self, env, batch_size: int) -> int:
        """Optimiser steps of an epoch: windows of ``bptt`` session-parallel steps."""
        steps = self.steps_per_epoch if batch_size == self.batch_size else self._steps(batch_size)
        return -(-steps // self.bptt)

    def batches(self, env, module: HRNNStep, epoch: int, batch_size: int, rng):
        """Windows of ``bptt`` consecutive session-parallel steps: per step the rows kept from
        the previous step, the reset mask, inputs, targets and context; plus the state before
        the window (a zero-weighted padding step repeats the last window from it)."""
        if self.sampler is not None:
            steps = self.steps_per_epoch if batch_size == self.batch_size else self._steps(batch_size)
            need = steps * self.n_sample
            self.sampler.reseed(torch.Generator().manual_seed(env.seed * 7919 + 17 + epoch),
                                max(1, min(self.cfg.loss.sample_store_size, need)))
        self.hidden = [h.to(self.device) for h in module.model.init_hidden(batch_size)]
        items = torch.from_numpy(self.train.items)
        ts = self.train.ts
        dev = self.device
        rows = batch_size  # rows of the state before the step
        window: list = []
        for p_in, p_out, reset, keep in session_parallel_batches(self.positions, batch_size, self.shuffle, rng):
            keep_t = torch.from_numpy(keep).to(dev) if keep.shape[0] != rows else None
            rows = p_in.shape[0]
            if self.cfg.memory == "none":
                reset = np.ones_like(reset)
            mask = torch.from_numpy(~reset).to(device=dev, dtype=torch.float32) if reset.any() else None
            pi, po = torch.from_numpy(p_in), torch.from_numpy(p_out)
            ctx = {k: self.ctx[k][pi].to(dev) for k in ("bucket", "start", "event", "value")}
            window.append((keep_t, mask, items[pi].to(dev), items[po].to(dev), ctx,
                           self.ctx["reward"][po].to(dev), ts[p_out] if self.trend is not None else None))
            if len(window) == self.bptt:
                yield window, [h.clone() for h in self.hidden]
                window = []
        if window:
            yield window, [h.clone() for h in self.hidden]

    def loss(self, forward, batch, pad: bool = False) -> tuple[torch.Tensor, int]:
        window, h_start = batch
        cfg = self.cfg
        steps, aux = [], []
        for keep, mask, x, y, ctx, reward, t_next in window:
            lam = torch.rand(x.shape[0], device=self.device) if cfg.decoder == "mixed" else None
            smp = None
            if self.full:
                lq = (self.trend.log_q(np.arange(self.n_items), t_next).to(self.device)
                      if self.trend is not None else None)
                cols = None
            else:
                if self.n_sample:
                    smp = self.sampler.sample(self.n_sample).to(self.device)
                    cols = torch.cat([y, smp])
                else:
                    cols = y
                lq = self.trend.log_q(cols.cpu().numpy(), t_next).to(self.device) if self.trend is not None else None
            steps.append((keep, mask, x, ctx, cols, lam, lq, y if self.full else None))
            aux.append((y, reward, cols, smp))
        h0 = h_start if pad else self.hidden
        outs, new_hidden = forward(h0, steps, self.full)
        losses, counts = [], []
        for res, (y, reward, cols, smp) in zip(outs, aux):
            if self.full:
                ce, s_t = res
                loss = (ce + (1.0 - reward) * s_t).mean()  # section 3.3: -(r z_t - lse)
            else:
                log_q = None
                if self.logq is not None:
                    lq_t, lq_s = self.logq
                    log_q = lq_t[y] if smp is None else torch.cat([lq_t[y], lq_s[smp]])
                if cfg.loss.rewards and cfg.loss.name == "cross-entropy":
                    loss = rewarded_sampled_ce(res.float(), cols, log_q, cfg.loss.logq, reward,
                                               cfg.loss.mask_sample_hits)
                else:
                    loss = sampled_loss(cfg.loss, res.float(), cols, log_q)
            losses.append(loss)
            counts.append(int(y.shape[0]))
        if not pad:
            self.hidden = [h.detach() for h in new_hidden]
        n = sum(counts)
        if len(losses) == 1:
            return losses[0], n
        return sum(loss * c for loss, c in zip(losses, counts)) / n, n  # the mean over the window's rows

    def evaluate(self, env, module: nn.Module, ks, batch_size: int) -> dict:
        model = module.model if isinstance(module, HRNNStep) else module
        trend = None
        if self.cfg.trend_bias.weight != 0.0:  # causal: every observed event before t counts
            v = env.valid
            trend = TrendIndex(np.r_[self.train.items, v.items], np.r_[self.train.ts, v.ts], env.n_items,
                               self.cfg.trend_bias.window_h)
        return env.evaluate(HRNNScorer(model, env.valid, trend), env.valid, ks, batch_size)

    def epoch_metrics(self, env, module) -> dict:
        return {"time_deltas_saturated": int(self.n_saturated)}

    def full_state(self, env, module: HRNNStep) -> dict[str, torch.Tensor]:
        return module.model.state_dict()

    def load_full_state(self, env, module: HRNNStep, state: dict[str, torch.Tensor]) -> None:
        module.model.load_state_dict(state)


def _register() -> None:
    from rayrec.models import registry

    registry.register(registry.ModelSpec(
        name="hrnn_meta", config_cls=HRNNMetaConfig, build=build, kind="session",
        scorer=HRNNScorer, task=HRNNTask, default_config="hrnn_meta_ml100k.yaml",
        job_defaults={"optim": {"name": "adagrad_momentum", "lr": 0.05, "momentum": 0.2}},
    ))


_register()
