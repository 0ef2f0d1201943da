"""Sampled ranking losses of GRU4Rec.

Sources: seed 003 section 3.1.3 (BPR, TOP1), section 3.1.2 (mini-batch negatives); the authors'
follow-up "Recurrent Neural Networks with Top-k Gains for Session-based Recommendations"
(Hidasi & Karatzoglou, CIKM 2018: additional negatives shared by the mini-batch and drawn from
popularity^alpha, TOP1-max and BPR-max with score regularisation); and the authors' later
official implementation (cross-entropy over the sampled columns with a logQ correction).

The score block. Every loss takes ``scores`` of shape (B, B + S): column j < B holds the
score of the j-th mini-batch *target*, so row i's positive is ``scores[i, i]`` (the diagonal
of the first B columns); the other B - 1 target columns are the mini-batch negatives of seed
003 section 3.1.2, and the last S columns are the extra negatives shared by all rows.

Accidental hits. A column whose item equals row i's target item is not a negative for row i
(two rows of a mini-batch with the same next item, or an extra sample equal to the target).
:func:`negative_mask` marks the valid negatives (``cols[j] != targets[i]``); such hits are
left out of every sum/softmax below (masked, not merely down-weighted). When no mask is
given, only the diagonal is excluded.

All losses return the mean over the B rows.

Training calls :func:`sampled_loss`: it takes the column items ``cols`` instead of a mask and
runs BPR-max, TOP1-max and the cross-entropy through the fused op
``rayrec.ops_kernels.sampled_ranking_loss`` (same masking, logQ and ``bpreg``; the backend
follows ``RAYREC_KERNELS``), and the plain TOP1 / BPR of seed 003, which the op does not
cover, through the definitions below. The functions below stay the documented definitions
and the oracle the op is tested against.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator

from rayrec.ops_kernels import sampled_ranking_loss

__all__ = [
    "LossConfig",
    "negative_mask",
    "top1",
    "bpr",
    "top1_max",
    "bpr_max",
    "cross_entropy",
    "compute_loss",
    "sampled_loss",
    "FUSED_LOSSES",
    "balanced_logistic",
]

LossName = Literal["top1", "bpr", "top1-max", "bpr-max", "cross-entropy"]

#: The losses :func:`sampled_loss` runs through ``rayrec.ops_kernels.sampled_ranking_loss``.
FUSED_LOSSES = ("bpr-max", "top1-max", "cross-entropy")


class LossConfig(BaseModel):
    """The training objective and its negative sampling.

    ``bpreg``: BPR-max score regularisation weight (Top-k gains paper, eq. for BPR-max).
    ``logq``: strength of the logQ correction of the cross-entropy (0 = off).
    ``n_sample``: S, extra negatives per mini-batch shared by all rows (0 = mini-batch
    negatives only, as in seed 003). ``sample_alpha``: they are drawn from popularity^alpha
    (0 = uniform, 1 = popularity). ``sample_store_size``: how many samples are pre-generated
    at once, by inverse CDF (``sampler: cdf``, O(log N) per draw) or the alias method
    (``sampler: alias``, O(1) per draw; same distribution). ``mask_sample_hits``: also mask extra samples equal to the row's target
    (mini-batch duplicates of the target are always masked). ``logq_mode``: how log Q of a
    column is computed (see ``rayrec.models.samplers.logq_tables``): ``expected`` = log of the
    item's expected number of occurrences among the B + S columns; ``official`` = the
    authors' code (log count for targets, alpha * log count for extra samples).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: LossName = "cross-entropy"
    bpreg: float = 1.0
    logq: float = 1.0
    n_sample: int = 2048
    sample_alpha: float = 0.5
    sample_store_size: int = 10_000_000
    sampler: Literal["cdf", "alias"] = "cdf"
    mask_sample_hits: bool = True
    logq_mode: Literal["expected", "official"] = "expected"

    @field_validator("bpreg", "logq")
    @classmethod
    def _non_negative(cls, v: float, info) -> float:
        if v < 0.0 or not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be a finite value >= 0, got {v}")
        return v

    @field_validator("n_sample")
    @classmethod
    def _check_n_sample(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"n_sample must be >= 0, got {v}")
        return v

    @field_validator("sample_alpha")
    @classmethod
    def _check_alpha(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"sample_alpha must be in [0, 1], got {v}")
        return v

    @field_validator("sample_store_size")
    @classmethod
    def _check_store(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"sample_store_size must be positive, got {v}")
        return v


