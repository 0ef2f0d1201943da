"""The model contract: what a registered model gives the platform (pure PyTorch, no Ray).

A model is one file in ``models/`` (or anywhere, for a plug-in) that calls
:func:`rayrec.models.registry.register` with a :class:`rayrec.models.registry.ModelSpec`.
The platform's one training loop, its evaluation protocols, Tune and Serve only talk to a
model through the two protocols below, so a new model gets resume, Ray Train (DDP,
DeepSpeed ZeRO, tensor parallel), GPU, Tune and Serve without touching platform code.
See ``docs/adding_a_model.md``.

Layering: this module (and every model file) imports neither ``rayrec.platform`` nor
``rayrec.serve_apps`` nor ``rayrec.jobs``.  What a task needs from the platform (its
training data, the evaluation protocol of its metric family) arrives in a
:class:`TaskEnv` the platform builds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

__all__ = ["Parallelism", "ServableScorer", "SessionScorer", "TaskEnv", "TrainTask"]

Parallelism = Literal["data", "tensor"]
"""``data``: every rank holds the whole model and its own shard of the training data (DDP,
DeepSpeed ZeRO); ``tensor``: every rank sees all the data and holds a slice of the model
(catalog-wide tables split by item range, seed 000 section 5)."""


@runtime_checkable
class SessionScorer(Protocol):
    """What the ``next_item`` evaluation calls on a session model (and on baselines): events
    are fed one by one, session-parallel."""

    n_items: int

    def init_state(self, batch_size: int) -> Any:
        """State for ``batch_size`` fresh rows."""
        ...

    def step(self, state: Any, items: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """items (B,) long: current event's item_idx per row; reset (B,) bool: this row starts
        a new session (forget its state first). Returns scores (B, n_items) for the NEXT item
        and the new state."""
        ...

    def select(self, state: Any, rows: torch.Tensor) -> Any:
        """Keep only ``rows`` (long indices) of the state."""
        ...


@runtime_checkable
class ServableScorer(SessionScorer, Protocol):
    """A :class:`SessionScorer` that Serve's session deployment can answer requests with:
    whole sessions are encoded, then one fused top-K (no ``(B, N)`` score block)."""

    def encode(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, D): one representation per session (item_idx lists, oldest first, non-empty)."""
        ...

    def topk(
        self,
        encoded: torch.Tensor,
        k: int,
        exclude: list[list[int]] | None = None,
        item_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (B, k), indices (B, k)), best first; excluded items (per row) and items
        outside ``item_mask`` ((N,) bool) never appear; slots beyond the eligible items hold
        ``-inf`` / ``-1``."""
        ...


@dataclass
class TaskEnv:
    """What the platform hands a task on one worker.

    ``train`` / ``valid`` are the data objects of the model kind's data family (``session``:
    CSR session arrays with ``offsets``, ``items``, ``ts``; ``daily``: user windows with
    ``batches(batch_size, shuffle, seed)``), already sharded for ``data`` parallelism.
    ``evaluate(module_or_scorer, valid, ks, batch_size) -> dict`` is the platform's protocol
    for the kind's metric family; its keys are the one metric vocabulary
    (``recall@20``, ``mrr@20``, ``precision@10``, ``pcc@10``, ...).
    """

    rank: int
    world: int
    device: torch.device
    item_ids: list[str]
    train: Any
    valid: Any | None
    train_counts: np.ndarray
    """Global training item counts (N,), identical on every rank (popularity, logQ)."""
    evaluate: Callable[..., dict[str, Any]]
    seed: int = 0
    sparse_rows: bool = False
    """Read the item tables (``TrainTask.item_tables``) through
    ``rayrec.ops_kernels.gather_rows`` so their gradients are row-sparse: the loop's optimiser
    then updates touched rows only and data-parallel ranks exchange only those rows
    (``optim.sparse_item_rows``; always False under DeepSpeed, which takes dense gradients)."""
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    """Autograd-aware all-reduce over the model-parallel group (identity on one rank)."""
    copy_to_parallel: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    """Identity forward, all-reduce of the gradient backward (identity on one rank)."""
    gather: Callable[[torch.Tensor, int], torch.Tensor] = field(default=lambda t, dim: t)
    """Concatenation of every rank's tensor along ``dim`` (identity on one rank)."""
    item_range: tuple[int, int] | None = None
    """Tensor parallelism: the ``[start, stop)`` items whose catalog-wide rows this rank holds
    (None: all)."""
    gather_state: Callable[[nn.Module], dict[str, torch.Tensor]] = field(
        default=lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()})
    """The unsharded state of a module whose submodules declare ``catalog_dims`` (collective
    under tensor parallelism)."""
    load_state: Callable[[nn.Module, dict[str, torch.Tensor]], None] = field(
        default=lambda m, s: m.load_state_dict(s))
    """Load an unsharded state into this rank's module (slicing catalog-wide tensors)."""
    log: Callable[[str], None] = print
    inputs: dict[str, Any] = field(default_factory=dict)
    """Kind-specific frozen inputs the data family loads on every worker (history models:
    ``inputs["embeddings"]``, the published (N, d) item vectors)."""

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


