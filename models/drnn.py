"""DRNN (seed 004, Wu et al., ICDE 2016): a deep RNN over the last pages with a history state.

Readings of the slides (issue 18), each tested in ``tests/unit/test_drnn.py``:

* **Update** ("Deep RNN Model with Infinite State"): every state has l layers,
  ``a_i(t) = f_i(W_i a_i(t-1) + Z_i a_{i-1}(t) + b_i)``.  Layer 1 reads the page one-hot
  V_t plus θ(p_t): ``Z_1 [V_t; θ(p_t)] = E[p_t] + θ(p_t) u`` (an embedding lookup through
  ``gather_rows``, so the item table takes row-sparse gradients, and a learned vector u).
  θ is one learned scalar per item, kept > 0 by a softplus (else it cannot weigh the
  history); it starts at 1.
* **History**: the window is the last w = ``model.states`` pages; the older pages
  p_0..p_{x-w} give ``V̄ = Σ_i ε_i V_i`` with ``ε_i = θ(p_i) / Σ_{j=i}^{x-w} θ(p_j)``
  (:func:`history_weights`).  V̄ runs through a column of l layers without loss
  (``c_1 = f_1(Z_1 V̄ + b_1)``, ``c_i = f_i(Z_i c_{i-1} + b_i)``, the window's weights) that
  is the first window state's t-1 (Algorithm 1 lines 12-18).  When x <= w there are no older
  pages and the column is unused: the first state's t-1 is zero, exactly as with
  ``model.history: false``.  "4 state, One history state" = ``states: 4`` + the column.
* **Sequence**: the page sequence is what ``train.sequence_key`` makes it: a ``session``
  (the slides' reading, default; the state resets at every session) or a ``user``'s
  sessions joined in time (our extension; the history carries across the user's sessions,
  a new user starts fresh).
* **Loss**: every window state has a softmax over all items predicting its next page
  (lines 10-11), computed with ``ops_kernels.linear_cross_entropy`` (no (B, N) logits);
  the batch loss is the mean over all window states.  Training makes one window per
  (page, next page) pair, so each pair is the last state's target once per epoch.
* **Shortcut** h = ``model.shortcut`` (lines 19-24): a state's loss reads its top layer
  and its h lowest layers, 0 <= h < l.  Scores are one linear map of that vector, so
  serving uses the fused ``topk_scores``.
* **Table I**: "1000,100" over 3 layers read as ``[1000, 100, 100]``; ReLU; Xavier
  initialisation (biases 0); SGD, lr 0.1 divided by 5 every 100 epochs
  (``optim.lr_step_epochs: 100``, ``optim.lr_step_gamma: 0.2``); batch 9000.

Not here (issue 18, left for later): the FNN and the DRNN+FNN product of experts.
The structure keys are validated by :func:`rayrec.models.layers.check_structure` with the
key path in the error (``model.layers[2].activation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from rayrec.models import layers as codegen
from rayrec.models import registry
from rayrec.models.contract import TaskEnv
from rayrec.ops_kernels import gather_rows_multi, linear_cross_entropy, topk_scores

__all__ = ["DRNN", "DRNNConfig", "DRNNScorer", "DRNNTask", "LayerSpec", "build", "history_weights",
           "training_windows"]

NAME = "drnn"
_THETA0 = math.log(math.e - 1.0)  # softplus(_THETA0) == 1

_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda x: x}


class LayerSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    units: int = Field(ge=1)
    activation: Literal["relu", "tanh", "sigmoid", "identity"] = "relu"


def _table1_layers() -> tuple[LayerSpec, ...]:
    return (LayerSpec(units=1000), LayerSpec(units=100), LayerSpec(units=100))


class DRNNConfig(BaseModel):
    """``states`` (w): window length; ``layers``: ``{units, activation}`` per layer of a state;
    ``shortcut`` (h): lowest layers the loss also reads; ``history``: the V̄ column."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: Literal["drnn"] = NAME
    states: int = Field(4, ge=1)
    """w: the last w pages of the sequence get one RNN state each (the window)."""
    layers: tuple[LayerSpec, ...] = Field(default_factory=_table1_layers)
    """The l layers of every state, ``{units, activation}`` each (relu, tanh, sigmoid, identity)."""
    shortcut: int = Field(0, ge=0)
    """h, 0 <= h < l: each state's loss also reads its h lowest layers."""
    history: bool = True
    """The history column: the pages before the window, weighted by θ, feed the first state."""

    @model_validator(mode="before")
    @classmethod
    def _structure(cls, data: Any) -> Any:
        if isinstance(data, dict):
            raw = dict(data)
            if "shortcut" in raw and "layers" not in raw:
                raw["layers"] = [{"units": s.units, "activation": s.activation} for s in _table1_layers()]
            codegen.check_structure(raw)
        return data

    @property
    def units(self) -> list[int]:
        return [layer.units for layer in self.layers]

    @property
    def activations(self) -> list[str]:
        return [layer.activation for layer in self.layers]