def negative_mask(
    targets: torch.Tensor, cols: torch.Tensor, mask_sample_hits: bool = True
) -> torch.Tensor:
    """Valid negatives: (B, C) bool, True where ``cols[j] != targets[i]``.

    targets (B,) long, cols (C,) long with ``cols[:B] == targets``. The diagonal (the
    positive) and duplicate target items are always excluded; extra-sample hits
    (j >= B) only when ``mask_sample_hits``.
    """
    b = targets.shape[0]
    valid = cols.unsqueeze(0) != targets.unsqueeze(1)  # (B, C)
    if not mask_sample_hits and cols.shape[0] > b:
        valid[:, b:] = True
    return valid


def _default_mask(scores: torch.Tensor) -> torch.Tensor:
    b, c = scores.shape
    valid = torch.ones(b, c, dtype=torch.bool, device=scores.device)  # (B, C)
    valid[:, :b].fill_diagonal_(False)
    return valid


def _prep(scores: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.dim() != 2 or scores.shape[1] < scores.shape[0]:
        raise ValueError(
            f"scores must be (B, B + S) with the targets in the first B columns, got "
            f"{tuple(scores.shape)}"
        )
    if valid is None:
        valid = _default_mask(scores)
    elif valid.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(valid.shape)} != scores shape {tuple(scores.shape)}")
    pos = scores.diagonal()[:, None]  # (B, 1): row i's target score s_i
    return pos, valid


