"""Optimisers of the training loop, dense and row-sparse (catalog-scale training).

Item tables (input embeddings, output weights and biases: ``N`` rows, one per item) are read
through ``rayrec.ops_kernels.gather_rows`` when ``optim.sparse_item_rows`` is on, so their
gradient is row-sparse: only the rows a step touched.  Every optimiser here takes both kinds of
gradient; a row-sparse one updates the touched rows' state and weights and nothing else, so a
step costs ``O(touched rows * H)`` instead of ``O(N * H)``.  With ``R`` the (unique) rows of the
step, ``g_r`` their summed gradients (plus ``weight_decay * theta_r``):

(A) :class:`AdagradMomentum` -- Adagrad (Duchi et al. 2011) with classical momentum on the
    Adagrad-scaled step, as in the GRU4Rec authors' indexed optimiser (seed 003 section 4:
    "we found adagrad to give better results")::

        acc_r   <- acc_r + g_r^2
        v_r     <- momentum * v_r - lr * g_r / sqrt(acc_r + eps)
        theta_r <- theta_r + v_r                       for r in R; other rows unchanged

    A dense gradient is the case ``R`` = every row (then untouched-by-data rows still decay
    their velocity into the weights, which the indexed form never does).  ``momentum == 0``
    is plain Adagrad (``eps`` inside the square root).

(B) :class:`LazyAdam` -- Adam (Kingma & Ba 2015, Algorithm 1) on the touched rows::

        m_r <- b1 m_r + (1 - b1) g_r;   s_r <- b2 s_r + (1 - b2) g_r^2
        theta_r <- theta_r - lr / (1 - b1^t) * m_r / (sqrt(s_r) / sqrt(1 - b2^t) + eps)

    ``t`` counts the parameter's steps; a row touched at every step follows dense Adam
    exactly; an untouched row keeps its moments and weights (no decay of stale moments).

(C) :class:`LazySGD` -- ``v_r <- momentum * v_r + g_r; theta_r <- theta_r - lr * v_r``.

All state lives in ``self.state`` (tensors), so ``state_dict`` / ``load_state_dict``
round-trip and DeepSpeed can wrap these as client optimisers (with dense gradients: ZeRO
partitions dense gradients only, so the DeepSpeed engine trains with dense item tables).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from rayrec.ops_kernels import sparse_grad_rows
from rayrec.platform.config import StrictModel

__all__ = ["AdagradMomentum", "LazyAdam", "LazySGD", "OptimConfig", "apply_hyperparameters", "apply_lr_schedule",
           "build_optimizer", "clip_grad_norm", "param_groups"]


class OptimConfig(StrictModel):
    """``name``: adagrad | adagrad_momentum | adam | sgd; ``lr``; ``momentum``
    (adagrad_momentum, sgd); ``eps`` (inside the sqrt for Adagrad, Adam's eps for adam);
    ``weight_decay`` (L2 added to the gradient); ``lr_multipliers``: per named parameter group
    of the model's task (e.g. ``decay`` for the daily model's learned time decay), the group's
    learning rate is ``lr * multiplier``; ``sparse_item_rows``: item tables take row-sparse
    gradients and indexed updates (module docstring; ignored by the DeepSpeed engine, which
    needs dense gradients)."""

    name: Literal["adagrad", "adagrad_momentum", "adam", "sgd"] = "adagrad_momentum"
    lr: float = 0.2
    momentum: float = 0.2
    eps: float = 1e-6
    weight_decay: float = 0.0
    lr_multipliers: dict[str, float] = Field(default_factory=dict)
    sparse_item_rows: bool = True
    clip_norm: float | None = Field(None, gt=0)
    """Scale the step's gradient to this global L2 norm when it exceeds it (Pascanu et al.
    2013; seed 002 section 4.3 uses 10); None: no clipping."""
    lr_step_epochs: int | None = Field(None, ge=1)
    """Step decay: the learning rate is ``lr * lr_step_gamma ** (epoch // lr_step_epochs)``
    (epochs counted from 0; seed 004 divides by 5 every 100 epochs); None: a constant lr."""
    lr_step_gamma: float = Field(1.0, gt=0, le=1)
    """The factor of each step of ``lr_step_epochs`` (0.2: divide by 5)."""

    @field_validator("lr_multipliers")
    @classmethod
    def _mult(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: m for k, m in v.items() if not (m > 0 and math.isfinite(m))}
        if bad:
            raise ValueError(f"lr_multipliers must be finite values > 0, got {bad}")
        return v

    @field_validator("lr", "eps")
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not (v > 0.0 and math.isfinite(v)):
            raise ValueError(f"{info.field_name} must be a finite value > 0, got {v}")
        return v

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {v}")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: float) -> float:
        if v < 0.0 or not math.isfinite(v):
            raise ValueError(f"weight_decay must be a finite value >= 0, got {v}")
        return v


class _RowSparseOptimizer(torch.optim.Optimizer):
    """Base of the optimisers below: dense gradients take the dense update (``foreach`` over
    the group), row-sparse gradients (``ops_kernels.gather_rows``) the indexed update of the
    touched rows only.  Subclasses give ``_dense(group, params, grads)`` and
    ``_rows(group, p, rows, values)`` (``rows`` unique, ``values`` summed per row)."""

    def _state(self, p: torch.Tensor, names: tuple[str, ...]) -> dict[str, Any]:
        st = self.state[p]
        for n in names:
            if n not in st:
                st[n] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd = group["weight_decay"]
            dense_p, dense_g = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    rows, vals = sparse_grad_rows(p.grad)  # unique sorted rows, summed values
                    if rows.numel() == 0:
                        continue
                    if wd != 0.0:
                        vals = vals.add(p.index_select(0, rows), alpha=wd)
                    self._rows(group, p, rows, vals)
                else:
                    dense_p.append(p)
                    dense_g.append(p.grad if wd == 0.0 else p.grad.add(p, alpha=wd))
            if dense_p:
                self._dense(group, dense_p, dense_g)
        return loss


def _check_common(lr: float, momentum: float, weight_decay: float, eps: float | None = None) -> None:
    if not lr > 0.0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if eps is not None and not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if weight_decay < 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


class AdagradMomentum(_RowSparseOptimizer):
    """Adagrad with momentum (module docstring, eq. A). Row-sparse gradients update only
    their rows' ``acc``, ``mom`` and weights (the authors' indexed variant)."""

    def __init__(self, params: Iterable[Any], lr: float = 0.2, momentum: float = 0.0,
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        _check_common(lr, momentum, weight_decay, eps)
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps, "weight_decay": weight_decay})

    def _names(self, group) -> tuple[str, ...]:
        return ("acc", "mom") if group["momentum"] > 0.0 else ("acc",)

    def _dense(self, group, params, grads) -> None:
        lr, mom, eps = group["lr"], group["momentum"], group["eps"]
        states = [self._state(p, self._names(group)) for p in params]
        accs = [s["acc"] for s in states]
        torch._foreach_addcmul_(accs, grads, grads)  # acc += g^2
        denom = torch._foreach_add(accs, eps)
        torch._foreach_sqrt_(denom)  # sqrt(acc + eps)
        if mom > 0.0:
            moms = [s["mom"] for s in states]
            torch._foreach_mul_(moms, mom)
            torch._foreach_addcdiv_(moms, grads, denom, value=-lr)  # v = m v - lr g / d
            torch._foreach_add_(params, moms)
        else:
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)

    def _rows(self, group, p, rows, vals) -> None:
        lr, mom, eps = group["lr"], group["momentum"], group["eps"]
        st = self._state(p, self._names(group))
        acc = st["acc"].index_select(0, rows).addcmul_(vals, vals)  # (R, ...) acc_r + g_r^2
        st["acc"].index_copy_(0, rows, acc)
        denom = acc.add_(eps).sqrt_()
        if mom > 0.0:
            v = st["mom"].index_select(0, rows).mul_(mom).addcdiv_(vals, denom, value=-lr)
            st["mom"].index_copy_(0, rows, v)
            p.index_add_(0, rows, v)
        else:
            p.index_add_(0, rows, vals / denom, alpha=-lr)


class LazyAdam(_RowSparseOptimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1; eq. B of the module docstring) whose row-sparse
    gradients update only their rows' moments and weights ("lazy" Adam): the bias correction
    uses the parameter's step count, so a row touched at every step follows Adam exactly."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        _check_common(lr, 0.0, weight_decay, eps)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": (b1, b2), "eps": eps, "weight_decay": weight_decay})

    def _step_of(self, p) -> tuple[dict[str, Any], float]:
        st = self._state(p, ("exp_avg", "exp_avg_sq"))
        st["step"] = int(st.get("step", 0)) + 1
        return st, float(st["step"])

    def _coeffs(self, group, t: float) -> tuple[float, float]:
        b1, b2 = group["betas"]
        return group["lr"] / (1.0 - b1 ** t), math.sqrt(1.0 - b2 ** t)

    def _dense(self, group, params, grads) -> None:
        b1, b2 = group["betas"]
        states, steps, bc2s = [], [], []
        for p in params:
            st, t = self._step_of(p)
            step_size, bc2 = self._coeffs(group, t)
            states.append(st)
            steps.append(-step_size)
            bc2s.append(bc2)
        ms = [st["exp_avg"] for st in states]
        vs = [st["exp_avg_sq"] for st in states]
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2s)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, ms, denom, steps)

    def _rows(self, group, p, rows, vals) -> None:
        b1, b2 = group["betas"]
        st, t = self._step_of(p)
        step_size, bc2 = self._coeffs(group, t)
        m = st["exp_avg"].index_select(0, rows).lerp_(vals, 1.0 - b1)
        v = st["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(vals, vals, value=1.0 - b2)
        st["exp_avg"].index_copy_(0, rows, m)
        st["exp_avg_sq"].index_copy_(0, rows, v)
        p.index_add_(0, rows, m / (v.sqrt_().div_(bc2).add_(group["eps"])), alpha=-step_size)


class LazySGD(_RowSparseOptimizer):
    """SGD with classical momentum (``v <- m v + g; theta <- theta - lr v``, torch's
    convention); row-sparse gradients move only their rows' velocity and weights."""

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        _check_common(lr, momentum, weight_decay)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _dense(self, group, params, grads) -> None:
        lr, mom = group["lr"], group["momentum"]
        if mom == 0.0:
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        moms = [self._state(p, ("mom",))["mom"] for p in params]  # zero-initialised: v1 = g
        torch._foreach_mul_(moms, mom)
        torch._foreach_add_(moms, grads)
        torch._foreach_add_(params, moms, alpha=-lr)

    def _rows(self, group, p, rows, vals) -> None:
        lr, mom = group["lr"], group["momentum"]
        if mom == 0.0:
            p.index_add_(0, rows, vals, alpha=-lr)
            return
        st = self._state(p, ("mom",))
        v = st["mom"].index_select(0, rows).mul_(mom).add_(vals)
        st["mom"].index_copy_(0, rows, v)
        p.index_add_(0, rows, v, alpha=-lr)


