"""Training the daily model at catalog scale: in-process or on Ray Train (seed 000, sec. 5).

Seed 000 needs model parallelism because both the input and the output of the network are
as wide as the catalog (P products, "million of input and output dimensionalities",
section 5).  :class:`ShardedDailyNN` is :class:`rayrec.models.daily_nn.DailyNN` with both
catalog-wide tables split across ``world_size`` ranks by product (``shard_range``):

* input layer ``W1 (P, H1)`` row-parallel: each rank bags the purchases that fall in its
  product range and the partial pre-activations are all-reduced (``all_reduce_sum``:
  forward sum, identity backward);
* the small hidden layer is replicated (every rank sees the same batch and the same dropout
  masks: the torch RNG is re-seeded identically on all ranks every epoch);
* output layer ``W_L (H2, P)`` column-parallel (``ColumnParallelOutput``); eqs. 7-9 are sums
  over products, so each rank evaluates ``combined_cost`` on its own columns and the
  per-rank costs are all-reduced.  No rank ever holds all P rows or columns.

Initial weights are generated per block of 4096 products from ``(seed, block)``, so a
2-rank model starts from exactly the 1-rank model's weights (the loss-equality test).

``fit_daily(cfg)``: ``scaling.num_workers = 0`` runs the loop in this process (checkpoints
in ``<storage_path>/<name>/checkpoint_<epoch>``); ``>= 1`` runs a ``TorchTrainer`` (gloo),
every worker loading the same data (tensor parallel, not data parallel).  After every
epoch the model is evaluated with the ``future_window`` protocol on the windows shifted
back one month (``data.valid_prefix``, section 3.1) and a checkpoint (the gathered full
model, written by ``rayrec.platform.checkpoint``) is reported with the metrics.

``scaling.engine = "deepspeed"`` wraps the sharded model in a DeepSpeed engine with an
``mpu`` whose model-parallel group spans all workers (data-parallel groups of size 1), so
DeepSpeed never averages the different shards' gradients; ZeRO stage 0 or 1 (stage 1
partitions optimiser state over the data-parallel group, i.e. not at all here; stages 2/3
are refused by the config).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rayrec.models.daily_nn import (
    DECAY_BUCKETS,
    DailyNNConfig,
    SparseBatch,
    combined_cost,
    decay_bucket,
    decayed_input,
    kl_sparsity,
    time_decay,
)
from torch import nn

from rayrec.platform.checkpoint import load_checkpoint, save_checkpoint
from rayrec.platform.daily.config import DailyTrainJobConfig
from rayrec.platform.daily.data import (
    Catalog,
    UserWindows,
    load_catalog,
    load_windows,
    synthetic_windows,
)
from rayrec.platform.evaluation.protocols import evaluate_future_window, evaluate_future_window_topk
from rayrec.platform.training.tensor_parallel import (
    ColumnParallelOutput,
    all_reduce_sum,
    copy_to_parallel,
    shard_parameter_bytes,
    shard_range,
)

__all__ = [
    "DailyFitResult",
    "ShardedDailyNN",
    "fit_daily",
    "load_daily_model",
    "local_batch",
    "train_loop",
]

_ACTS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}
_BLOCK = 4096


def _block_uniform(start: int, stop: int, width: int, bound: float, seed: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of a ``(P, width)`` uniform(-bound, bound) matrix whose rows are
    generated per block of 4096 from ``(seed, block)``: independent of the sharding."""
    out = torch.empty(stop - start, width)
    b0, b1 = start // _BLOCK, (stop - 1) // _BLOCK
    for b in range(b0, b1 + 1):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + b)
        block = torch.empty(_BLOCK, width).uniform_(-bound, bound, generator=g)
        lo, hi = max(start, b * _BLOCK), min(stop, (b + 1) * _BLOCK)
        out[lo - start : hi - start] = block[lo - b * _BLOCK : hi - b * _BLOCK]
    return out