def top1(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """TOP1 (seed 003 section 3.1.3): mean_j sigmoid(s_j - s_i) + sigmoid(s_j^2) over negatives."""
    pos, valid = _prep(scores, valid)
    terms = torch.sigmoid(scores - pos) + torch.sigmoid(scores * scores)  # (B, C)
    vf = valid.to(scores.dtype)
    per_row = (terms * vf).sum(1) / vf.sum(1).clamp_min(1.0)  # (B,)
    return per_row.mean()


def bpr(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BPR (seed 003 section 3.1.3): -mean_j log sigmoid(s_i - s_j) over negatives."""
    pos, valid = _prep(scores, valid)
    terms = -F.logsigmoid(pos - scores)  # (B, C)
    vf = valid.to(scores.dtype)
    per_row = (terms * vf).sum(1) / vf.sum(1).clamp_min(1.0)  # (B,)
    return per_row.mean()


def _softmax_neg(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the valid negatives of each row only (Top-k gains paper, section 3)."""
    masked = scores.masked_fill(~valid, float("-inf"))  # (B, C)
    w = torch.softmax(masked, dim=1)
    return torch.nan_to_num(w, nan=0.0)  # a row without any negative gets zero weights


def top1_max(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """TOP1-max: sum_j softmax_neg(s)_j [sigmoid(s_j - s_i) + sigmoid(s_j^2)]."""
    pos, valid = _prep(scores, valid)
    w = _softmax_neg(scores, valid)  # (B, C)
    terms = torch.sigmoid(scores - pos) + torch.sigmoid(scores * scores)  # (B, C)
    return (w * terms).sum(1).mean()


def bpr_max(
    scores: torch.Tensor, valid: torch.Tensor | None = None, bpreg: float = 1.0
) -> torch.Tensor:
    """BPR-max: -log(sum_j softmax_neg(s)_j sigmoid(s_i - s_j)) + bpreg sum_j softmax_neg(s)_j s_j^2.

    The softmax weights are *not* detached: the gradient flows through them as in the paper's
    derivation. A tiny 1e-24 keeps the log finite when every negative dominates.
    """
    pos, valid = _prep(scores, valid)
    w = _softmax_neg(scores, valid)  # (B, C)
    inner = (w * torch.sigmoid(pos - scores)).sum(1)  # (B,)
    reg = (w * scores * scores).sum(1)  # (B,)
    return (-torch.log(inner + 1e-24) + bpreg * reg).mean()


def cross_entropy(
    scores: torch.Tensor,
    valid: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    logq: float = 1.0,
) -> torch.Tensor:
    """Sampled softmax cross-entropy over the B + S columns with a logQ correction.

    ``z_ij = s_ij - logq * log_q[j]`` (log_q (C,): log of how likely column j's item is to be
    among the sampled columns), then ``-log softmax(z_i)_i`` with the masked (accidental-hit)
    columns removed from the partition. The correction makes the sampled partition an
    estimate of the full softmax's, so popular items (sampled often) are not over-penalised.
    """
    pos, valid = _prep(scores, valid)
    z = scores
    if log_q is not None and logq > 0.0:
        if log_q.shape != (scores.shape[1],):
            raise ValueError(f"log_q must be (C,)=({scores.shape[1]},), got {tuple(log_q.shape)}")
        z = z - logq * log_q.unsqueeze(0)  # (B, C)
    keep = valid.clone()
    keep[:, : scores.shape[0]].fill_diagonal_(True)  # the positive stays in the partition
    z = z.masked_fill(~keep, float("-inf"))  # (B, C)
    logp = torch.log_softmax(z, dim=1).diagonal()  # (B,): log P(target of row i)
    return -logp.mean()


def compute_loss(
    cfg: LossConfig,
    scores: torch.Tensor,
    valid: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch on ``cfg.name``."""
    name = cfg.name
    if name == "cross-entropy":
        return cross_entropy(scores, valid, log_q, cfg.logq)
    if name == "bpr-max":
        return bpr_max(scores, valid, cfg.bpreg)
    if name == "top1-max":
        return top1_max(scores, valid)
    if name == "bpr":
        return bpr(scores, valid)
    if name == "top1":
        return top1(scores, valid)
    raise ValueError(f"unknown loss name {name!r}")


def sampled_loss(
    cfg: LossConfig,
    scores: torch.Tensor,
    cols: torch.Tensor,
    log_q: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """The training loss of one session-parallel step over the (B, B + S) score block.

    ``cols (B + S,)``: the item of every column (``cols[:B]`` the mini-batch targets, then the
    S shared extra negatives, seed 003 section 3.1.2 and the Top-k gains paper section 3).
    Accidental hits are masked exactly as ``negative_mask(cols[:B], cols,
    cfg.mask_sample_hits)``; ``log_q (B + S,)`` is the per-column log Q of the cross-entropy's
    logQ correction (used when ``cfg.logq > 0``).

    BPR-max, TOP1-max and the cross-entropy run through the fused
    ``rayrec.ops_kernels.sampled_ranking_loss`` (``backend`` overrides ``RAYREC_KERNELS`` for
    this call); the op equals :func:`bpr_max` / :func:`top1_max` / :func:`cross_entropy` with
    that mask (tests/unit/test_kernels_integration.py checks losses and gradients). TOP1 and
    BPR (seed 003 section 3.1.3) use the definitions above. Returns the mean over the B rows.
    """
    cols = torch.as_tensor(cols, device=scores.device).long()
    b = scores.shape[0]
    if cols.dim() != 1 or cols.shape[0] != scores.shape[-1] or cols.shape[0] < b:
        raise ValueError(
            f"cols must be (B + S,)=({scores.shape[-1]},) with the B={b} targets first, got "
            f"{tuple(cols.shape)}"
        )
    if cfg.name in FUSED_LOSSES:
        return sampled_ranking_loss(
            scores, cfg.name, cols=cols, mask_sample_hits=cfg.mask_sample_hits,
            bpreg=cfg.bpreg, log_q=log_q, logq=cfg.logq, backend=backend,
        )
    valid = negative_mask(cols[:b], cols, cfg.mask_sample_hits)  # (B, B + S)
    return compute_loss(cfg, scores, valid, log_q)


def balanced_logistic(pos_logits: torch.Tensor, pos_valid: torch.Tensor, neg_logits: torch.Tensor,
                      neg_valid: torch.Tensor) -> torch.Tensor:
    """The balanced loss L-hat of seed 002 section 4.2 (after eq. 5), per user, in log-sigmoid
    form (finite at any logit)::

        L_u = - 1/(2|S_u|) sum_{q in S_u} log sigma(s_q) - 1/(2|N_u|) sum_{q in N_u} log sigma(-s_q)

    (``log(1 - sigma(s)) = log sigma(-s)``).  ``pos_logits`` (B, P) / ``neg_logits`` (B, M)
    with ``*_valid`` masks (padding False).  Returns the mean of ``L_u`` over the B users (the
    paper sums over users; the mean keeps the scale independent of the batch).  Positives and
    negatives weigh half each whatever their counts, so duplicating S_u or N_u changes
    nothing; a row without a positive or a negative is an error."""
    pv, nv = pos_valid.to(pos_logits.dtype), neg_valid.to(neg_logits.dtype)
    n_pos, n_neg = pv.sum(1), nv.sum(1)
    if bool((n_pos == 0).any()) or bool((n_neg == 0).any()):
        raise ValueError("balanced_logistic: every row needs at least one positive and one negative")
    pos = (F.logsigmoid(pos_logits) * pv).sum(1) / (2 * n_pos)
    neg = (F.logsigmoid(-neg_logits) * nv).sum(1) / (2 * n_neg)
    return -(pos + neg).mean()