def param_groups(groups: Iterable[Any], cfg: OptimConfig, known: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``groups`` (parameters, or dicts with ``params`` and an optional ``name``) with each
    group's ``lr`` set from ``cfg`` (``lr * lr_multipliers[name]``).  A name in
    ``lr_multipliers`` that is neither a group nor in ``known`` (groups the model can have
    in other configurations, e.g. the daily model's ``decay`` without a learned decay) is an
    error naming the groups the model has."""
    groups = list(groups)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    names = {g.get("name") for g in groups} | set(known)
    unknown = sorted(set(cfg.lr_multipliers) - names)
    if unknown:
        known = sorted(n for n in names if n)
        raise ValueError(f"optim.lr_multipliers: no parameter group {unknown}; the model has {known or 'none'}")
    return [dict(g, lr=cfg.lr * cfg.lr_multipliers.get(g.get("name"), 1.0)) for g in groups]


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """Set the config's lr (with group multipliers) and momentum on an optimiser whose state was
    restored: the config wins over the saved values (PBT's explore step restores an exploited
    trial's state under a mutated learning rate)."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * cfg.lr_multipliers.get(group.get("name"), 1.0)
        if cfg.name in ("adagrad_momentum", "sgd") and "momentum" in group:
            group["momentum"] = cfg.momentum


def apply_lr_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epoch: int) -> float:
    """Set every group's lr for ``epoch`` (0-based) under ``cfg.lr_step_epochs`` (group
    multipliers kept); returns the factor applied (1.0 without a schedule: nothing changes)."""
    if cfg.lr_step_epochs is None:
        return 1.0
    factor = cfg.lr_step_gamma ** (epoch // cfg.lr_step_epochs)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * cfg.lr_multipliers.get(group.get("name"), 1.0) * factor
    return factor


def build_optimizer(params: Iterable[Any], cfg: OptimConfig, known: Iterable[str] = ()) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg`` over ``params`` (parameters or named groups; ``known``:
    see :func:`param_groups`)."""
    groups = param_groups(params, cfg, known)
    if cfg.name == "adagrad_momentum":
        return AdagradMomentum(groups, cfg.lr, cfg.momentum, cfg.eps, cfg.weight_decay)
    if cfg.name == "adagrad":
        return AdagradMomentum(groups, cfg.lr, 0.0, cfg.eps, cfg.weight_decay)
    if cfg.name == "adam":
        return LazyAdam(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return LazySGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer name {cfg.name!r}")


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """``optim.clip_norm``: scale every gradient by ``max_norm / ||g||`` when the global L2 norm
    ``||g||`` of all of them exceeds ``max_norm`` (Pascanu et al. 2013; seed 002 section 4.3:
    "we scale the gradient vector to have norm 10 when it exceeds this value").  Row-sparse
    gradients count their summed rows.  Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.zeros((), dtype=torch.float64)
    for g in grads:
        v = sparse_grad_rows(g)[1] if g.is_sparse else g
        sq += v.double().pow(2).sum().cpu()
    norm = float(sq.sqrt())
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm
