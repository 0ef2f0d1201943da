"""The one training driver, ``fit(job)``, for every registered model.

* Resolves paths (Ray workers run in other directories), loads and checks the data through the
  model kind's data family *before* any worker starts (clear errors naming the key), checks
  the run's latest checkpoint against the data's item index and ``scaling.use_gpu`` against the
  machine.
* ``ray.use_ray: false``: the loop runs in this process (no Ray at all); checkpoints go to
  ``<storage_path>/<run.name>/checkpoint_<epoch>`` and a re-run resumes from the latest.
* otherwise a Ray Train ``TorchTrainer`` (gloo on CPU, NCCL on GPU) with
  ``ScalingConfig(num_workers, use_gpu, resources_per_worker, placement_strategy)``,
  ``RunConfig(name, storage_path)`` (local path or URI; re-running a name continues from its
  latest checkpoint), ``FailureConfig(max_failures)`` (the worker group restarts from the
  latest checkpoint after a worker dies) and ``CheckpointConfig(num_to_keep)``.  Data-parallel
  models get a Ray Data dataset of the family's rows (``get_dataset_shard("train")``; session
  models: one row per sequence, so ``train.sequence_key: user`` shards whole users) plus what
  the family shares with every shard (``shard_context``: the event-type vocabulary and the item
  metadata the driver built from all training rows); tensor-parallel models load all the data
  on every worker.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.models import registry
from rayrec.platform.checkpoint import CheckpointError, check_item_index
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainData, TrainingInputError, family_of
from rayrec.platform.training.loop import METRICS_FILE, WorkerContext, train_worker

__all__ = ["FitResult", "check_inputs", "checkpoint_or_latest", "fit", "latest_checkpoint", "resolve_paths", "run_dir"]


@dataclass
class FitResult:
    metrics: dict[str, Any]
    checkpoint_dir: str | None
    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every epoch's metrics of the run (a resumed run includes the epochs before the resume)."""


def _storage(job: TrainJobConfig) -> str:
    s = job.run.storage_path
    return s if "://" in s else str(Path(s).resolve())


def run_dir(job: TrainJobConfig) -> str:
    return f"{_storage(job).rstrip('/')}/{job.run.name}"


def _local(path: str) -> str | None:
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def latest_checkpoint(run_directory: str) -> str | None:
    """The newest complete checkpoint directory of a run (by the epoch in its meta.json), or
    None; ``file://`` URIs are read as local paths, other URIs give None."""
    local = _local(run_directory)
    if local is None:
        return None
    cands = [p for p in glob.glob(os.path.join(local, "checkpoint_*"))
             if os.path.isfile(os.path.join(p, "model.pt"))]
    if not cands:
        return None

    def epoch(p: str) -> tuple[int, float]:
        try:
            meta = json.loads(Path(p, "meta.json").read_text())
            return int(meta.get("epoch", 0)), os.path.getmtime(p)
        except (OSError, ValueError):
            return 0, os.path.getmtime(p)

    return max(cands, key=epoch)


def checkpoint_or_latest(path: str) -> str | None:
    """``path`` itself when it is a checkpoint directory (holds ``model.pt``), the latest
    complete checkpoint when it is a run directory (``runs/<name>``), else None."""
    if os.path.isfile(os.path.join(path, "model.pt")):
        return path
    return latest_checkpoint(path) if os.path.isdir(path) else None


def _check_gpu(job: TrainJobConfig) -> None:
    if not job.scaling.use_gpu:
        return
    import torch

    gpus = 0
    try:
        import ray

        if ray.is_initialized():
            gpus = int(ray.cluster_resources().get("GPU", 0))
    except Exception:
        gpus = 0
    if not torch.cuda.is_available() and gpus == 0:
        raise TrainingInputError(
            "scaling.use_gpu=true but this machine has no CUDA device and the Ray cluster "
            "reports no GPU; set scaling.use_gpu=false"
        )


def check_inputs(job: TrainJobConfig) -> TrainData:
    """Everything that can be wrong before any training starts, with clear errors."""
    _check_gpu(job)
    spec = registry.get(job.model.name)
    data = family_of(spec).load(job, with_valid=True)
    last = latest_checkpoint(run_dir(job))
    if last is not None:
        ck_items = json.loads(Path(last, "items.json").read_text())
        try:
            check_item_index(ck_items, data.item_ids, where=f"between the run's checkpoint {last} and data.path")
        except CheckpointError as exc:
            hint = ("train.init_from warm-starts a NEW run: set another run.name" if job.train.init_from else
                    f"to retrain on the new data from this checkpoint set train.init_from={last} and "
                    "another run.name (known items keep their weights)")
            raise TrainingInputError(
                f"{exc}; {hint}; or use another run.name / delete {run_dir(job)} to start fresh"
            ) from None
    elif job.train.init_from:
        from rayrec.platform.training.warm_start import WarmStartError, init_checkpoint_items

        try:
            ck_items = init_checkpoint_items(job.train.init_from, job.model.name)
        except WarmStartError as exc:
            raise TrainingInputError(str(exc)) from None
        if not set(ck_items) & set(map(str, data.item_ids)):
            raise TrainingInputError(
                f"train.init_from: none of the data's {len(data.item_ids)} items is in the checkpoint's "
                f"{len(ck_items)} items (another dataset?)")
    if spec.parallelism == "tensor" and job.ray.use_ray and len(data.item_ids) < job.scaling.num_workers:
        raise TrainingInputError(
            f"catalog of {len(data.item_ids)} items is smaller than scaling.num_workers={job.scaling.num_workers}")
    return data