def history_weights(theta: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """ε for the history pages of B rows, flat (T,) in row order, oldest first within a row
    (``offsets`` (B+1,)): ``ε_i = θ_i / Σ_{j >= i, same row} θ_j`` (the newest one is 1)."""
    if theta.numel() == 0:
        return theta
    rev = torch.flip(torch.cumsum(torch.flip(theta, (0,)), 0), (0,))  # Σ_{j >= i} over all rows
    rev = torch.cat([rev, rev.new_zeros(1)])
    lens = offsets[1:] - offsets[:-1]
    after = torch.repeat_interleave(rev[offsets[1:]], lens)  # Σ over the rows after i's row
    return theta / (rev[:-1] - after)


class DRNN(nn.Module):
    """Parameters: ``E`` (N, u_1) and ``u`` (u_1,) read the page and θ(p_t); ``theta_raw`` (N,);
    ``W.i`` (u_i, u_i), ``Z.i`` (u_i, u_{i-1}, i > 0; Z_0 is E), ``b.i`` (u_i,); the output
    ``out_W`` (N, D), ``out_b`` (N,)."""

    catalog_dims = {"E": 0, "theta_raw": 0, "out_W": 0, "out_b": 0}

    def __init__(self, cfg: DRNNConfig, n_items: int) -> None:
        super().__init__()
        self.cfg, self.n_items = cfg, int(n_items)
        units = cfg.units
        self.acts = [_ACT[a] for a in cfg.activations]
        self.E = nn.Parameter(torch.empty(n_items, units[0]))
        self.u = nn.Parameter(torch.empty(units[0]))
        self.theta_raw = nn.Parameter(torch.full((n_items,), _THETA0))
        self.W = nn.ParameterList([nn.Parameter(torch.empty(n, n)) for n in units])
        self.Z = nn.ParameterList([nn.Parameter(torch.empty(n, p)) for p, n in zip(units[:-1], units[1:],
                                                                                  strict=True)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(n)) for n in units])
        self.dim = codegen.output_dim(units, cfg.shortcut)
        self.out_W = nn.Parameter(torch.empty(n_items, self.dim))
        self.out_b = nn.Parameter(torch.zeros(n_items))
        self.sparse_rows = False  # the task turns it on for training (row-sparse item grads)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        def xavier(t: torch.Tensor, fan_in: int, fan_out: int) -> None:
            a = math.sqrt(6.0 / (fan_in + fan_out))
            t.uniform_(-a, a, generator=generator)

        with torch.no_grad():
            xavier(self.E, self.n_items, self.E.shape[1])
            xavier(self.u, 1, self.u.shape[0])
            self.theta_raw.fill_(_THETA0)
            for w in self.W:
                xavier(w, w.shape[1], w.shape[0])
            for z in self.Z:
                xavier(z, z.shape[1], z.shape[0])
            for b in self.b:
                b.zero_()
            xavier(self.out_W, self.dim, self.n_items)
            self.out_b.zero_()

    def theta(self, items: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.theta_raw.index_select(0, items))

    def states(self, window: torch.Tensor, hist_items: torch.Tensor, hist_offsets: torch.Tensor
               ) -> torch.Tensor:
        """Features (B, w, D) of every window state.  ``window`` (B, w) long, left-aligned
        (padding slots may hold any valid item: their features are ignored by the caller);
        ``hist_items`` (T,) the pages before each row's window, flat in row order with
        ``hist_offsets`` (B+1,)."""
        bsz, w = window.shape
        use_hist = self.cfg.history and hist_items.numel() > 0
        idx = [window.reshape(-1)] + ([hist_items] if use_hist else [])
        rows = gather_rows_multi(self.E, idx, self.sparse_rows and self.training, "drnn.E")
        th = gather_rows_multi(self.theta_raw, idx, self.sparse_rows and self.training, "drnn.theta")
        th = [F.softplus(t) for t in th]
        x = (rows[0] + th[0].unsqueeze(1) * self.u).view(bsz, w, -1)  # Z_1 [V_t; θ(p_t)]
        n = len(self.W)
        prev: list[torch.Tensor | None] = [None] * n
        if use_hist:  # the history column: V̄ through l layers, no loss, no recurrence
            eps = history_weights(th[1], hist_offsets)
            lens = hist_offsets[1:] - hist_offsets[:-1]
            row = torch.repeat_interleave(torch.arange(bsz, device=window.device), lens)
            vbar = rows[1].new_zeros(bsz, rows[1].shape[1]).index_add(0, row, eps.unsqueeze(1) * rows[1])
            has = (lens > 0).to(vbar.dtype).unsqueeze(1)  # rows with x <= w keep a zero t-1
            c = vbar
            for i in range(n):
                c = self.acts[i]((c if i == 0 else c @ self.Z[i - 1].t()) + self.b[i])
                prev[i] = c * has
        feats = []
        for j in range(w):
            a = x[:, j]
            layer_out = []
            for i in range(n):
                pre = (a if i == 0 else a @ self.Z[i - 1].t()) + self.b[i]
                if prev[i] is not None:
                    pre = pre + prev[i] @ self.W[i].t()
                a = self.acts[i](pre)
                layer_out.append(a)
            prev = layer_out
            feats.append(torch.cat([layer_out[-1]] + layer_out[:self.cfg.shortcut], dim=1))
        return torch.stack(feats, dim=1)

    def encode(self, window: torch.Tensor, wlen: torch.Tensor, hist_items: torch.Tensor,
               hist_offsets: torch.Tensor) -> torch.Tensor:
        """(B, D): the last window state's features (what the next page is scored from)."""
        f = self.states(window, hist_items, hist_offsets)
        return f[torch.arange(f.shape[0], device=f.device), wlen - 1]

    def forward(self, window: torch.Tensor, wlen: torch.Tensor, hist_items: torch.Tensor,
                hist_offsets: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy over every window state's next page (``targets``
        (B, w), -1 in padding slots)."""
        f = self.states(window, hist_items, hist_offsets)
        keep = targets >= 0
        return linear_cross_entropy(f[keep], self.out_W, targets[keep], self.out_b)

    @torch.no_grad()
    def topk(self, encoded: torch.Tensor, k: int, exclude: list[list[int]] | None = None,
             item_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return topk_scores(encoded, self.out_W, k, self.out_b, exclude, item_mask=item_mask)


def build(cfg: DRNNConfig, n_items: int) -> DRNN:
    return DRNN(cfg, n_items)


def _window_inputs(seqs: Sequence[Sequence[int]], w: int, device: torch.device):
    """(window (B, w), wlen (B,), hist_items (T,), hist_offsets (B+1,)) from whole sequences."""
    window = np.zeros((len(seqs), w), dtype=np.int64)
    wlen = np.zeros(len(seqs), dtype=np.int64)
    hist: list[np.ndarray] = []
    offs = np.zeros(len(seqs) + 1, dtype=np.int64)
    for r, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        cut = max(0, s.size - w)
        wlen[r] = s.size - cut
        window[r, :wlen[r]] = s[cut:]
        hist.append(s[:cut])
        offs[r + 1] = offs[r] + cut
    flat = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
    return tuple(torch.from_numpy(a).to(device) for a in (window, wlen, flat, offs))


class DRNNScorer:
    """Evaluation and serving.  The state of a row is its whole page sequence so far (the
    history weights ε depend on every older page), a padded (B, L) tensor and lengths."""

    def __init__(self, model: DRNN) -> None:
        self.model = model.eval()
        self.n_items = model.n_items
        self.w = model.cfg.states

    def _dev(self) -> torch.device:
        return self.model.E.device

    def init_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self._dev()
        return (torch.zeros(batch_size, 1, dtype=torch.long, device=dev),
                torch.zeros(batch_size, dtype=torch.long, device=dev))

    @torch.no_grad()
    def step(self, state, items, reset):
        seq, lens = state
        dev = self._dev()
        items = torch.as_tensor(items, dtype=torch.long, device=dev)
        reset = torch.as_tensor(reset, dtype=torch.bool, device=dev)
        lens = torch.where(reset, torch.zeros_like(lens), lens)
        if lens.numel() and int(lens.max()) + 1 > seq.shape[1]:
            seq = torch.cat([seq, torch.zeros_like(seq)], dim=1)
        rows = torch.arange(seq.shape[0], device=dev)
        seq = seq.clone()
        seq[rows, lens] = items
        lens = lens + 1
        enc = self._encode_state(seq, lens)
        return torch.addmm(self.model.out_b, enc, self.model.out_W.t()), (seq, lens)

    def _encode_state(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        w, dev = self.w, seq.device
        ws = (lens - w).clamp(min=0)
        wlen = lens - ws
        ar = torch.arange(w, device=dev)
        idx = (ws.unsqueeze(1) + ar).clamp(max=seq.shape[1] - 1)
        window = torch.where(ar < wlen.unsqueeze(1), seq.gather(1, idx), torch.zeros_like(idx))
        hmask = torch.arange(seq.shape[1], device=dev) < ws.unsqueeze(1)
        offs = torch.cat([ws.new_zeros(1), torch.cumsum(ws, 0)])
        return self.model.encode(window, wlen, seq[hmask], offs)

    def select(self, state, rows):
        seq, lens = state
        rows = torch.as_tensor(rows, dtype=torch.long, device=seq.device)
        return seq.index_select(0, rows), lens.index_select(0, rows)

    @torch.no_grad()
    def encode(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.model.encode(*_window_inputs(sequences, self.w, self._dev()))

    def topk(self, encoded, k, exclude=None, item_mask=None):
        return self.model.topk(encoded, k, exclude=exclude, item_mask=item_mask)


def training_windows(offsets: np.ndarray, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, start) int64 per (page, next page) pair: the pair's page position t in the flat
    event array (t + 1 is in the same sequence) and its sequence's first position."""
    lens = np.diff(offsets)
    seq = np.repeat(np.arange(lens.size), lens)
    pos = np.arange(n_events)
    ok = pos + 1 < offsets[seq + 1] if n_events else np.zeros(0, dtype=bool)
    return pos[ok].astype(np.int64), offsets[seq[ok]].astype(np.int64)


