"""GRU4Rec: session-based recommendation with a GRU (seed 003, Hidasi et al. ICLR 2016).

What this module implements, and where each piece comes from:

- Seed 003 section 3 / Figure 1: the network is an embedding of the current item, one or more
  GRU layers, and a feed-forward output that scores every item for the *next* event.
  The GRU follows the formulation of seed 003 section 2.2 (Cho et al. 2014)::

      r_t = sigmoid(W_r x_t + U_r h_{t-1})               (reset gate)
      z_t = sigmoid(W_z x_t + U_z h_{t-1})               (update gate)
      h^_t = tanh(W x_t + U (r_t * h_{t-1}))             (candidate)
      h_t = (1 - z_t) h_{t-1} + z_t h^_t

  with the reset gate applied to ``h_{t-1}`` *before* the recurrent matmul (the paper's
  form, not cuDNN's ``r * (U h)`` variant).
- Input representation (seed 003 section 3: "1-of-N encoding" or a weighted embedding, and the
  authors' later official implementation):

  * ``embedding == 0`` and not constrained: one-hot input. Multiplying a one-hot vector with
    the first layer's input weights is a row lookup, so the first layer's input weights are an
    ``(n_items, 3 * H_0)`` table indexed by the item (no separate embedding).
  * ``embedding > 0``: a learned ``(n_items, embedding)`` table feeding the first GRU layer.
  * ``constrained_embedding`` (default, the official implementation's best setting): the
    input embedding *is* the output item weight matrix ``Wy`` (``(n_items, H_last)``), so one
    table is shared between input and output.
- Output: ``score(h) = final_act(h Wy^T + by)``; in training only the columns of the
  mini-batch targets and the shared extra negatives are scored (seed 003 section 3.1.2,
  "sampling on the output"), so the cost is ``O(B (B + S) H)`` instead of ``O(B N H)``.
  Serving asks for the top-K only: :meth:`GRU4Rec.topk` (the fused
  ``rayrec.ops_kernels.topk_scores``, never the ``(B, N)`` block).
- The GRU cell runs through the fused ``rayrec.ops_kernels.gru_step`` (its reference is the
  torch math below; ``RAYREC_KERNELS`` picks the backend).
- Dropout (seed 003 section 4, Table 2 "dropout"): applied to each GRU layer's output during
  training; the dropped-out activations are also what is carried as that layer's hidden state
  to the next step (as in the authors' implementations). ``dropout_p_embed`` applies to the
  item embedding (when an embedding table is used) before the first layer.
- Initialisation (seed 003 section 4: "initialized by random numbers drawn uniformly from
  [-x, x] where x depends on the number of rows and columns"): every weight *block* (each gate's
  input matrix, each gate's recurrent matrix, the embedding and the output table) is drawn from
  ``U(-sqrt(6 / (fan_in + fan_out)), +sqrt(6 / (fan_in + fan_out)))`` with its own fan-in and
  fan-out; all biases (gate biases and the output bias ``by``) start at zero.

``models/`` is pure PyTorch: no Ray, no file I/O, no import of ``rayrec.platform``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from rayrec.models.losses import LossConfig, sampled_loss
from rayrec.models.samplers import logq_tables, make_sampler
from rayrec.models.session_parallel import session_parallel_batches
from rayrec.ops_kernels import gather_rows, gather_rows_multi, gru_step, topk_scores

__all__ = ["GRU4RecConfig", "GRU4Rec", "GRU4RecScorer", "build"]

FinalAct = Literal["linear", "tanh", "relu", "elu", "leaky"]


class GRU4RecConfig(BaseModel):
    """Hyper-parameters of GRU4Rec: the network and its training objective (``loss``, a
    :class:`rayrec.models.losses.LossConfig`; the optimiser is the job's ``optim``).

    ``layers``: GRU layer sizes (seed 003 Table 2 uses one layer of 100 or 1000 units).
    ``embedding``: 0 = one-hot input (looked up straight in the first layer's input weights);
    > 0 = a learned input embedding of that size. ``constrained_embedding``: the input embedding
    is the output weight matrix (then ``embedding`` must be 0 and the embedding size is
    ``layers[-1]``). ``final_act``: activation on the output scores; ``elu_param`` is ELU's
    alpha (``final_act == "elu"``) and ``leaky_param`` the leaky-ReLU slope
    (``final_act == "leaky"``). ``bias_output``: learn a per-item output bias ``by``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: Literal["gru4rec"] = "gru4rec"
    layers: tuple[int, ...] = (100,)
    embedding: int = 0
    constrained_embedding: bool = True
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.4
    final_act: FinalAct = "linear"
    elu_param: float = 1.0
    leaky_param: float = 0.01
    bias_output: bool = True
    loss: LossConfig = Field(default_factory=LossConfig)

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) == 0:
            raise ValueError("layers must name at least one GRU layer size")
        bad = [x for x in v if x <= 0]
        if bad:
            raise ValueError(f"layers sizes must be positive, got {list(v)}")
        return v

    @field_validator("embedding")
    @classmethod
    def _check_embedding(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"embedding must be >= 0 (0 = one-hot input), got {v}")
        return v

    @field_validator("dropout_p_embed", "dropout_p_hidden")
    @classmethod
    def _check_dropout(cls, v: float, info) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{info.field_name} must be in [0, 1), got {v}")
        return v

    @field_validator("elu_param", "leaky_param")
    @classmethod
    def _check_act_param(cls, v: float, info) -> float:
        if v < 0.0 or not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be a finite value >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check_constrained(self) -> GRU4RecConfig:
        if self.constrained_embedding and self.embedding != 0:
            raise ValueError(
                f"constrained_embedding=True shares the output weights as the input embedding "
                f"(size layers[-1]={self.layers[-1]}); embedding must then be 0, got "
                f"{self.embedding}"
            )
        return self


def _uniform_block_(t: torch.Tensor, fan_in: int, fan_out: int, generator=None) -> None:
    """In place: U(-s, s) with s = sqrt(6 / (fan_in + fan_out)) (Glorot-uniform for one block)."""
    s = math.sqrt(6.0 / float(fan_in + fan_out))
    with torch.no_grad():
        t.uniform_(-s, s, generator=generator)


class GRU4Rec(nn.Module):
    """The GRU4Rec network for one session-parallel step at a time.

    Parameters (``H_l`` = ``layers[l]``, ``N`` = ``n_items``):

    - ``Wy`` (N, H_last) output item weights (also the input embedding when constrained);
      ``By`` (N,) output bias (zeros, only with ``bias_output``).
    - ``E`` (N, embedding) input embedding (only when ``embedding > 0``).
    - per layer l: ``Wx{l}`` (n_in, 3 H_l) input weights, gate blocks ordered [r | z | h];
      for the one-hot first layer ``n_in = N`` and it is used as a row lookup;
      ``Wrz{l}`` (H_l, 2 H_l) recurrent weights of the two gates [r | z];
      ``Wh{l}`` (H_l, H_l) recurrent weights of the candidate; ``b{l}`` (3 H_l,) gate biases.
    """

    def __init__(self, cfg: GRU4RecConfig, n_items: int) -> None:
        super().__init__()
        if n_items <= 0:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.cfg = cfg
        self.n_items = int(n_items)
        self.layers = tuple(cfg.layers)
        #: row-sparse gradients for the item tables (``ops_kernels.gather_rows``); set by the
        #: training task from ``TaskEnv.sparse_rows``
        self.sparse_rows = False
        self.one_hot = (not cfg.constrained_embedding) and cfg.embedding == 0
        h_last = self.layers[-1]
        self.Wy = nn.Parameter(torch.empty(n_items, h_last))
        self.By = nn.Parameter(torch.zeros(n_items)) if cfg.bias_output else None
        if cfg.embedding > 0:
            self.E = nn.Parameter(torch.empty(n_items, cfg.embedding))
            n_in = cfg.embedding
        elif cfg.constrained_embedding:
            self.E = None
            n_in = h_last
        else:
            self.E = None
            n_in = n_items
        self.Wx = nn.ParameterList()
        self.Wrz = nn.ParameterList()
        self.Wh = nn.ParameterList()
        self.b = nn.ParameterList()
        for h in self.layers:
            self.Wx.append(nn.Parameter(torch.empty(n_in, 3 * h)))
            self.Wrz.append(nn.Parameter(torch.empty(h, 2 * h)))
            self.Wh.append(nn.Parameter(torch.empty(h, h)))
            self.b.append(nn.Parameter(torch.zeros(3 * h)))
            n_in = h
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Per-block uniform init (see module docstring); all biases zero."""
        g = generator
        _uniform_block_(self.Wy, self.n_items, self.layers[-1], g)
        if self.By is not None:
            nn.init.zeros_(self.By)
        if self.E is not None:
            _uniform_block_(self.E, self.n_items, self.E.shape[1], g)
        for wx, wrz, wh, b, h in zip(self.Wx, self.Wrz, self.Wh, self.b, self.layers):
            n_in = wx.shape[0]
            for k in range(3):  # one block per gate: r, z, candidate
                _uniform_block_(wx[:, k * h : (k + 1) * h], n_in, h, g)
            for k in range(2):
                _uniform_block_(wrz[:, k * h : (k + 1) * h], h, h, g)
            _uniform_block_(wh, h, h, g)
            nn.init.zeros_(b)

    def init_hidden(
        self, batch_size: int, device: torch.device | None = None
    ) -> list[torch.Tensor]:
        """Zero hidden state: one (B, H_l) tensor per layer."""
        dev = device if device is not None else self.Wy.device
        return [torch.zeros(batch_size, h, device=dev, dtype=self.Wy.dtype) for h in self.layers]

    def forward(
        self, items: torch.Tensor, hidden: list[torch.Tensor], x: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step: items (B,) long, hidden [(B, H_l)] -> (out (B, H_last), new hidden).

        ``x`` (B, n_in): the items' input rows when the caller already looked them up (the
        sampled step reads ``Wy`` once for inputs and output columns, :class:`SampledStep`)."""
        if items.dim() != 1:
            raise ValueError(f"items must be a 1-D (B,) tensor, got shape {tuple(items.shape)}")
        if len(hidden) != len(self.layers):
            raise ValueError(f"hidden has {len(hidden)} layers, the model has {len(self.layers)}")
        if self.one_hot:
            x = None
        elif x is None:
            table, name = (self.Wy, "Wy") if self.E is None else (self.E, "E")
            x = gather_rows(table, items, self.sparse_rows, name)  # (B, n_in)
        if x is not None and self.cfg.dropout_p_embed > 0.0 and self.training:
            x = F.dropout(x, self.cfg.dropout_p_embed, training=True)
        new_hidden: list[torch.Tensor] = []
        p_h = self.cfg.dropout_p_hidden if self.training else 0.0
        for li in range(len(self.layers)):
            h_prev = hidden[li]  # (B, H)
            if x is None:  # one-hot input: x @ Wx0 is the item's row of Wx0
                gx = gather_rows(self.Wx[li], items, self.sparse_rows, "Wx0") + self.b[li]  # (B, 3H)
            else:
                gx = torch.addmm(self.b[li], x, self.Wx[li])  # (B, 3H)
            # seed 003 section 2.2: r, z = sigmoid(gx + h Wrz); c = tanh(gx_h + (r * h) Wh);
            # h_new = (1 - z) h + z c -- the fused op (reference = exactly this torch math)
            h_new = gru_step(gx, h_prev, self.Wrz[li], self.Wh[li])  # (B, H)
            if p_h > 0.0:
                h_new = F.dropout(h_new, p_h, training=True)
            new_hidden.append(h_new)
            x = h_new
        return x, new_hidden

    def _final(self, s: torch.Tensor) -> torch.Tensor:
        act = self.cfg.final_act
        if act == "linear":
            return s
        if act == "tanh":
            return torch.tanh(s)
        if act == "relu":
            return F.relu(s)
        if act == "elu":
            return F.elu(s, alpha=self.cfg.elu_param)
        return F.leaky_relu(s, negative_slope=self.cfg.leaky_param)

    def score(self, out: torch.Tensor, item_idx: torch.Tensor | None = None,
              w: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of items for the next event.

        out (B, H_last); item_idx None -> (B, N) over all items (evaluation, serving);
        item_idx (C,) long -> (B, C), the columns of those items only (sampled training:
        C = B targets + S shared negatives); ``w`` (C, H_last): their rows of ``Wy`` when the
        caller already looked them up.
        """
        if item_idx is None:
            w, bias = self.Wy, self.By  # (N, H), (N,)
        else:
            if w is None:
                w = gather_rows(self.Wy, item_idx, self.sparse_rows, "Wy")  # (C, H)
            bias = None if self.By is None else gather_rows(self.By, item_idx, self.sparse_rows, "By")
        s = out @ w.t() if bias is None else torch.addmm(bias, out, w.t())  # (B, C)
        return self._final(s)

    @torch.no_grad()
    def topk(
        self,
        out: torch.Tensor,
        k: int,
        exclude: torch.Tensor | list[list[int]] | None = None,
        item_mask: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best next items of each row without building the ``(B, N)`` scores.

        Same as ``torch.topk(s, k)`` where ``s = score(out)`` (seed 003 section 3:
        ``final_act(out Wy^T + by)``) with ``s[i, exclude[i]] = -inf`` (per-row lists, or a
        ``(B, E)`` tensor padded with -1: e.g. the session's consumed items) and
        ``s[:, ~item_mask] = -inf`` (``(N,)`` bool, a catalog-wide filter), computed by the fused
        ``rayrec.ops_kernels.topk_scores`` (``RAYREC_KERNELS`` or ``backend``). Every
        ``final_act`` is non-decreasing, so the top-K of the raw scores is a top-K of the
        activated ones; the activation is applied to the K values. Returns ``(values (B, k)
        float32, indices (B, k) long)``, best first; slots beyond a row's eligible items hold
        ``-inf`` / ``-1``. Ties are broken arbitrarily.
        """
        vals, idx = topk_scores(out, self.Wy, k, self.By, exclude, item_mask=item_mask,
                                backend=backend)
        vals = torch.where(idx >= 0, self._final(vals), torch.full_like(vals, float("-inf")))
        return vals, idx


class GRU4RecScorer:
    """Adapter to the evaluation ``SessionScorer`` protocol (duck-typed).

    Puts the model in eval mode (no dropout) and runs without autograd. The state is the
    list of per-layer hidden tensors.
    """

    def __init__(self, model: GRU4Rec) -> None:
        self.model = model.eval()
        self.n_items = model.n_items

    def init_state(self, batch_size: int) -> list[torch.Tensor]:
        return self.model.init_hidden(batch_size)

    @torch.no_grad()
    def step(
        self, state: list[torch.Tensor], items: torch.Tensor, reset: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """items (B,), reset (B,) bool -> scores (B, n_items), new state. Reset rows start at 0."""
        items = torch.as_tensor(items, dtype=torch.long, device=self.model.Wy.device)
        reset = torch.as_tensor(reset, dtype=torch.bool, device=self.model.Wy.device)
        keep = (~reset).to(state[0].dtype).unsqueeze(1)  # (B, 1)
        state = [h * keep for h in state]
        out, state = self.model(items, state)
        return self.model.score(out), state

    def select(self, state: list[torch.Tensor], rows: torch.Tensor) -> list[torch.Tensor]:
        rows = torch.as_tensor(rows, dtype=torch.long, device=state[0].device)
        return [h.index_select(0, rows) for h in state]

    @torch.no_grad()
    def encode(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, H_last): the last layer's state after each session's events (B >= 1, each
        sequence non-empty); shorter sessions stop updating once their events are read."""
        dev = self.model.Wy.device
        b = len(sequences)
        lens = torch.tensor([len(s) for s in sequences], dtype=torch.long, device=dev)  # (B,)
        t_max = int(lens.max())
        pad = torch.zeros(b, t_max, dtype=torch.long, device=dev)  # (B, T)
        for i, s in enumerate(sequences):
            pad[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        hidden = [h.to(dev) for h in self.model.init_hidden(b)]
        t_min = int(lens.min())
        for t in range(t_max):
            out, new = self.model(pad[:, t], hidden)
            if t >= t_min:
                live = (lens > t).unsqueeze(1)  # (B, 1)
                hidden = [torch.where(live, n, h) for n, h in zip(new, hidden)]
            else:
                hidden = new
        return hidden[-1]

    def topk(self, encoded: torch.Tensor, k: int, exclude: list[list[int]] | None = None,
             item_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused scoring + top-K of :meth:`GRU4Rec.topk` on :meth:`encode`'s output."""
        return self.model.topk(encoded, k, exclude=exclude, item_mask=item_mask)


def build(cfg: GRU4RecConfig, n_items: int) -> GRU4Rec:
    """Registry builder: a freshly initialised GRU4Rec for ``n_items`` items."""
    return GRU4Rec(cfg, n_items)


# --------------------------------------------------------------------------------------
# training task (the model contract, rayrec.models.contract.TrainTask)
# --------------------------------------------------------------------------------------


class SampledStep(nn.Module):
    """One session-parallel step as a single module call, so DDP and DeepSpeed see the whole
    computation (GRU step + sampled output scores) inside ``forward``."""

    def __init__(self, model: GRU4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, hidden: list[torch.Tensor], cols: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m = self.model
        x_rows = w = None
        if m.E is None and not m.one_hot:  # constrained: inputs and columns read Wy once
            x_rows, w = gather_rows_multi(m.Wy, [x, cols], m.sparse_rows, "Wy")  # (B, H), (C, H)
        out, hidden = m(x, hidden, x_rows)  # (B, H)
        return m.score(out, cols, w), hidden  # (B, C)


class GRU4RecTask:
    """GRU4Rec's training (seed 003 section 3.1 and the Top-k gains follow-up):

    1. session-parallel mini-batches (section 3.1.1): shrink the hidden state to ``keep`` and
       zero the rows that start a new session;
    2. one GRU step; score only the B target columns plus S extra negatives drawn from
       popularity^alpha and shared by all rows, giving the (B, B + S) score block (3.1.2);
    3. mask accidental hits, the loss (:func:`rayrec.models.losses.sampled_loss`, the fused
       ``sampled_ranking_loss`` op for BPR-max / TOP1-max / cross-entropy with logQ from
       :func:`rayrec.models.samplers.logq_tables`);
    4. detach the hidden state (truncated back-propagation of one step, as in the paper).

    The sampler and the logQ tables come from the GLOBAL training counts, so every rank draws
    from the same distribution; each rank's sampler has its own seed.
    """

    parallelism = "data"

    def __init__(self, job) -> None:
        self.cfg: GRU4RecConfig = job.model
        self.batch_size = int(job.train.batch_size)
        self.shuffle = bool(job.train.shuffle)

    def build(self, env, generator: torch.Generator) -> nn.Module:
        model = GRU4Rec(self.cfg, env.n_items)
        model.reset_parameters(generator)  # identical init on every rank
        model.sparse_rows = env.sparse_rows
        self.steps_per_epoch = sum(1 for _ in session_parallel_batches(env.train, self.batch_size))
        lc = self.cfg.loss
        self.sampler = None
        if lc.n_sample > 0:
            sgen = torch.Generator().manual_seed(env.seed + 17)
            self.sampler = make_sampler(lc.sampler, env.train_counts, lc.sample_alpha, lc.sample_store_size, sgen)
        self.n_sample = lc.n_sample if self.sampler is not None else 0
        self.logq = None
        if lc.name == "cross-entropy" and lc.logq > 0:
            lq_t, lq_s = logq_tables(env.train_counts, self.batch_size, self.sampler, self.n_sample, lc.logq_mode)
            self.logq = (lq_t.to(env.device), lq_s.to(env.device))
        self.device = env.device
        return SampledStep(model)

    def external_params(self, module: SampledStep) -> list[nn.Parameter]:
        """ZeRO-3: the output item table is used by ``score``, outside ``GRU4Rec.forward``."""
        return [module.model.Wy]

    def item_tables(self, module: SampledStep) -> list[nn.Parameter]:
        """Row-sparse under ``env.sparse_rows``: the output weights and bias (also the input
        embedding when constrained), the input embedding ``E``, the one-hot input weights."""
        m = module.model
        tables = [m.Wy] + [t for t in (m.By, m.E) if t is not None]
        return tables + ([m.Wx[0]] if m.one_hot else [])

    def item_state_dims(self, module: SampledStep) -> dict[str, int]:
        """Full-state keys of the item-indexed tables -> their item dim (``train.init_from``
        copies their rows by item id): ``Wy``, ``By``, ``E`` and the one-hot input ``Wx.0``."""
        m = module.model
        dims = {"Wy": 0}
        dims.update({k: 0 for k, t in (("By", m.By), ("E", m.E)) if t is not None})
        return {**dims, **({"Wx.0": 0} if m.one_hot else {})}

    def param_groups(self, module: nn.Module, lr: float) -> list[dict]:
        return [{"params": list(module.parameters())}]

    def num_batches(self, env, batch_size: int) -> int:
        if batch_size == self.batch_size:
            return self.steps_per_epoch
        return sum(1 for _ in session_parallel_batches(env.train, batch_size))

    def batches(self, env, module: SampledStep, epoch: int, batch_size: int, rng):
        if self.sampler is not None:  # this epoch's negatives, drawn per (seed, epoch) in one store
            need = self.num_batches(env, batch_size) * self.n_sample
            self.sampler.reseed(torch.Generator().manual_seed(env.seed * 7919 + 17 + epoch),
                                max(1, min(self.cfg.loss.sample_store_size, need)))
        hidden = [h.to(self.device) for h in module.model.init_hidden(batch_size)]
        self.hidden = hidden
        for inputs, targets, reset, keep in session_parallel_batches(env.train, batch_size, self.shuffle, rng):
            hidden = self.hidden
            if keep.shape[0] != hidden[0].shape[0]:
                keep_t = torch.from_numpy(keep).to(self.device)
                hidden = [h.index_select(0, keep_t) for h in hidden]  # (B_new, H)
            if reset.any():
                mask = torch.from_numpy(~reset).to(device=self.device, dtype=hidden[0].dtype)
                hidden = [h * mask.unsqueeze(1) for h in hidden]  # (B, H)
            self.hidden = hidden
            yield (torch.from_numpy(inputs).to(self.device), torch.from_numpy(targets).to(self.device),
                   [h.clone() for h in hidden])

    def loss(self, forward, batch, pad: bool = False) -> tuple[torch.Tensor, int]:
        x, y, hidden = batch
        if self.n_sample:
            smp = self.sampler.sample(self.n_sample).to(self.device)  # (S,)
            cols = torch.cat([y, smp])  # (B + S,)
        else:
            smp, cols = None, y
        scores, new_hidden = forward(x, hidden if pad else self.hidden, cols)  # (B, B + S)
        log_q = None
        if self.logq is not None:
            lq_t, lq_s = self.logq
            log_q = lq_t[y] if smp is None else torch.cat([lq_t[y], lq_s[smp]])
        loss = sampled_loss(self.cfg.loss, scores.float(), cols, log_q)  # hits masked from cols
        if not pad:
            self.hidden = [h.detach() for h in new_hidden]
        return loss, int(x.shape[0])

    def evaluate(self, env, module: nn.Module, ks, batch_size: int) -> dict:
        model = module.model if isinstance(module, SampledStep) else module
        return env.evaluate(GRU4RecScorer(model), env.valid, ks, batch_size)

    def full_state(self, env, module: SampledStep) -> dict[str, torch.Tensor]:
        return module.model.state_dict()

    def load_full_state(self, env, module: SampledStep, state: dict[str, torch.Tensor]) -> None:
        module.model.load_state_dict(state)


def _register() -> None:
    from rayrec.models import registry

    registry.register(registry.ModelSpec(
        name="gru4rec", config_cls=GRU4RecConfig, build=build, kind="session",
        scorer=GRU4RecScorer, task=GRU4RecTask, default_config="gru4rec_rsc15.yaml",
        job_defaults={"optim": {"name": "adagrad_momentum", "lr": 0.2, "momentum": 0.2}},
    ))


_register()
