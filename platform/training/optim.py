"""Optimisers for GRU4Rec (seed 003 section 4: "we found adagrad to give better results").

:class:`AdagradMomentum` is Adagrad (Duchi et al. 2011) with classical momentum on the
Adagrad-scaled step, as used by the authors' later implementations::

    acc   <- acc + g^2
    v     <- momentum * v - lr * g / sqrt(acc + eps)
    theta <- theta + v

With ``momentum == 0`` it is plain Adagrad (``eps`` inside the square root). Gradients are
plain dense ``p.grad`` tensors and all state lives in ``self.state`` (tensors ``acc`` and
``mom``), so ``state_dict`` / ``load_state_dict`` round-trip and DeepSpeed can wrap it as a
client optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from rayrec.platform.config import StrictModel

__all__ = ["AdagradMomentum", "OptimConfig", "apply_hyperparameters", "build_optimizer", "param_groups"]


class OptimConfig(StrictModel):
    """``name``: adagrad | adagrad_momentum | adam | sgd; ``lr``; ``momentum``
    (adagrad_momentum, sgd); ``eps`` (inside the sqrt for Adagrad, Adam's eps for adam);
    ``weight_decay`` (L2 added to the gradient); ``lr_multipliers``: per named parameter group
    of the model's task (e.g. ``decay`` for the daily model's learned time decay), the group's
    learning rate is ``lr * multiplier``."""

    name: Literal["adagrad", "adagrad_momentum", "adam", "sgd"] = "adagrad_momentum"
    lr: float = 0.2
    momentum: float = 0.2
    eps: float = 1e-6
    weight_decay: float = 0.0
    lr_multipliers: dict[str, float] = Field(default_factory=dict)

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


class AdagradMomentum(torch.optim.Optimizer):
    """Adagrad with momentum (see module docstring). Dense gradients only."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.2,
        momentum: float = 0.0,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _state_for(self, p: torch.Tensor, momentum: float) -> dict[str, torch.Tensor]:
        st = self.state[p]
        if "acc" not in st:
            st["acc"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if momentum > 0.0 and "mom" not in st:
            st["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, eps, wd = group["lr"], group["momentum"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = []
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdagradMomentum takes dense gradients only")
                grads.append(p.grad if wd == 0.0 else p.grad.add(p, alpha=wd))
            states = [self._state_for(p, mom) for p in params]
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
        return loss


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


def build_optimizer(params: Iterable[Any], cfg: OptimConfig, known: Iterable[str] = ()) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg`` over ``params`` (parameters or named groups; ``known``:
    see :func:`param_groups`)."""
    groups = param_groups(params, cfg, known)
    if cfg.name == "adagrad_momentum":
        return AdagradMomentum(groups, cfg.lr, cfg.momentum, cfg.eps, cfg.weight_decay)
    if cfg.name == "adagrad":
        return AdagradMomentum(groups, cfg.lr, 0.0, cfg.eps, cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer name {cfg.name!r}")