class DRNNTask:
    """Data parallel; one training example per (page, next page) pair of the rank's sequences:
    the window of the last w pages ending at the page, the pages before it as history."""

    parallelism = "data"

    def __init__(self, job: Any) -> None:
        self.cfg: DRNNConfig = job.model
        self.shuffle = bool(job.train.shuffle)

    def build(self, env: TaskEnv, generator: torch.Generator) -> nn.Module:
        model = DRNN(self.cfg, env.n_items)
        model.reset_parameters(generator)
        model.sparse_rows = bool(getattr(env, "sparse_rows", False))
        self.device = env.device
        self.items = np.asarray(env.train.items, dtype=np.int64)
        self.t, self.start = training_windows(np.asarray(env.train.offsets), self.items.size)
        return model

    def item_tables(self, module: DRNN) -> list[nn.Parameter]:
        return [module.E, module.theta_raw]

    def param_groups(self, module: nn.Module, lr: float) -> list[dict]:
        return [{"params": list(module.parameters())}]

    def num_batches(self, env: TaskEnv, batch_size: int) -> int:
        return math.ceil(self.t.size / batch_size)

    def _batch(self, sel: np.ndarray) -> tuple[torch.Tensor, ...]:
        w, items = self.cfg.states, self.items
        t, start = self.t[sel], self.start[sel]
        ws = np.maximum(start, t - w + 1)
        wlen = t - ws + 1
        ar = np.arange(w)
        pos = ws[:, None] + ar
        valid = ar < wlen[:, None]
        window = np.where(valid, items[np.minimum(pos, items.size - 1)], 0)
        targets = np.where(valid, items[np.minimum(pos + 1, items.size - 1)], -1)
        if self.cfg.history:
            hl = ws - start
            offs = np.zeros(sel.size + 1, dtype=np.int64)
            np.cumsum(hl, out=offs[1:])
            hpos = np.repeat(start - offs[:-1], hl) + np.arange(int(offs[-1]))
            hist = items[hpos]
        else:
            offs, hist = np.zeros(sel.size + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                     for a in (window, wlen, hist, offs, targets))

    def batches(self, env: TaskEnv, module: nn.Module, epoch: int, batch_size: int,
                rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        order = rng.permutation(self.t.size) if self.shuffle else np.arange(self.t.size)
        for a in range(0, order.size, batch_size):
            yield self._batch(order[a:a + batch_size])

    def loss(self, forward: Callable[..., torch.Tensor], batch: tuple[torch.Tensor, ...],
             pad: bool = False) -> tuple[torch.Tensor, int]:
        return forward(*batch), int(batch[0].shape[0])  # stateless: pad needs nothing

    def evaluate(self, env: TaskEnv, module: nn.Module, ks: Sequence[int], batch_size: int) -> dict:
        return env.evaluate(DRNNScorer(module), env.valid, ks, batch_size)

    def full_state(self, env: TaskEnv, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.state_dict()

    def load_full_state(self, env: TaskEnv, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(state)


SPEC = registry.register(registry.ModelSpec(
    name=NAME, config_cls=DRNNConfig, build=build, kind="session", task=DRNNTask, scorer=DRNNScorer,
    default_config="drnn_rsc15.yaml", parallelism="data",
    job_defaults={"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "lr_step_epochs": 100,
                            "lr_step_gamma": 0.2},
                  "train": {"batch_size": 9000, "shuffle": True}},
))