def local_batch(batch: SparseBatch, start: int, stop: int) -> SparseBatch:
    """The purchases of ``batch`` in products ``[start, stop)``, renumbered from 0."""
    keep = (batch.item_idx >= start) & (batch.item_idx < stop)  # (nnz,)
    rows = batch.row_ids()[keep]
    offsets = torch.zeros(batch.batch_size + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=batch.batch_size), 0)
    days = None if batch.days_ago is None else batch.days_ago[keep]
    return SparseBatch(item_idx=batch.item_idx[keep] - start, offsets=offsets, days_ago=days)


class ShardedDailyNN(nn.Module):
    """DailyNN (eqs. 3-9) with the input rows and output columns split across ranks."""

    def __init__(self, num_items: int, config: DailyNNConfig, rank: int = 0, world_size: int = 1, seed: int = 0):
        super().__init__()
        self.config, self.num_items = config, int(num_items)
        self.rank, self.world_size = rank, world_size
        self.weights = config.cost_weights()
        self.start, self.stop = shard_range(self.num_items, rank, world_size)
        h1, h2 = (int(h) for h in config.hidden_sizes)
        self.input_shard = nn.Parameter(_block_uniform(self.start, self.stop, h1, 1.0 / math.sqrt(h1), seed))
        self.input_bias = nn.Parameter(torch.zeros(h1))
        g = torch.Generator().manual_seed(int(seed) + 7)
        self.hidden_layer = nn.Linear(h1, h2)
        bound = 1.0 / math.sqrt(h1)
        with torch.no_grad():
            self.hidden_layer.weight.uniform_(-bound, bound, generator=g)
            self.hidden_layer.bias.uniform_(-bound, bound, generator=g)
        self.output = ColumnParallelOutput(h2, self.num_items, rank, world_size)
        with torch.no_grad():
            ob = 1.0 / math.sqrt(h2)
            self.output.weight.copy_(_block_uniform(self.start, self.stop, h2, ob, seed + 1).T)
            self.output.bias.copy_(_block_uniform(self.start, self.stop, 1, ob, seed + 2)[:, 0])
        self.act = _ACTS[config.activation]
        if config.decay == "learned":
            self.conv_weight = nn.Parameter(torch.ones(DECAY_BUCKETS))
            self.conv_bias = nn.Parameter(torch.zeros(1))  # (1,): DeepSpeed cannot flatten 0-d
            self.conv_act = _ACTS[config.conv_activation or config.activation]
        self.dropout = nn.Dropout(config.dropout)
        self._means: list[torch.Tensor] = []

    # -- inputs ---------------------------------------------------------------------------
    def input_weights(self, batch: SparseBatch) -> torch.Tensor:
        kind = self.config.decay
        if kind == "none":
            return torch.ones(batch.nnz)
        if kind == "parametric":
            return time_decay(batch.days_ago.float(), self.weights.ti)
        b = decay_bucket(batch.days_ago)
        return self.conv_act(self.conv_weight[b] + self.conv_bias) - self.conv_act(self.conv_bias)

    def learned_decay_curve(self) -> torch.Tensor:
        if self.config.decay != "learned":
            raise ValueError(f"no learned decay: model.decay is {self.config.decay!r}")
        with torch.no_grad():
            return self.conv_act(self.conv_weight + self.conv_bias) - self.conv_act(self.conv_bias)

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        """Sparse purchases -> second hidden layer ``(B, H2)``; identical on every rank."""
        batch.validate(self.num_items, "inputs", need_days=self.config.decay != "none")
        if self.config.decay == "parametric":  # eqs. 5-6 through the fused op, this shard's rows
            keep = None
            if self.training and self.config.input_noise > 0 and batch.nnz:
                keep = torch.rand(batch.nnz) >= self.config.input_noise  # xi (masking)
            partial = decayed_input(self.input_shard, batch, self.weights.ti, keep, self.start, self.stop)
            return self._hidden(all_reduce_sum(partial) + self.input_bias)
        w = self.input_weights(batch)  # (nnz,)
        if self.config.decay == "learned":
            # w depends on the replicated conv kernel, but each rank only uses its own
            # products' entries: all-reduce dL/dw in backward so every rank's kernel gets
            # the full gradient (otherwise the replicas drift apart).
            w = copy_to_parallel(w)
        if self.training and self.config.input_noise > 0 and batch.nnz:
            w = w * (torch.rand(batch.nnz) >= self.config.input_noise).to(w.dtype)  # xi (masking)
        keep = (batch.item_idx >= self.start) & (batch.item_idx < self.stop)
        loc = SparseBatch(batch.item_idx, batch.offsets, w)
        loc = local_batch(loc, self.start, self.stop)
        partial = F.embedding_bag(
            loc.item_idx, self.input_shard, loc.offsets, mode="sum",
            per_sample_weights=w[keep], include_last_offset=True,
        )  # (B, H1)
        if self.config.decay == "learned":
            base = copy_to_parallel(self.conv_act(self.conv_bias))  # replicated scalar
            partial = partial + base * self.input_shard.sum(dim=0)
        return self._hidden(all_reduce_sum(partial) + self.input_bias)

    def _hidden(self, pre1: torch.Tensor) -> torch.Tensor:
        a1 = self.act(pre1)
        a2 = self.act(self.hidden_layer(self.dropout(a1)))
        self._means = [a1.mean(dim=0), a2.mean(dim=0)]
        return self.dropout(a2)

    def local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)  # (B, P_local)

    def loss(self, hidden: torch.Tensor, inputs: SparseBatch, targets: SparseBatch) -> torch.Tensor:
        """Eq. 6 (mean over customers of eq. 7 + L2 + KL), the same value on every rank."""
        targets.validate(self.num_items, "targets")
        z = self.local_logits(hidden)
        li, lt = local_batch(inputs, self.start, self.stop), local_batch(targets, self.start, self.stop)
        total = all_reduce_sum(combined_cost(z, li, lt, self.weights).mean())
        cfg = self.config
        if cfg.l2 > 0:
            sharded = self.input_shard.pow(2).sum() + self.output.weight.pow(2).sum()
            total = total + cfg.l2 * (all_reduce_sum(sharded) + self.hidden_layer.weight.pow(2).sum())
        if cfg.sparsity_weight > 0:
            total = total + cfg.sparsity_weight * sum(kl_sparsity(m, cfg.sparsity_target) for m in self._means)
        return total

    # -- full state (rank-independent) ----------------------------------------------------
    def full_state(self) -> dict[str, torch.Tensor]:
        """The 1-rank state dict, gathered from all ranks (call on every rank)."""
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        if self.world_size == 1:
            return state
        for key, dim in (("input_shard", 0), ("output.weight", 1), ("output.bias", 0)):
            parts: list[Any] = [None] * self.world_size
            dist.all_gather_object(parts, state[key])
            state[key] = torch.cat(parts, dim=dim)
        return state

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full ``(B, P)`` logits (gathered across ranks; small P only)."""
        z = self.local_logits(hidden).detach()
        if self.world_size == 1:
            return z
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, z)
        return torch.cat(parts, dim=1)


def load_daily_model(ck_dir: str) -> tuple[ShardedDailyNN, list[str], dict[str, Any]]:
    """A 1-rank model from a ``fit_daily`` checkpoint (weights_only loading)."""
    ck = load_checkpoint(ck_dir)
    cfg = DailyTrainJobConfig.model_validate(ck.config)
    model = ShardedDailyNN(len(ck.item_ids), cfg.model)
    model.load_state_dict(ck.model_state)
    model.eval()
    return model, ck.item_ids, ck.meta


# ------------------------------------------------------------------------------------------
# data + evaluation
# ------------------------------------------------------------------------------------------


@dataclass
class DailyData:
    catalog: Catalog
    train: UserWindows
    valid: UserWindows | None


def load_daily_data(cfg: DailyTrainJobConfig, with_valid: bool = True) -> DailyData:
    d = cfg.data
    if d.synthetic is not None:
        w = synthetic_windows(d.synthetic)
        cat = Catalog([str(i) for i in range(d.synthetic.n_items)], np.arange(d.synthetic.n_items))
        return DailyData(cat, w, None)
    cat = load_catalog(d.path, d.catalog_size)
    train = load_windows(d.path, d.train_prefix, cat)
    valid = load_windows(d.path, d.valid_prefix, cat) if (with_valid and d.valid_prefix) else None
    return DailyData(cat, train, valid)


@torch.no_grad()
def evaluate_model(model: ShardedDailyNN, windows: UserWindows, ks: list[int], batch_size: int = 256) -> dict:
    """``future_window`` protocol: input items excluded, Precision@K and PCC@K (eqs. 1-2)."""
    was = model.training
    model.eval()

    def topk_fn(users: np.ndarray) -> torch.Tensor:
        inputs, _ = windows.batch(users)
        return model.scores(model(inputs))

    def hidden_fn(users: np.ndarray) -> torch.Tensor:
        return model(windows.batch(users)[0])

    try:
        if model.world_size == 1:  # fused top-K (rayrec.ops_kernels.topk_scores), no (B, P) block
            return evaluate_future_window_topk(
                hidden_fn, model.output.weight.t(), model.output.bias, windows.x_lists(),
                windows.y_lists(), ks, batch_size,
            )
        return evaluate_future_window(
            topk_fn, windows.x_lists(), windows.y_lists(), ks, windows.n_items, batch_size
        )
    finally:
        model.train(was)


# ------------------------------------------------------------------------------------------
# the per-worker loop
# ------------------------------------------------------------------------------------------


@dataclass
class DailyFitResult:
    metrics: dict[str, Any]
    checkpoint_dir: str | None
    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gather(value: Any, world: int) -> list[Any]:
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


class _MPU:
    """DeepSpeed ``mpu``: model parallel over all ranks, data parallel groups of one."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.mp_group = dist.new_group(list(range(world)))
        groups = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
        self.dp_group = groups[rank]

    def get_model_parallel_rank(self) -> int:
        return self.rank

    def get_model_parallel_world_size(self) -> int:
        return self.world

    def get_model_parallel_group(self):  # noqa: ANN201
        return self.mp_group

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_data_parallel_world_size(self) -> int:
        return 1

    def get_data_parallel_group(self):  # noqa: ANN201
        return self.dp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group


