"""The per-worker training function of session models (GRU4Rec), for every engine.

One function, :func:`train_worker`, runs

- in-process (``scaling.num_workers=0``, the plain loop and the benchmark's comparison row),
- as a Ray Train ``TorchTrainer`` worker with plain DDP (``engine: ddp``),
- as a Ray Train worker under DeepSpeed with ZeRO stage 0-3 (``engine: deepspeed``).

Each worker holds disjoint whole sessions (its Ray Data shard, or all sessions when
alone) and runs the session-parallel loop of seed 003 section 3.1.1 over them.  Ranks
can need different numbers of session-parallel steps; the shorter ones pad with
zero-weighted steps so every collective (DDP all-reduce, DeepSpeed partition syncs) is
matched, and every real training pair is still used exactly once per epoch.

After every ``train.eval_every`` epochs rank 0 evaluates the ``next_item`` protocol on
the validation split and all ranks report the metrics together with a checkpoint (Ray
Train v2 keeps only reports that carry one).  Resume: a checkpoint found at start (the
same run name, or the one Ray restores after a worker failure) continues from its epoch
with its weights and optimiser state.
"""

from __future__ import annotations

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
from rayrec.models.gru4rec import GRU4Rec, GRU4RecScorer
from rayrec.models.losses import sampled_loss
from rayrec.models.samplers import PopularitySampler
from torch import nn

from rayrec.platform.checkpoint import load_checkpoint, save_checkpoint
from rayrec.platform.evaluation.protocols import evaluate_next_item
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.optim import build_optimizer
from rayrec.platform.training.session_parallel import SessionArrays, session_parallel_batches
from rayrec.platform.training.steps import item_counts, logq_tables

DS_SUBDIR = "deepspeed"
DS_TAG = "engine"


class TrainingInputError(ValueError):
    """The data cannot be trained on (empty split, no pair, item index mismatch)."""