class TrainTask(Protocol):
    """One model's training on one worker, driven by ``rayrec.platform.training.loop``.

    The loop owns epochs, seeding, the optimiser and its engine (DDP, DeepSpeed, tensor
    parallel), padding of uneven shards, evaluation cadence, metrics, checkpoints, resume and
    Tune reports.  The task owns the math.
    """

    parallelism: Parallelism

    def build(self, env: TaskEnv, generator: torch.Generator) -> nn.Module:
        """The module the engine wraps; its ``forward`` is what a step calls through the
        engine (DDP / DeepSpeed see the whole computation).  Initialised from ``generator``
        (seeded identically on every rank); under ``tensor`` parallelism this rank's slice."""
        ...

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups, each optionally ``name``-d (``optim.lr_multipliers``
        addresses them by name); ``[{"params": ...}]`` for one group.  A task may declare
        ``param_group_names``: every group name it can return in some configuration."""
        ...

    def num_batches(self, env: TaskEnv, batch_size: int) -> int:
        """Steps of one epoch on this rank (the loop pads shorter ranks)."""
        ...

    def batches(self, env: TaskEnv, module: nn.Module, epoch: int, batch_size: int,
                rng: np.random.Generator) -> Iterator[Any]:
        """This rank's mini-batches of one epoch."""
        ...

    def loss(self, forward: Callable[..., Any], batch: Any, pad: bool = False) -> tuple[torch.Tensor, int]:
        """(loss, examples) of one step, calling ``forward`` (the wrapped module).  With
        ``pad=True`` the batch is a repeat used only to match collectives: the loop zeroes
        the loss and the task must not advance its own state."""
        ...

    def evaluate(self, env: TaskEnv, module: nn.Module, ks: Sequence[int], batch_size: int) -> dict[str, Any]:
        """Validation metrics through ``env.evaluate``: under tensor parallelism called on
        every rank with the module this task built (its slice); under data parallelism on
        rank 0 only, with a fresh single-device model from ``ModelSpec.build`` holding the
        gathered full state (so ``module`` may be that model rather than the built one)."""
        ...

    def full_state(self, env: TaskEnv, module: nn.Module) -> dict[str, torch.Tensor]:
        """The unsharded single-device state dict of the model (collective under ``tensor``
        parallelism); what checkpoints hold and ``ModelSpec.build`` loads."""
        ...

    def load_full_state(self, env: TaskEnv, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load an unsharded state into this rank's module (slicing under ``tensor``)."""
        ...

    # optional: ``item_state_dims(module) -> dict[str, int]``: the keys of ``full_state`` that
    # run over items -> that dimension (one row per item of ``env.item_ids``).  Warm start
    # (``train.init_from``) copies those rows from a checkpoint by item id and keeps the fresh
    # rows of new items; without it the ``catalog_dims`` of the module's submodules are used.
    # optional: ``item_tables(module) -> list[nn.Parameter]``: the item-indexed tables (one row
    # per item: embeddings, output weights and biases) that the task reads with
    # ``gather_rows(table, idx, env.sparse_rows)``.  With ``env.sparse_rows`` the loop keeps
    # them out of DDP and exchanges their touched rows (``platform/training/sparse_rows.py``).