def train_loop(
    cfg: DailyTrainJobConfig,
    rank: int,
    world: int,
    report: Callable[[dict[str, Any], str | None], None],
    data: DailyData | None = None,
    restore_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One rank's training; ``report(metrics, checkpoint_dir or None)`` after every epoch."""
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    data = data if data is not None else load_daily_data(cfg, with_valid=True)
    P = data.catalog.size
    model = ShardedDailyNN(P, cfg.model, rank, world, seed=cfg.train.seed)
    start_epoch = 0
    if restore_dir:
        ck = load_checkpoint(restore_dir)
        ck_model = ck.config.get("model") if isinstance(ck.config, dict) else None
        if ck_model != cfg.model.model_dump(mode="json") or list(ck.item_ids) != list(data.catalog.item_ids):
            raise ValueError(
                f"the run's latest checkpoint {restore_dir} holds another model config or catalog; "
                "use another run.name or delete the run directory to start fresh"
            )
        full = ck.model_state
        local = {k: v for k, v in full.items()}
        s, e = model.start, model.stop
        local["input_shard"] = full["input_shard"][s:e]
        local["output.weight"] = full["output.weight"][:, s:e]
        local["output.bias"] = full["output.bias"][s:e]
        model.load_state_dict(local)
        start_epoch = int(ck.meta.get("epoch", 0))
        log(f"resumed from {restore_dir} at epoch {start_epoch}")
    lr = cfg.optim.lr
    conv = [p for n, p in model.named_parameters() if n.startswith("conv_")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv_")]
    groups = [{"params": rest}]
    if conv:
        groups.append({"params": conv, "lr": lr * cfg.optim.decay_lr_multiplier})
    opt = torch.optim.Adam(groups, lr=lr) if cfg.optim.name == "adam" else torch.optim.SGD(groups, lr=lr)
    # the optimiser state is saved whole on one rank (in-process runs and Tune trials, where
    # PBT restores exploited trials); sharded multi-worker runs resume with fresh moments
    keep_optim = world == 1 and cfg.scaling.engine == "torch"
    if restore_dir and keep_optim and ck.optim_state is not None:
        saved = ck.optim_state
        if len(saved.get("param_groups", [])) == len(opt.param_groups):
            opt.load_state_dict(saved)
            # PBT explores the learning rate: the restored state takes this config's lr
            opt.param_groups[0]["lr"] = lr
            if conv:
                opt.param_groups[1]["lr"] = lr * cfg.optim.decay_lr_multiplier
    engine = None
    if cfg.scaling.engine == "deepspeed":
        import deepspeed

        ds_cfg = {
            "train_micro_batch_size_per_gpu": cfg.train.batch_size,
            "gradient_accumulation_steps": 1,
            "steps_per_print": 10**9,
            "zero_optimization": {"stage": cfg.scaling.zero_stage},
            "zero_allow_untested_optimizer": True,
        }
        engine, opt, _, _ = deepspeed.initialize(
            model=model, optimizer=opt, config=ds_cfg, mpu=_MPU(rank, world) if world > 1 else None
        )
    param_bytes = shard_parameter_bytes(model)
    history: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        torch.manual_seed(cfg.train.seed * 7919 + epoch)  # same dropout / noise on every rank
        model.train()
        t0, n_ex, losses, step_losses = time.perf_counter(), 0, [], []
        for step, (_rows, inputs, targets) in enumerate(
            data.train.batches(cfg.train.batch_size, shuffle=True, seed=cfg.train.seed + epoch)
        ):
            if cfg.train.max_steps_per_epoch and step >= cfg.train.max_steps_per_epoch:
                break
            hidden = (engine or model)(inputs)
            loss = model.loss(hidden, inputs, targets)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            losses.append(float(loss.detach()))
            if len(step_losses) < 8:
                step_losses.append(float(loss.detach()))
            n_ex += inputs.batch_size
        dt = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "step_losses": step_losses,
            "examples_per_s": n_ex / dt if dt > 0 else 0.0,
            "epoch_s": dt,
            "n_items": P,
            "world_size": world,
        }
        if data.valid is not None:
            ev = evaluate_model(model, data.valid, cfg.train.ks, cfg.train.eval_batch_size)
            metrics.update({f"valid_{k}": v for k, v in ev.items() if k != "protocol"})
        if cfg.model.decay == "learned":
            metrics["learned_decay"] = [float(x) for x in model.learned_decay_curve()]
        metrics["param_bytes_per_rank"] = _gather(param_bytes, world)
        metrics["peak_rss_mb_per_rank"] = _gather(_peak_rss_mb(), world)
        ck_dir = None
        if cfg.run.checkpoint:
            state = model.full_state()  # collective
            if rank == 0:
                ck_dir = tempfile.mkdtemp(prefix="rayrec-daily-ck-")
                save_checkpoint(ck_dir, state, cfg.model_dump(mode="json"), data.catalog.item_ids,
                                opt.state_dict() if keep_optim else None,
                                {"epoch": epoch + 1, "metrics": _jsonable(metrics), "model": "daily_nn"})
        elif rank == 0:
            ck_dir = tempfile.mkdtemp(prefix="rayrec-daily-metrics-")
            Path(ck_dir, "metrics.json").write_text(json.dumps(_jsonable(metrics)))
        if rank == 0:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                     if not isinstance(v, list)}
            log(f"epoch {epoch + 1}: {shown}")
        report(metrics, ck_dir)
        history.append(metrics)
        last = metrics
    last = dict(last)
    last["history"] = history
    return last