class SampledStep(nn.Module):
    """One session-parallel step as a single module call, so DDP and DeepSpeed see the whole
    computation (GRU step + sampled output scores) inside ``forward``."""

    def __init__(self, model: GRU4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, hidden: list[torch.Tensor], cols: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, hidden = self.model(x, hidden)  # (B, H)
        return self.model.score(out, cols), hidden  # (B, C)


@dataclass
class WorkerContext:
    rank: int
    world: int
    report: Callable[[dict[str, Any], str | None], None]
    """report(metrics, checkpoint_dir or None)"""
    restore_dir: str | None
    """A checkpoint directory to resume from (None: fresh start)."""
    train_sessions: SessionArrays
    valid_sessions: SessionArrays | None
    item_ids: list[str]
    train_counts: np.ndarray
    """Global training item counts (N,), identical on every rank (popularity, logQ)."""
    log: Callable[[str], None] = print


def _barrier_max(value: int, world: int) -> int:
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


def _count_steps(arrays: SessionArrays, batch_size: int, cap: int | None) -> int:
    n = sum(1 for _ in session_parallel_batches(arrays, batch_size))
    return min(n, cap) if cap else n


def _full_state(module: nn.Module, zero3: bool) -> dict[str, torch.Tensor]:
    """The full (unpartitioned) state dict; collective under ZeRO-3."""
    if zero3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
    return {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}


def train_worker(cfg: TrainJobConfig, ctx: WorkerContext) -> dict[str, Any]:
    """Train ``cfg`` on this worker's sessions; returns the last reported metrics."""
    sc, tr = cfg.scaling, cfg.train
    threads = sc.torch_threads or max(1, int(sc.cpus_per_worker))
    torch.set_num_threads(threads)
    seed = tr.seed + 1000 * ctx.rank
    torch.manual_seed(seed)
    n_items = len(ctx.item_ids)
    device = torch.device("cuda", torch.cuda.current_device()) if sc.use_gpu else torch.device("cpu")

    model = GRU4Rec(cfg.model, n_items)
    gen = torch.Generator().manual_seed(tr.seed)  # identical init on every rank
    model.reset_parameters(gen)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optim)

    start_epoch = 0
    restored_meta: dict[str, Any] = {}
    ds_restore = None
    if ctx.restore_dir is not None:
        ck = load_checkpoint(ctx.restore_dir)
        if list(ck.item_ids) != list(ctx.item_ids):
            raise TrainingInputError(
                f"checkpoint {ctx.restore_dir} was trained on a different item index "
                f"({len(ck.item_ids)} items) than the data ({n_items} items)"
            )
        model.load_state_dict(ck.model_state)
        restored_meta = ck.meta
        start_epoch = int(ck.meta.get("epoch", 0))
        if sc.engine == "deepspeed":
            ds_restore = str(Path(ctx.restore_dir) / DS_SUBDIR)
        elif ck.optim_state is not None:
            optimizer.load_state_dict(ck.optim_state)
            # the config's hyper-parameters win over the saved ones: PBT's explore step
            # restores an exploited trial's state under a mutated learning rate
            for group in optimizer.param_groups:
                group["lr"] = cfg.optim.lr
                if cfg.optim.name == "adagrad_momentum" and "momentum" in group:
                    group["momentum"] = cfg.optim.momentum

    step_mod = SampledStep(model)
    zero3 = sc.engine == "deepspeed" and sc.zero_stage == 3
    engine = None
    if sc.engine == "deepspeed":
        import deepspeed

        from rayrec.platform.training.ds_config import make_ds_config

        if zero3:
            # the output item table is used by score(), outside GRU4Rec.forward
            deepspeed.zero.register_external_parameter(step_mod, model.Wy)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=step_mod, optimizer=optimizer, config=make_ds_config(cfg)
        )
        if ds_restore is not None:
            engine.load_checkpoint(ds_restore, tag=DS_TAG, load_optimizer_states=True)
        forward = engine
    elif ctx.world > 1:
        forward = nn.parallel.DistributedDataParallel(step_mod)
    else:
        forward = step_mod

    # sampling tables from GLOBAL counts so every rank draws from the same distribution
    counts = ctx.train_counts
    lc = cfg.loss
    sampler = None
    if lc.n_sample > 0:
        sgen = torch.Generator().manual_seed(seed + 17)
        sampler = PopularitySampler(counts, lc.sample_alpha, lc.sample_store_size, sgen)
    n_sample = lc.n_sample if sampler is not None else 0
    use_logq = lc.name == "cross-entropy" and lc.logq > 0
    if use_logq:
        lq_t, lq_s = logq_tables(counts, tr.batch_size, sampler, n_sample, lc.logq_mode)
        lq_t, lq_s = lq_t.to(device), lq_s.to(device)

    arrays = ctx.train_sessions
    n_steps_local = _count_steps(arrays, tr.batch_size, tr.max_steps_per_epoch)
    n_steps = _barrier_max(n_steps_local, ctx.world)
    last_metrics: dict[str, Any] = dict(restored_meta.get("metrics", {}))
    rng = np.random.default_rng(seed)

    for epoch in range(start_epoch, tr.epochs):
        t0 = time.perf_counter()
        step_mod.train()
        hidden = model.init_hidden(tr.batch_size)
        hidden = [h.to(device) for h in hidden]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        events = 0
        steps = 0
        batches = session_parallel_batches(arrays, tr.batch_size, tr.shuffle_sessions, rng)
        last = None
        while steps < n_steps:
            real = steps < n_steps_local
            if real:
                try:
                    inputs, targets, reset, keep = next(batches)
                except StopIteration:  # pragma: no cover - n_steps_local counted exactly
                    real = False
            if real:
                if keep.shape[0] != hidden[0].shape[0]:
                    keep_t = torch.from_numpy(keep).to(device)
                    hidden = [h.index_select(0, keep_t) for h in hidden]  # (B_new, H)
                if reset.any():
                    mask = torch.from_numpy(~reset).to(device=device, dtype=hidden[0].dtype)
                    hidden = [h * mask.unsqueeze(1) for h in hidden]  # (B, H)
                x = torch.from_numpy(inputs).to(device)
                y = torch.from_numpy(targets).to(device)
                last = (x, y, [h.clone() for h in hidden])
            else:  # pad: repeat the last batch with zero weight to match collectives
                if last is None:
                    x = torch.zeros(1, dtype=torch.long, device=device)
                    y = torch.zeros(1, dtype=torch.long, device=device)
                    hidden = [torch.zeros(1, h.shape[1], device=device) for h in hidden]
                else:
                    x, y, hidden = last[0], last[1], [h.clone() for h in last[2]]
            b = x.shape[0]
            if n_sample:
                smp = sampler.sample(n_sample).to(device)  # (S,)
                cols = torch.cat([y, smp])  # (B + S,)
            else:
                smp, cols = None, y
            scores, new_hidden = forward(x, hidden, cols)  # (B, B + S)
            log_q = None
            if use_logq:
                log_q = lq_t[y] if smp is None else torch.cat([lq_t[y], lq_s[smp]])
            loss = sampled_loss(lc, scores.float(), cols, log_q)  # hits masked from cols
            if not real:
                loss = loss * 0.0
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if real:
                hidden = [h.detach() for h in new_hidden]
                loss_sum += loss.detach().double() * b
                events += b
            steps += 1
        secs = time.perf_counter() - t0
        g_loss, g_events, g_secs = _all_sum([float(loss_sum), float(events), secs], ctx.world)
        mean_loss = g_loss / max(g_events, 1.0)
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"epoch {epoch + 1}: training loss is not finite ({mean_loss})")
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "train_events": int(g_events),
            "events_per_s": g_events / (g_secs / ctx.world),
            "epoch_seconds": g_secs / ctx.world,
        }
        do_eval = ctx.valid_sessions is not None and (
            (epoch + 1) % tr.eval_every == 0 or epoch + 1 == tr.epochs
        )
        state = _full_state(model, zero3)  # collective under ZeRO-3
        if do_eval and ctx.rank == 0:
            ev = GRU4Rec(cfg.model, n_items)
            ev.load_state_dict(state)
            res = evaluate_next_item(
                GRU4RecScorer(ev.to(device)), ctx.valid_sessions.offsets, ctx.valid_sessions.items,
                tuple(tr.cutoffs), tr.eval_batch_size,
            )
            metrics.update({k: v for k, v in res.items() if isinstance(v, (int, float))})
            metrics["protocol"] = res.get("protocol", "next_item")
            metrics["valid_split"] = cfg.data.valid_split
        if ctx.rank == 0:
            msg = (f"epoch {epoch + 1}/{tr.epochs} loss {mean_loss:.4f} "
                   f"{metrics['events_per_s']:,.0f} events/s ({metrics['epoch_seconds']:.1f}s)")
            if "recall@20" in metrics:
                msg += f"  valid recall@20 {metrics['recall@20']:.4f} mrr@20 {metrics['mrr@20']:.4f}"
            ctx.log(msg)
        ck_dir = tempfile.mkdtemp(prefix=f"rayrec-ckpt-r{ctx.rank}-")
        if engine is not None:
            engine.save_checkpoint(str(Path(ck_dir) / DS_SUBDIR), tag=DS_TAG)
        if ctx.rank == 0:
            save_checkpoint(
                ck_dir, state, cfg.model_dump(mode="json"), ctx.item_ids,
                optim_state=None if engine is not None else optimizer.state_dict(),
                meta={"epoch": epoch + 1, "metrics": metrics, "model": cfg.model.name,
                      "engine": sc.engine, "zero_stage": sc.zero_stage, "world_size": ctx.world},
            )
        has_ckpt = ctx.rank == 0 or engine is not None
        ctx.report(metrics, ck_dir if has_ckpt else None)
        shutil.rmtree(ck_dir, ignore_errors=True)
        last_metrics = metrics
        if tr.fail_at_epoch == epoch + 1 and ctx.restore_dir is None and ctx.rank == ctx.world - 1:
            raise RuntimeError(f"injected failure after epoch {epoch + 1} (train.fail_at_epoch)")
    return last_metrics


