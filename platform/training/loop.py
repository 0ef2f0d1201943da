"""The one per-worker training loop of every registered model, for every engine.

:func:`train_worker` runs

- in this process (``ray.use_ray: false``: tests, benchmarks' plain-loop rows, Tune trials),
- as a Ray Train ``TorchTrainer`` worker, the model wrapped by the engine of
  ``scaling.engine``: ``ddp`` (DistributedDataParallel when world > 1), ``deepspeed``
  (ZeRO stage 0-3; a model-parallel group over all workers for tensor-parallel models) or
  ``tensor_parallel`` (the task builds this rank's slice; no wrapper).

What differs per model sits behind the task of its spec (``rayrec.models.contract.TrainTask``:
build, parameter groups, batches, step loss, evaluate, full state); the loop owns the rest:
seeding, the optimiser, the engine, padding of uneven data shards with zero-weighted steps
(so every collective is matched and each real example is used exactly once per epoch),
the evaluation cadence, one metric vocabulary (``loss``, ``examples``, ``examples_per_s``,
``epoch_s`` and the protocol's ``recall@K`` / ``mrr@K`` / ``precision@K`` / ``pcc@K``),
checkpoints (always the unsharded layout), reports, resume (weights, optimiser state, epoch)
with the config's hyper-parameters re-applied (PBT), and failure injection.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from rayrec.models import registry
from rayrec.models.contract import TaskEnv
from rayrec.platform.checkpoint import load_checkpoint, save_checkpoint
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainData, TrainingInputError, family_of
from rayrec.platform.training.optim import (
    apply_hyperparameters,
    apply_lr_schedule,
    build_optimizer,
    clip_grad_norm,
)
from rayrec.platform.training.sparse_rows import ddp_ignore, sync_item_grads
from rayrec.platform.training.tensor_parallel import shard_parameter_bytes

__all__ = ["TrainingInputError", "WorkerContext", "run_local", "train_worker"]

DS_SUBDIR = "deepspeed"
DS_TAG = "engine"
METRICS_FILE = "metrics.json"


@dataclass
class WorkerContext:
    rank: int
    world: int
    report: Callable[[dict[str, Any], str | None], None]
    """report(metrics, checkpoint_dir or None)"""
    restore_dir: str | None
    """A checkpoint directory to resume from (None: fresh start)."""
    data: TrainData
    """This rank's training data (its shard under data parallelism), the validation data
    (where this rank evaluates), the item index and the global counts."""
    log: Callable[[str], None] = print
    restore_label: str | None = None
    """How the log names the restored checkpoint (its storage path; default ``restore_dir``)."""


def _all_max(value: int, world: int) -> int:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _all_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _gather_objects(value: Any, world: int) -> list[Any]:
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


@torch.no_grad()
def _replica_spread(module: nn.Module, world: int) -> float:
    """Data parallel: the largest difference between ranks of any parameter's float64 sum and
    sum of squares (0.0 when the replicas are identical, as DDP and the row-sparse exchange
    of ``sync_item_grads`` must keep them).  A diverged replica is an error."""
    stats = torch.stack([torch.stack([p.double().sum(), p.double().pow(2).sum()])
                         for p in module.parameters()]).flatten().cpu()  # (2 P,)
    all_stats = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(all_stats, stats)
    st = torch.stack(all_stats)  # (world, 2 P)
    spread = float((st.max(0).values - st.min(0).values).abs().max())
    scale = float(st.abs().max()) or 1.0
    if spread > 1e-6 * scale:
        raise RuntimeError(f"data-parallel replicas diverged: parameter sums differ by {spread:.3g} between ranks")
    return spread


def _jsonable(m: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(m, default=float))


def _zero3_state(module: nn.Module, state_fn: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {k: v.detach().clone().cpu() for k, v in state_fn().items()}


def _collectives(rank: int, world: int, n_items: int, tensor: bool) -> dict[str, Any]:
    if not tensor:
        return {}
    from rayrec.platform.training import tensor_parallel as tp

    out: dict[str, Any] = {"item_range": tp.shard_range(n_items, rank, world),
                           "gather_state": tp.full_state, "load_state": tp.load_full_state}
    if world > 1:
        out.update(reduce_sum=tp.all_reduce_sum, copy_to_parallel=tp.copy_to_parallel, gather=tp.gather_cat)
    return out


class _MPU:
    """DeepSpeed ``mpu`` for tensor-parallel models: model parallel over all ranks, data-parallel
    groups of one (DeepSpeed never averages different shards' gradients)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.mp_group = dist.new_group(list(range(world)))
        groups = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
        self.dp_group = groups[rank]

    def get_model_parallel_rank(self) -> int:
        return self.rank

    def get_model_parallel_world_size(self) -> int:
        return self.world

    def get_model_parallel_group(self):
        return self.mp_group

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_data_parallel_world_size(self) -> int:
        return 1

    def get_data_parallel_group(self):
        return self.dp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group


def _warm_start(job: TrainJobConfig, task: Any, env: TaskEnv, module: nn.Module, ctx: WorkerContext):
    """``train.init_from``: the checkpoint's weights into the freshly built module, item rows by
    item id (:mod:`rayrec.platform.training.warm_start`); collective under tensor parallelism.
    Returns ``(checkpoint, item params -> (item dim, new rows, old rows))`` for the optimiser."""
    from rayrec.platform.training import warm_start as ws

    ck = ws.load_init_checkpoint(job.train.init_from, job.model.name)  # absolute: trainer.resolve_paths
    live = task.full_state(env, module)
    fresh = {k: v.detach().clone().cpu() for k, v in live.items()}
    dims = ws.item_state_dims(task, module)
    state, rep = ws.warm_start_state(fresh, ck.model_state, ck.item_ids, env.item_ids, dims)
    task.load_full_state(env, module, state)
    ctx.log(f"warm start from {job.train.init_from}: {rep.summary()}")
    by_ptr = {p.data_ptr(): p for p in module.parameters()}
    item_rows = {id(by_ptr[live[k].data_ptr()]): (d, *rep.rows) for k, d in dims.items()
                 if k in live and live[k].data_ptr() in by_ptr}
    return ck, item_rows


def _warm_start_optimizer(warm, optimizer, keep_optim: bool, ctx: WorkerContext) -> None:
    """The init_from checkpoint's optimiser state into this run's optimiser (item rows by id)."""
    from rayrec.platform.training import warm_start as ws

    ck, item_rows = warm
    if not keep_optim or ck.optim_state is None:
        ctx.log("warm start: fresh optimiser state (the checkpoint has none for this engine)")
        return
    n = ws.warm_start_optimizer(optimizer, ck.optim_state, item_rows)
    ctx.log(f"warm start: optimiser state of {n} parameters carried over ({len(item_rows)} item tables by item id)")


def _progress_line(epoch: int, epochs: int, step: int, n_steps: int, examples: int, secs: float,
                   world: int) -> str:
    """``epoch 2/10: step 1,200/3,400, 38,400 examples, 9,100 examples/s, ETA 8s`` (rank 0's
    examples times the data-parallel world: every rank takes as many steps)."""
    rate = examples * world / secs if secs > 0 else 0.0
    eta = secs / step * (n_steps - step) if step else float("nan")
    return (f"epoch {epoch}/{epochs}: step {step:,}/{n_steps:,}, {examples * world:,} examples, "
            f"{rate:,.0f} examples/s, ETA {eta:.0f}s")


def train_worker(job: TrainJobConfig, ctx: WorkerContext) -> dict[str, Any]:
    """Train ``job`` on this worker; returns the last reported metrics with ``history``: every
    epoch's metrics of the run so far (a resumed run's earlier epochs come from its checkpoint,
    which carries them in ``meta.json``)."""
    spec = registry.get(job.model.name)
    family = family_of(spec)
    sc, tr, ev = job.scaling, job.train, job.eval
    tensor = spec.parallelism == "tensor"
    torch.set_num_threads(sc.torch_threads or max(1, int(sc.cpus_per_worker)))
    # data parallel: ranks differ in dropout and sampling; tensor parallel: ranks must draw
    # the same dropout masks (the replicated layers see the same batch), re-seeded per epoch
    seed = tr.seed if tensor else tr.seed + 1000 * ctx.rank
    torch.manual_seed(seed)
    device = torch.device("cuda", torch.cuda.current_device()) if sc.use_gpu else torch.device("cpu")
    d = ctx.data
    # row-sparse item tables (optim.sparse_item_rows): DeepSpeed's ZeRO takes dense gradients
    sparse_rows = job.optim.sparse_item_rows and sc.engine != "deepspeed"
    env = TaskEnv(rank=ctx.rank, world=ctx.world, device=device, item_ids=d.item_ids, train=d.train,
                  valid=d.valid, train_counts=d.counts, evaluate=family.evaluate, seed=seed, log=ctx.log,
                  sparse_rows=sparse_rows, **_collectives(ctx.rank, ctx.world, len(d.item_ids), tensor),
                  inputs=family.task_inputs(job) if hasattr(family, "task_inputs") else {})
    task = spec.task(job)
    module = task.build(env, torch.Generator().manual_seed(tr.seed)).to(device)
    warm = None
    if ctx.restore_dir is None and tr.init_from:  # a resumed run has its own weights
        warm = _warm_start(job, task, env, module, ctx)
    item_tables = list(task.item_tables(module)) if sparse_rows and hasattr(task, "item_tables") else []
    optimizer = build_optimizer(task.param_groups(module, job.optim.lr), job.optim,
                                known=getattr(task, "param_group_names", ()))
    # optimiser state is checkpointed whole from rank 0: exact when every rank holds the same
    # optimiser (one rank, or data-parallel replicas); sharded optimisers (tensor parallel over
    # several ranks, DeepSpeed) keep theirs in the engine's files or resume with fresh moments
    keep_optim = sc.engine != "deepspeed" and (ctx.world == 1 or not tensor)
    if warm is not None:
        _warm_start_optimizer(warm, optimizer, keep_optim, ctx)

    start_epoch = 0
    last_metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    ds_restore = None
    if ctx.restore_dir is not None:
        ck = load_checkpoint(ctx.restore_dir)
        if list(ck.item_ids) != list(d.item_ids):
            raise TrainingInputError(
                f"checkpoint {ctx.restore_dir} was trained on a different item index "
                f"({len(ck.item_ids)} items) than the data ({len(d.item_ids)} items)"
            )
        try:
            task.load_full_state(env, module, ck.model_state)
        except RuntimeError as exc:
            raise TrainingInputError(
                f"the run's latest checkpoint {ctx.restore_dir} holds another model ({exc}); use "
                "another run.name or delete the run directory to start fresh") from None
        last_metrics = dict(ck.meta.get("metrics", {}))
        history = [h for h in ck.meta.get("history", []) if isinstance(h, dict)]
        start_epoch = int(ck.meta.get("epoch", 0))
        if sc.engine == "deepspeed":
            ds_restore = str(Path(ctx.restore_dir) / DS_SUBDIR)
        elif keep_optim and ck.optim_state is not None:
            try:
                optimizer.load_state_dict(ck.optim_state)
            except ValueError:
                ctx.log("checkpoint optimiser state does not fit the parameter groups: fresh optimiser")
            apply_hyperparameters(optimizer, job.optim)
        ctx.log(f"resuming from {ctx.restore_label or ctx.restore_dir} at epoch {start_epoch}")

    engine = None
    zero3 = sc.engine == "deepspeed" and sc.zero_stage == 3
    if sc.engine == "deepspeed":
        import deepspeed

        from rayrec.platform.training.ds_config import make_ds_config

        if zero3 and hasattr(task, "external_params"):
            for p in task.external_params(module):
                deepspeed.zero.register_external_parameter(module, p)
        mpu = _MPU(ctx.rank, ctx.world) if (tensor and ctx.world > 1) else None
        engine, optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                       config=make_ds_config(job), mpu=mpu)
        if ds_restore is not None:
            engine.load_checkpoint(ds_restore, tag=DS_TAG, load_optimizer_states=True)
        forward = engine
    elif ctx.world > 1 and not tensor:
        if item_tables:  # exchanged row-sparse by sync_item_grads, never densely by DDP
            ddp_ignore(module, item_tables)
        forward = nn.parallel.DistributedDataParallel(module)
    else:
        forward = module
    sync_rows = item_tables if (ctx.world > 1 and not tensor) else []  # none under DeepSpeed

    def full_state() -> dict[str, torch.Tensor]:  # collective under ZeRO-3 / tensor parallel
        if zero3:
            return _zero3_state(module, lambda: task.full_state(env, module))
        return {k: v.detach().clone().cpu() for k, v in task.full_state(env, module).items()}

    param_bytes = _gather_objects(shard_parameter_bytes(module), ctx.world)  # fixed for the run
    n_local = task.num_batches(env, tr.batch_size)
    if tr.max_steps_per_epoch:
        n_local = min(n_local, tr.max_steps_per_epoch)
    n_steps = _all_max(n_local, ctx.world) if not tensor else n_local

    for epoch in range(start_epoch, tr.epochs):
        # dropout / input noise drawn per (seed, epoch): a resumed epoch draws what the
        # uninterrupted run drew; tensor parallel: the same on every rank
        torch.manual_seed(seed * 7919 + epoch)
        apply_lr_schedule(optimizer, job.optim, epoch)  # optim.lr_step_epochs (no-op when unset)
        t0 = time.perf_counter()
        module.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        examples, steps, last = 0, 0, None
        rng = np.random.default_rng([seed, epoch])  # a resumed epoch draws what it drew before
        batches = iter(task.batches(env, module, epoch, tr.batch_size, rng))
        shown = t0
        while steps < n_steps:
            batch = next(batches, None) if steps < n_local else None
            real = batch is not None
            if real:
                last = batch
            elif last is None:
                raise TrainingInputError(
                    f"rank {ctx.rank} has no training data: fewer examples than workers "
                    f"(scaling.num_workers={ctx.world})")
            loss, n = task.loss(forward, batch if real else last, pad=not real)
            if not real:
                loss = loss * 0.0  # pad: repeat the last batch with zero weight
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                sync_item_grads(sync_rows, ctx.world)
                if job.optim.clip_norm:  # after the exchange: every rank clips the same gradient
                    clip_grad_norm(module.parameters(), job.optim.clip_norm)
                optimizer.step()
            if real:
                loss_sum += loss.detach().double() * n
                examples += n
            steps += 1
            if ctx.rank == 0 and tr.progress_every_s and steps < n_steps:
                now = time.perf_counter()
                if now - shown >= tr.progress_every_s:
                    shown = now
                    ctx.log(_progress_line(epoch + 1, tr.epochs, steps, n_steps, examples, now - t0,
                                           1 if tensor else ctx.world))
        secs = time.perf_counter() - t0
        if tensor:  # every rank saw the same examples
            g_loss, g_examples, g_secs = float(loss_sum), float(examples), secs
        else:
            g_loss, g_examples, g_secs = _all_sum([float(loss_sum), float(examples), secs], ctx.world)
            g_secs /= ctx.world
        mean_loss = g_loss / max(g_examples, 1.0)
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"epoch {epoch + 1}: training loss is not finite ({mean_loss})")
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "examples": int(g_examples),
            "examples_per_s": g_examples / g_secs if g_secs > 0 else 0.0,
            "epoch_s": g_secs,
            "world_size": ctx.world,
        }
        do_eval = d.valid is not None and ((epoch + 1) % ev.every == 0 or epoch + 1 == tr.epochs)
        state = full_state() if (job.run.checkpoint or (do_eval and not tensor)) else None
        if do_eval:
            res: dict[str, Any] | None = None
            if tensor:  # every rank holds a slice: evaluate together
                res = task.evaluate(env, module, ev.ks, ev.batch_size)
            elif ctx.rank == 0:
                model = spec.build(job.model, len(d.item_ids))
                model.load_state_dict(state)
                res = task.evaluate(env, model.to(device), ev.ks, ev.batch_size)
            if res is not None:
                metrics.update({k: v for k, v in res.items() if isinstance(v, (int, float))})
                metrics["protocol"] = res.get("protocol", spec.metrics)
                metrics["valid_split"] = job.data.valid_split
        if hasattr(task, "epoch_metrics"):
            metrics.update(task.epoch_metrics(env, module))
        if ctx.world > 1 and not tensor and engine is None:
            metrics["replica_max_diff"] = _replica_spread(module, ctx.world)
        metrics["param_bytes_per_rank"] = param_bytes
        metrics["peak_rss_mb_per_rank"] = _gather_objects(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, ctx.world)
        if ctx.rank == 0:
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                             if "@" in k and isinstance(v, float) and k.endswith(f"@{max(ev.ks)}"))
            ctx.log(f"epoch {epoch + 1}/{tr.epochs} loss {mean_loss:.4f} "
                    f"{metrics['examples_per_s']:,.0f} examples/s ({g_secs:.1f}s)"
                    + (f"  valid {shown}" if shown else ""))
        history.append(_jsonable(metrics))
        ck_dir = tempfile.mkdtemp(prefix=f"rayrec-ckpt-r{ctx.rank}-")
        if job.run.checkpoint:
            if engine is not None:
                engine.save_checkpoint(str(Path(ck_dir) / DS_SUBDIR), tag=DS_TAG)
            if ctx.rank == 0:
                save_checkpoint(
                    ck_dir, state, job.model_dump(mode="json"), d.item_ids,
                    optim_state=optimizer.state_dict() if keep_optim else None,
                    meta={"epoch": epoch + 1, "metrics": _jsonable(metrics), "model": spec.name,
                          "engine": sc.engine, "zero_stage": sc.zero_stage, "world_size": ctx.world,
                          "history": history, **({"init_from": tr.init_from} if tr.init_from else {})},
                )
            has_ckpt = ctx.rank == 0 or engine is not None
        else:  # metrics only: Ray Train keeps reports that carry a checkpoint
            if ctx.rank == 0:
                Path(ck_dir, METRICS_FILE).write_text(json.dumps({**_jsonable(metrics), "history": history}))
            has_ckpt = ctx.rank == 0
        ctx.report(metrics, ck_dir if has_ckpt else None)
        shutil.rmtree(ck_dir, ignore_errors=True)
        last_metrics = metrics
        if tr.fail_at_epoch == epoch + 1 and ctx.restore_dir is None and ctx.rank == ctx.world - 1:
            raise RuntimeError(f"injected failure after epoch {epoch + 1} (train.fail_at_epoch)")
    out = dict(last_metrics)
    out["history"] = history
    return out


def run_local(
    job: TrainJobConfig,
    data: TrainData,
    restore_dir: str | None = None,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The production loop in this process on in-memory data, one rank (tests, benchmarks'
    plain-loop rows): ``report(metrics, checkpoint_dir)`` sees every epoch (the directory is
    removed after the call returns); returns the last metrics with ``history``."""
    return train_worker(job, WorkerContext(0, 1, report or (lambda _m, _c: None), restore_dir, data, log))