def _jsonable(m: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(m, default=float))


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def _run_dir(cfg: DailyTrainJobConfig) -> Path:
    return Path(cfg.run.storage_path).resolve() / cfg.run.name


def _latest(run_dir: Path) -> str | None:
    cands = sorted(p for p in run_dir.glob("checkpoint_*") if (p / "model.pt").is_file())
    return str(cands[-1]) if cands else None


def _resolve(cfg: DailyTrainJobConfig) -> DailyTrainJobConfig:
    p = cfg.data.path
    if cfg.data.synthetic is None and "://" not in p and not os.path.isabs(p):
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": os.path.abspath(p)})})
    return cfg


def fit_daily(cfg: DailyTrainJobConfig, log: Callable[[str], None] = print) -> DailyFitResult:
    """Train the daily model; returns the last epoch's metrics and the checkpoint directory."""
    cfg = _resolve(cfg)
    data = load_daily_data(cfg)  # fail early, with clear errors, before any worker starts
    if cfg.scaling.num_workers == 0:
        return _fit_in_process(cfg, data, log)
    return _fit_ray(cfg, data, log)


def _fit_in_process(cfg: DailyTrainJobConfig, data: DailyData, log: Callable[[str], None]) -> DailyFitResult:
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    restore = _latest(run_dir) if cfg.run.checkpoint else None

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        if ck_dir is None:
            return
        if cfg.run.checkpoint:
            dest = run_dir / f"checkpoint_{int(metrics['epoch']):06d}"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(ck_dir, dest)
            keep = cfg.run.keep_checkpoints
            if keep is not None:
                for old in sorted(run_dir.glob("checkpoint_*"))[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(ck_dir, ignore_errors=True)

    if cfg.scaling.engine == "deepspeed":
        raise ValueError("scaling.engine=deepspeed needs scaling.num_workers >= 1")
    metrics = train_loop(cfg, 0, 1, report, data, restore, log)
    history = metrics.pop("history", [])
    return DailyFitResult(metrics, _latest(run_dir) if cfg.run.checkpoint else None, str(run_dir), history)


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg = DailyTrainJobConfig.model_validate(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    restore = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None and cfg.run.checkpoint:
        restore = tempfile.mkdtemp(prefix="rayrec-daily-restore-")
        ckpt.to_directory(restore)

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        from ray.train import Checkpoint

        m = {k: v for k, v in _jsonable(metrics).items()}
        ray.train.report(m, checkpoint=Checkpoint.from_directory(ck_dir) if ck_dir else None)

    train_loop(cfg, rank, world, report, None, restore, print if rank == 0 else (lambda _m: None))


def _fit_ray(cfg: DailyTrainJobConfig, data: DailyData, log: Callable[[str], None]) -> DailyFitResult:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrec.platform.runtime import init_ray

    sc = cfg.scaling
    if data.catalog.size < sc.num_workers:
        raise ValueError(f"catalog of {data.catalog.size} products is smaller than scaling.num_workers")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    trainer = TorchTrainer(
        train_loop_per_worker=_ray_worker,
        train_loop_config={"job": cfg.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, resources_per_worker={"CPU": sc.cpus_per_worker}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=str(Path(cfg.run.storage_path).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ck = result.checkpoint.path if result.checkpoint is not None else None
    metrics = dict(result.metrics or {})
    if ck is not None and not cfg.run.checkpoint:
        mp = Path(ck, "metrics.json")
        if mp.is_file():
            metrics = json.loads(mp.read_text())
        ck = None
    return DailyFitResult(metrics, ck, str(_run_dir(cfg)))
