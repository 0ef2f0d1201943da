"""Driver side of training: checks inputs, then runs the loop in-process or on Ray Train.

``scaling.num_workers = 0``: the loop runs in this process (no Ray at all); checkpoints go
to ``<storage_path>/<name>/checkpoint_<epoch>`` and a re-run resumes from the latest.

``scaling.num_workers >= 1``: a ``TorchTrainer`` whose workers each take a Ray Data shard
of whole sessions (``datasets={"train": ...}``), gloo on CPU / NCCL on GPU, DDP or
DeepSpeed.  ``RunConfig(name, storage_path)`` makes a re-run of the same name continue
from its latest checkpoint, and ``FailureConfig(max_failures)`` restarts the worker group
from the latest checkpoint after a worker dies.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.platform import data
from rayrec.platform.checkpoint import CheckpointError, check_item_index
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.loop import (
    TrainingInputError,
    WorkerContext,
    rows_to_sessions,
    sessions_to_rows,
    train_worker,
)
from rayrec.platform.training.session_parallel import SessionArrays, n_training_pairs
from rayrec.platform.training.steps import item_counts


@dataclass
class FitResult:
    metrics: dict[str, Any]
    checkpoint_dir: str | None
    run_dir: str


def _storage(cfg: TrainJobConfig) -> str:
    s = cfg.run.storage_path
    return s if "://" in s else str(Path(s).resolve())


def _run_dir(cfg: TrainJobConfig) -> str:
    return f"{_storage(cfg).rstrip('/')}/{cfg.run.name}"


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint directory of a run (local storage)."""
    cands = [p for p in glob.glob(os.path.join(run_dir, "checkpoint_*")) if os.path.isfile(os.path.join(p, "model.pt"))]
    if not cands:
        return None

    def epoch(p: str) -> tuple[int, float]:
        try:
            meta = json.loads(Path(p, "meta.json").read_text())
            return int(meta.get("epoch", 0)), os.path.getmtime(p)
        except (OSError, ValueError):
            return 0, os.path.getmtime(p)

    return max(cands, key=epoch)


def check_inputs(cfg: TrainJobConfig) -> tuple[SessionArrays, SessionArrays | None, list[str]]:
    """Everything that can be wrong before any training starts, with clear errors."""
    if cfg.scaling.use_gpu:
        import torch

        gpus = 0
        try:
            import ray

            if ray.is_initialized():
                gpus = int(ray.cluster_resources().get("GPU", 0))
        except Exception:  # noqa: BLE001
            gpus = 0
        if not torch.cuda.is_available() and gpus == 0:
            raise TrainingInputError(
                "scaling.use_gpu=true but this machine has no CUDA device and the Ray cluster "
                "reports no GPU; set scaling.use_gpu=false"
            )
    items = data.load_items(cfg.data.path)
    item_ids = items["item_id"].astype(str).tolist()
    train = data.session_arrays(cfg.data.path, cfg.data.train_split)
    if n_training_pairs(train) == 0:
        raise TrainingInputError(
            f"data.train_split {cfg.data.train_split!r} has {train.n_events} event(s) in "
            f"{train.n_sessions} session(s) and no session with 2 or more events: nothing to train on"
        )
    if train.items.max() >= len(item_ids):
        raise TrainingInputError(
            f"data.train_split uses item_idx {int(train.items.max())} but items.parquet has {len(item_ids)} items"
        )
    valid = None
    if cfg.data.valid_split:
        valid = data.session_arrays(cfg.data.path, cfg.data.valid_split)
    run_dir = _run_dir(cfg)
    if "://" not in run_dir:
        last = latest_checkpoint(run_dir)
        if last is not None:
            ck_items = json.loads(Path(last, "items.json").read_text())
            try:
                check_item_index(ck_items, item_ids, where=f"between the run's checkpoint {last} and data.path")
            except CheckpointError as exc:
                raise TrainingInputError(
                    f"{exc}; use another run.name or delete {run_dir} to start fresh"
                ) from None
    return train, valid, item_ids


def resolve_paths(cfg: TrainJobConfig) -> TrainJobConfig:
    """Make local relative paths absolute: Ray workers run in other directories."""
    p = cfg.data.path
    if "://" not in p and not os.path.isabs(p):
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": os.path.abspath(p)})})
    return cfg


def fit(cfg: TrainJobConfig, log=print) -> FitResult:
    cfg = resolve_paths(cfg)
    train, valid, item_ids = check_inputs(cfg)
    counts = item_counts(train, len(item_ids))
    if cfg.scaling.num_workers == 0:
        return _fit_in_process(cfg, train, valid, item_ids, counts, log)
    return _fit_ray(cfg, train, item_ids, counts, log)


def _fit_in_process(cfg, train, valid, item_ids, counts, log) -> FitResult:  # noqa: ANN001
    run_dir = Path(_run_dir(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    restore = latest_checkpoint(str(run_dir))
    if restore:
        log(f"resuming from {restore}")
    saved: list[str] = []

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        if ck_dir is None:
            return
        dest = run_dir / f"checkpoint_{int(metrics['epoch']):06d}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ck_dir, dest)
        saved.append(str(dest))
        keep = cfg.run.keep_checkpoints
        all_ck = sorted(run_dir.glob("checkpoint_*"))
        if keep is not None:
            for old in all_ck[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    ctx = WorkerContext(0, 1, report, restore, train, valid, item_ids, counts, log)
    metrics = train_worker(cfg, ctx)
    return FitResult(metrics, latest_checkpoint(str(run_dir)), str(run_dir))


def _ray_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train

    cfg = TrainJobConfig.model_validate(config["job"])
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    shard = ray.train.get_dataset_shard("train")
    frames = list(shard.iter_batches(batch_format="pandas", batch_size=4096))
    sessions = rows_to_sessions(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    item_ids = ray.get(config["item_ids"])
    counts = np.asarray(ray.get(config["counts"]), dtype=np.int64)
    valid = None
    if rank == 0 and cfg.data.valid_split:
        valid = data.session_arrays(cfg.data.path, cfg.data.valid_split)
    restore_dir = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        restore_dir = tempfile.mkdtemp(prefix="rayrec-restore-")
        ckpt.to_directory(restore_dir)

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        from ray.train import Checkpoint

        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ck_dir) if ck_dir else None)

    log = print if rank == 0 else (lambda _m: None)
    if rank == 0 and restore_dir:
        log(f"resuming from the run's latest checkpoint ({ckpt.path})")
    train_worker(cfg, WorkerContext(rank, world, report, restore_dir, sessions, valid, item_ids, counts, log))


def _fit_ray(cfg: TrainJobConfig, train: SessionArrays, item_ids, counts, log) -> FitResult:  # noqa: ANN001
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrec.platform.runtime import init_ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    sc = cfg.scaling
    ds = ray.data.from_items(sessions_to_rows(train))
    if not sc.use_gpu:  # DeepSpeed on CPU; workers inherit the driver's environment
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    trainer = TorchTrainer(
        train_loop_per_worker=_ray_worker,
        train_loop_config={
            "job": cfg.model_dump(mode="json"),
            "item_ids": ray.put(item_ids),
            "counts": ray.put(counts.tolist()),
        },
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {}),
                                  **sc.resources_per_worker},
            placement_strategy=sc.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=_storage(cfg),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
        datasets={"train": ds},
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ck = result.checkpoint.path if result.checkpoint is not None else None
    return FitResult(dict(result.metrics or {}), ck, _run_dir(cfg))
