"""A test-only model: the smallest session model written against the model contract.

This is a **test-only model** (it lives in ``tests/``, is never shipped and has no YAML in
``jobs/configs``).  It exists to prove that the contract of :mod:`rayrec.models.contract`
and :mod:`rayrec.models.registry` is enough: with this one file, and no change to any platform
file, the model trains in-process and on Ray Train (DDP), resumes, is tuned, evaluated and
served (``tests/integration/test_model_contract.py``).  It is also the worked example of
``docs/adding_a_model.md``.

The model is "next item from the last item"::

    score(next = j | last item i) = E[i] . W[j] + b[j]

with an item embedding ``E`` (N, D), output item weights ``W`` (N, D) and an output bias ``b``
(N,), trained with full-softmax cross-entropy on the (item, next item) pairs of the training
sessions.  Like every model file it imports nothing of ``rayrec.platform`` (the platform
hands it what it needs in a :class:`rayrec.models.contract.TaskEnv`).

Other processes (Ray Train workers, Tune trials) import it as ``tests.toy_model``: the
training driver and Tune pass :func:`rayrec.models.registry.plugin_modules` to them; CLI
processes and Serve replicas import it through ``RAYREC_MODEL_MODULES=tests.toy_model``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rayrec.models import registry
from rayrec.models.contract import TaskEnv
from rayrec.ops_kernels import topk_scores

__all__ = ["ToyLastItem", "ToyLastItemConfig", "ToyLastItemScorer", "ToyLastItemTask", "build"]

NAME = "toy_last_item"


class ToyLastItemConfig(BaseModel):
    """``dim``: size of the item embedding and of the output item weights; ``init_std``: the
    standard deviation of their normal initialisation (biases start at zero)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: Literal["toy_last_item"] = NAME
    dim: int = Field(16, ge=1)
    init_std: float = Field(0.1, gt=0)


class ToyLastItem(nn.Module):
    """``forward(last (B,) long) -> logits (B, N)``: the scores of every item for the next
    event given the current one."""

    def __init__(self, cfg: ToyLastItemConfig, n_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_items = int(n_items)
        self.E = nn.Parameter(torch.empty(n_items, cfg.dim))  # input item embedding
        self.W = nn.Parameter(torch.empty(n_items, cfg.dim))  # output item weights
        self.b = nn.Parameter(torch.zeros(n_items))  # output bias
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.E.normal_(0.0, self.cfg.init_std, generator=generator)
            self.W.normal_(0.0, self.cfg.init_std, generator=generator)
            self.b.zero_()

    def encode(self, last: torch.Tensor) -> torch.Tensor:
        return self.E.index_select(0, last)  # (B, D)

    def forward(self, last: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, self.encode(last), self.W.t())  # (B, N)

    @torch.no_grad()
    def topk(self, encoded: torch.Tensor, k: int, exclude: list[list[int]] | None = None,
             item_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``encoded @ W.T + b`` + exclusions + top-K (never the (B, N) block)."""
        return topk_scores(encoded, self.W, k, self.b, exclude, item_mask=item_mask)


def build(cfg: ToyLastItemConfig, n_items: int) -> ToyLastItem:
    """Registry builder: a fresh single-device model (what checkpoints' state dicts load into)."""
    return ToyLastItem(cfg, n_items)


# ---- evaluation and serving: rayrec.models.contract.ServableScorer ---------------------
class ToyLastItemScorer:
    """The state of a session is its last item; ``encode`` is that item's embedding."""

    def __init__(self, model: ToyLastItem) -> None:
        self.model = model.eval()
        self.n_items = model.n_items

    def _dev(self) -> torch.device:
        return self.model.E.device

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self._dev())  # (B,) last item

    @torch.no_grad()
    def step(self, state: torch.Tensor, items: torch.Tensor, reset: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        items = torch.as_tensor(items, dtype=torch.long, device=self._dev())
        return self.model(items), items  # the next item depends on the current one only

    def select(self, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=state.device))

    @torch.no_grad()
    def encode(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        last = torch.tensor([int(s[-1]) for s in sequences], dtype=torch.long, device=self._dev())
        return self.model.encode(last)  # (B, D)

    def topk(self, encoded: torch.Tensor, k: int, exclude: list[list[int]] | None = None,
             item_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.topk(encoded, k, exclude=exclude, item_mask=item_mask)


# ---- training: rayrec.models.contract.TrainTask -----------------------------------------
def training_pairs(offsets: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int64: every (event, next event) pair inside a session."""
    n = items.size
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.zeros(n, dtype=bool)
    starts[offsets[:-1][offsets[:-1] < n]] = True  # positions that open a session
    pos = np.flatnonzero(~starts[1:])  # i such that i + 1 continues i's session
    return items[pos], items[pos + 1]


class ToyLastItemTask:
    """Data parallel: every rank holds the whole model and trains on the pairs of its shard of
    sessions (``env.train``), shuffled every epoch with the loop's ``rng``."""

    parallelism = "data"

    def __init__(self, job: Any) -> None:  # a TrainJobConfig (platform layer: not imported)
        self.cfg: ToyLastItemConfig = job.model
        self.shuffle = bool(job.train.shuffle)

    def build(self, env: TaskEnv, generator: torch.Generator) -> nn.Module:
        model = ToyLastItem(self.cfg, env.n_items)
        model.reset_parameters(generator)  # the same initial weights on every rank
        self.device = env.device
        self.inputs, self.targets = training_pairs(env.train.offsets, env.train.items)
        return model

    def param_groups(self, module: nn.Module, lr: float) -> list[dict]:
        return [{"params": list(module.parameters())}]

    def num_batches(self, env: TaskEnv, batch_size: int) -> int:
        return math.ceil(self.inputs.size / batch_size)

    def batches(self, env: TaskEnv, module: nn.Module, epoch: int, batch_size: int,
                rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.permutation(self.inputs.size) if self.shuffle else np.arange(self.inputs.size)
        for a in range(0, order.size, batch_size):
            sel = order[a:a + batch_size]
            yield (torch.from_numpy(self.inputs[sel]).to(self.device),
                   torch.from_numpy(self.targets[sel]).to(self.device))

    def loss(self, forward: Callable[..., torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor],
             pad: bool = False) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.cross_entropy(forward(x), y), int(x.shape[0])  # no state: pad needs nothing

    def evaluate(self, env: TaskEnv, module: nn.Module, ks: Sequence[int], batch_size: int) -> dict:
        return env.evaluate(ToyLastItemScorer(module), env.valid, ks, batch_size)

    def full_state(self, env: TaskEnv, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.state_dict()

    def load_full_state(self, env: TaskEnv, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(state)

    def epoch_metrics(self, env: TaskEnv, module: nn.Module) -> dict[str, float]:
        """Optional hook: extra numbers for this epoch's metrics (this rank's view)."""
        return {"train_pairs_rank0": int(self.inputs.size)} if env.rank == 0 else {}


SPEC = registry.register(registry.ModelSpec(
    name=NAME, config_cls=ToyLastItemConfig, build=build, kind="session",
    task=ToyLastItemTask, scorer=ToyLastItemScorer, default_config=None, parallelism="data",
    job_defaults={"optim": {"name": "adam", "lr": 0.05}, "train": {"batch_size": 64, "shuffle": True}},
))