def resolve_paths(job: TrainJobConfig) -> TrainJobConfig:
    """Make local relative paths absolute: Ray workers run in other directories."""
    p = job.data.path
    if job.data.synthetic is None and "://" not in p and not os.path.isabs(p):
        job = job.model_copy(update={"data": job.data.model_copy(update={"path": os.path.abspath(p)})})
    init = job.train.init_from
    if init is not None and "://" not in init and not os.path.isabs(init):
        job = job.model_copy(update={"train": job.train.model_copy(update={"init_from": os.path.abspath(init)})})
    return job


def fit(job: TrainJobConfig, log=print) -> FitResult:
    """Train ``job``; returns the last epoch's metrics, the latest checkpoint and the run dir."""
    job = resolve_paths(job)
    data = check_inputs(job)
    if not job.ray.use_ray:
        return _fit_in_process(job, data, log)
    return _fit_ray(job, data, log)


def _fit_in_process(job: TrainJobConfig, data: TrainData, log) -> FitResult:
    local = _local(run_dir(job))
    if local is None:
        raise TrainingInputError("run.storage_path: a remote URI needs ray.use_ray=true (Ray Train writes it)")
    rdir = Path(local)
    rdir.mkdir(parents=True, exist_ok=True)
    restore = latest_checkpoint(str(rdir)) if job.run.checkpoint else None

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        if ck_dir is None or not job.run.checkpoint:
            return
        dest = rdir / f"checkpoint_{int(metrics['epoch']):06d}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ck_dir, dest)
        keep = job.run.keep_checkpoints
        if keep is not None:
            for old in sorted(rdir.glob("checkpoint_*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    metrics = train_worker(job, WorkerContext(0, 1, report, restore, data, log))
    history = metrics.pop("history", [])
    ck = latest_checkpoint(str(rdir)) if job.run.checkpoint else None
    return FitResult(metrics, ck, str(rdir), history)


def _ray_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train

    registry.import_modules(config.get("model_modules", []))  # plug-in models of the driver
    job = TrainJobConfig.model_validate(config["job"])
    spec = registry.get(job.model.name)
    family = family_of(spec)
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    if spec.parallelism == "data":
        shard = ray.train.get_dataset_shard("train")
        frames = list(shard.iter_batches(batch_format="pandas", batch_size=4096))
        train = family.from_rows(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
        # the driver's event-type vocabulary and item metadata (vocabularies of all shards)
        shared = ray.get(config["shared"]) if "shared" in config else {}
        attach = getattr(family, "attach_context", lambda _a, _s: None)
        attach(train, shared)
        valid = family.load_valid(job, train.event_names) if rank == 0 else None
        attach(valid, shared)
        data = TrainData(train, valid, ray.get(config["item_ids"]),
                         np.asarray(ray.get(config["counts"]), dtype=np.int64))
    else:
        data = family.load(job, with_valid=True)
    restore_dir = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None and job.run.checkpoint:
        restore_dir = tempfile.mkdtemp(prefix="rayrec-restore-")
        ckpt.to_directory(restore_dir)

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        from ray.train import Checkpoint

        from rayrec.platform.training.loop import _jsonable

        ray.train.report(_jsonable(metrics), checkpoint=Checkpoint.from_directory(ck_dir) if ck_dir else None)

    log = print if rank == 0 else (lambda _m: None)
    train_worker(job, WorkerContext(rank, world, report, restore_dir, data, log,
                                    restore_label=ckpt.path if restore_dir else None))


def _fit_ray(job: TrainJobConfig, data: TrainData, log) -> FitResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrec.platform.runtime import init_ray

    init_ray(job.ray.address, job.ray.num_cpus)
    _check_gpu(job)
    spec = registry.get(job.model.name)
    sc = job.scaling
    if not sc.use_gpu:  # DeepSpeed on CPU; workers inherit the driver's environment
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Ray Train's print patch sends a worker's print to its logger AND (stdout being Ray's
    # wrapper, not the terminal) to the original print: every epoch line came out twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    loop_config: dict[str, Any] = {"job": job.model_dump(mode="json"), "model_modules": registry.plugin_modules()}
    datasets = None
    if spec.parallelism == "data":
        loop_config.update(item_ids=ray.put(data.item_ids), counts=ray.put(data.counts.tolist()))
        family = family_of(spec)
        datasets = {"train": ray.data.from_items(family.to_rows(data.train))}
        if hasattr(family, "shard_context"):
            loop_config["shared"] = ray.put(family.shard_context(data.train))
    trainer = TorchTrainer(
        train_loop_per_worker=_ray_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {}),
                                  **sc.resources_per_worker},
            placement_strategy=sc.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=RunConfig(
            name=job.run.name,
            storage_path=_storage(job),
            failure_config=FailureConfig(max_failures=job.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.keep_checkpoints),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ck = result.checkpoint.path if result.checkpoint is not None else None
    metrics = dict(result.metrics or {})
    history: list[dict[str, Any]] = []
    if ck is not None:  # a local path (remote storage: no history, the metrics still come back)
        if not job.run.checkpoint and Path(ck, METRICS_FILE).is_file():
            metrics = json.loads(Path(ck, METRICS_FILE).read_text())
            history = metrics.pop("history", [])
        elif Path(ck, "meta.json").is_file():  # every epoch of the run, resumed ones included
            history = json.loads(Path(ck, "meta.json").read_text()).get("history", [])
    if not job.run.checkpoint:
        ck = None
    return FitResult(metrics, ck, run_dir(job), history)