def sessions_to_rows(arrays: SessionArrays) -> "list[dict[str, Any]]":
    """SessionArrays -> one row per session (for a Ray Data dataset of whole sessions)."""
    rows = []
    ts = arrays.ts
    for s in range(arrays.n_sessions):
        a, b = int(arrays.offsets[s]), int(arrays.offsets[s + 1])
        rows.append({
            "start": float(ts[a]) if ts is not None else float(s),
            "order": s,
            "items": arrays.items[a:b].tolist(),
            "ts": ts[a:b].tolist() if ts is not None else [0.0] * (b - a),
        })
    return rows


def rows_to_sessions(df) -> SessionArrays:  # noqa: ANN001
    """Inverse of :func:`sessions_to_rows` for a worker's shard (sorted by start, order)."""
    if len(df) == 0:
        return SessionArrays(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
    df = df.sort_values(["start", "order"], kind="stable")
    lens = np.array([len(x) for x in df["items"]], dtype=np.int64)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    items = np.concatenate([np.asarray(x, dtype=np.int64) for x in df["items"]])
    ts = np.concatenate([np.asarray(x, dtype=np.float64) for x in df["ts"]])
    return SessionArrays(offsets, items, ts)


__all__ = ["train_worker", "WorkerContext", "SampledStep", "TrainingInputError", "item_counts"]
