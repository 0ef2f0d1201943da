"""Pure (Ray-free) training and evaluation steps for GRU4Rec.

:func:`train_epoch` is the session-parallel loop of seed 003 section 3.1 with the sampled
output of section 3.1.2 extended by the shared extra negatives of the Top-k gains paper:

1. take the next session-parallel mini-batch (inputs, targets, reset, keep); shrink the hidden
   state to ``keep`` and zero the rows that start a new session;
2. one GRU step; score only the B target columns plus S extra negatives drawn from
   popularity^alpha (shared by all rows), giving the (B, B + S) score block;
3. mask accidental hits, compute the loss (``rayrec.models.losses.sampled_loss``: the fused
   ``rayrec.ops_kernels.sampled_ranking_loss`` for BPR-max / TOP1-max / cross-entropy,
   dispatched by ``RAYREC_KERNELS``), backpropagate, optimiser step;
4. detach the hidden state (truncated back-propagation of one step, as in the paper).

The logQ correction of the cross-entropy uses, for every column, the log of the expected
number of times its item appears among the B + S sampled columns::

    Q_j = B * p_pop(j) + S * p_alpha(j)

with ``p_pop`` the training popularity (mini-batch targets are drawn, in effect, in proportion
to popularity, seed 003 section 3.1.2) and ``p_alpha`` the extra-sample distribution. With it,
``sum_{columns} exp(s_j) / Q_j`` is an unbiased estimate of the full softmax partition
``sum_{all items} exp(s_j)``, which is what the sampled softmax approximates. (Setting
``LossConfig.logq_mode="official"`` instead uses the authors' code's per-group terms:
``log count`` for target columns and ``alpha * log count`` for the extra samples.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from rayrec.models.gru4rec import GRU4Rec, GRU4RecScorer
from rayrec.models.losses import LossConfig, sampled_loss
from rayrec.models.samplers import PopularitySampler

from rayrec.platform.training.session_parallel import (
    SessionArrays,
    n_training_pairs,
    session_parallel_batches,
)

__all__ = ["train_epoch", "evaluate", "item_counts", "make_sampler", "logq_tables"]


def item_counts(arrays: SessionArrays, n_items: int) -> np.ndarray:
    """Occurrences of each item in the training events (N,) int64."""
    if arrays.items.size and arrays.items.max() >= n_items:
        raise ValueError(f"item_idx {int(arrays.items.max())} out of range for n_items={n_items}")
    return np.bincount(arrays.items, minlength=n_items).astype(np.int64)


def make_sampler(
    arrays: SessionArrays,
    n_items: int,
    loss_cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> PopularitySampler | None:
    """The extra-negative sampler of ``loss_cfg`` (None when ``n_sample == 0``)."""
    if loss_cfg.n_sample == 0:
        return None
    return PopularitySampler(
        item_counts(arrays, n_items), loss_cfg.sample_alpha, loss_cfg.sample_store_size, generator
    )


def logq_tables(
    counts: np.ndarray,
    batch_size: int,
    sampler: PopularitySampler | None,
    n_sample: int,
    mode: str = "expected",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item log Q for target columns and for extra-sample columns: two (N,) float32 tables.

    ``expected``: both are ``log(B p_pop + S p_alpha)`` (see module docstring);
    ``official``: ``log count`` and ``alpha * log count``. Items that never occur get
    count 1 (they cannot be a target; a finite value keeps the arithmetic safe).
    """
    c = np.maximum(counts.astype(np.float64), 1.0)
    if mode == "official":
        alpha = sampler.alpha if sampler is not None else 1.0
        t = torch.from_numpy(np.log(c)).float()
        return t, torch.from_numpy(alpha * np.log(c)).float()
    p_pop = c / c.sum()
    q = batch_size * p_pop
    if sampler is not None and n_sample > 0:
        q = q + n_sample * sampler.prob.numpy()
    t = torch.from_numpy(np.log(q)).float()
    return t, t


def train_epoch(
    model: GRU4Rec,
    optimizer: torch.optim.Optimizer,
    arrays: SessionArrays,
    loss_cfg: LossConfig,
    sampler: PopularitySampler | None,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle_sessions: bool = False,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One epoch over ``arrays``; returns ``loss`` (mean per pair), ``events`` (pairs trained),
    ``steps``, ``seconds`` and ``events_per_s``.

    ``sampler`` supplies the S = ``loss_cfg.n_sample`` extra negatives (None: mini-batch
    negatives only). ``generator`` seeds the session shuffle (only with
    ``shuffle_sessions``); dropout draws from torch's global RNG. ``max_steps`` stops early
    (tests, profiling).
    """
    t0 = time.perf_counter()
    model.train()
    n_items = model.n_items
    n_sample = loss_cfg.n_sample if sampler is not None else 0
    counts = item_counts(arrays, n_items)
    use_logq = loss_cfg.name == "cross-entropy" and loss_cfg.logq > 0.0
    if use_logq:
        lq_t, lq_s = logq_tables(counts, batch_size, sampler, n_sample, loss_cfg.logq_mode)
    rng = None
    if shuffle_sessions:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator else None
        rng = np.random.default_rng(seed)
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64)
    events = 0
    steps = 0
    for inputs, targets, reset, keep in session_parallel_batches(
        arrays, batch_size, shuffle_sessions, rng
    ):
        b = inputs.shape[0]
        if keep.shape[0] != hidden[0].shape[0]:
            keep_t = torch.from_numpy(keep)
            hidden = [h.index_select(0, keep_t) for h in hidden]  # (B_new, H)
        if reset.any():
            mask = torch.from_numpy(~reset).to(hidden[0].dtype).unsqueeze(1)  # (B, 1)
            hidden = [h * mask for h in hidden]
        x = torch.from_numpy(inputs)
        y = torch.from_numpy(targets)
        out, hidden = model(x, hidden)  # (B, H_last)
        if n_sample:
            smp = sampler.sample(n_sample)  # (S,)
            cols = torch.cat([y, smp])  # (B + S,)
        else:
            smp = None
            cols = y
        scores = model.score(out, cols)  # (B, B + S)
        log_q = None
        if use_logq:
            log_q = lq_t[y] if smp is None else torch.cat([lq_t[y], lq_s[smp]])  # (B + S,)
        # accidental hits (cols[j] == y[i]) are masked inside; fused op per RAYREC_KERNELS
        loss = sampled_loss(loss_cfg, scores, cols, log_q)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hidden = [h.detach() for h in hidden]
        total += loss.detach() * b
        events += b
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    secs = time.perf_counter() - t0
    mean_loss = float(total) / max(events, 1)
    if not np.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is not finite ({mean_loss}) after {steps} steps")
    return {
        "loss": mean_loss,
        "events": float(events),
        "steps": float(steps),
        "seconds": secs,
        "events_per_s": events / secs if secs > 0 else float("nan"),
        "pairs_in_data": float(n_training_pairs(arrays)),
    }


def evaluate(
    model: GRU4Rec,
    arrays: SessionArrays,
    cutoffs: Sequence[int] = (5, 10, 20),
    batch_size: int = 256,
) -> dict:
    """Next-item protocol (seed 003 section 4): full ranking over all items, conservative ties.

    Leaves the model in eval mode.
    """
    from rayrec.platform.evaluation.protocols import evaluate_next_item

    scorer = GRU4RecScorer(model)
    return evaluate_next_item(scorer, arrays.offsets, arrays.items, cutoffs, batch_size)
