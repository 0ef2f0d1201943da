"""Config sections shared by every job (one vocabulary for train, tune, daily, evaluate and
batch_predict).

* ``ray``: where the work runs: ``use_ray: false`` runs the job in this process (no Ray at
  all); otherwise ``address`` (None: start or join a local Ray, ``auto``: the running
  cluster) and the logical ``num_cpus`` of a local Ray.
* ``scaling``: the Ray Train worker group (workers, CPUs/GPUs, engine, placement).
* ``run``: where checkpoints go and how a run resumes.
* ``eval``: the validation cadence and cut-offs (``ks``: the K of ``recall@K``,
  ``mrr@K``, ``precision@K``, ``pcc@K``).
* ``train``: the loop (epochs, batch size, seed, shuffling, caps, failure injection).
* ``data``: a preprocess job's output directory and the splits of it to use.

Data code may import this module; it imports nothing of training.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayrec.platform.config import StrictModel

__all__ = [
    "DataSection",
    "resolve_use_ray",
    "EvalSection",
    "RaySection",
    "RunSection",
    "ScalingSection",
    "SyntheticData",
    "TrainSection",
]


class RaySection(StrictModel):
    """Where the job runs: on Ray (a local Ray of this process, or a cluster) or in this
    process."""

    use_ray: bool | Literal["auto"] = True
    """False runs the job in this process, without Ray (tests, tiny data, the plain loop).
    ``auto`` (the default of the daily job's scoring step): in this process when there are
    fewer than ``auto_max_rows`` rows to work on, where Ray's start-up (10-30 s) and task
    overheads cost more than the work (105 users: 96 s on Ray vs 1 s in-process), on Ray
    otherwise and always when joining a cluster (``address`` or ``RAY_ADDRESS`` set); the log
    says which and why.  Training treats ``auto`` as true."""
    auto_max_rows: int = Field(20_000, ge=0)
    """``use_ray: auto``: below this many rows (the daily job: users to score) the job stays in
    this process."""
    address: str | None = None
    """None: start (or join ``RAY_ADDRESS``) a local Ray; ``auto``: the running cluster."""
    num_cpus: int | None = None
    """Logical CPUs of a local Ray (default max(4, cores): Data + Train never deadlock)."""


Engine = Literal["ddp", "deepspeed", "tensor_parallel"]


class ScalingSection(StrictModel):
    num_workers: int = Field(1, ge=1)
    """Ray Train workers (with ``ray.use_ray``)."""
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)
    """torch threads per worker (default: floor(cpus_per_worker), at least 1)."""
    engine: Engine = "ddp"
    """``ddp``: data parallel (every worker a whole model and its shard of the data);
    ``deepspeed``: a DeepSpeed engine with ZeRO ``zero_stage`` (data parallel; for a tensor-
    parallel model a model-parallel group over all workers); ``tensor_parallel``: every
    worker sees all data and holds a slice of the catalog-wide tables (models whose spec
    says ``parallelism: tensor``)."""
    zero_stage: int = Field(0, ge=0, le=3)
    bf16: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray Train's placement of the worker group: PACK (Ray's default) fills nodes one by one;
    STRICT_SPREAD puts every worker on a different node (the run fails to schedule when the
    cluster has fewer nodes than workers)."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Custom resources each worker needs besides ``cpus_per_worker`` (and 1 GPU with
    ``use_gpu``), e.g. ``{trainer: 1}`` to keep workers on nodes that offer ``trainer``."""

    @model_validator(mode="after")
    def _check(self) -> ScalingSection:
        reserved = {"CPU", "GPU", "memory", "object_store_memory"} & set(self.resources_per_worker)
        if reserved:
            raise ValueError(
                f"scaling.resources_per_worker: {sorted(reserved)} are set by cpus_per_worker / "
                "use_gpu; list custom resources only"
            )
        bad = {k: v for k, v in self.resources_per_worker.items() if not v > 0}
        if bad:
            raise ValueError(f"scaling.resources_per_worker: amounts must be > 0, got {bad}")
        if self.bf16 and not self.use_gpu:
            raise ValueError("scaling.bf16 needs scaling.use_gpu=true (CPU training runs in fp32)")
        if self.zero_stage and self.engine != "deepspeed":
            raise ValueError("scaling.zero_stage needs scaling.engine=deepspeed")
        return self


class RunSection(StrictModel):
    name: str = "run"
    storage_path: str = "runs"
    """Local path or URI (``file://``, ``s3://``...); re-running the same name continues from
    the run's latest checkpoint."""
    max_failures: int = Field(0, ge=-1)
    """Ray Train restarts of the worker group from the latest checkpoint (-1: forever)."""
    keep_checkpoints: int | None = Field(2, ge=1)
    keep_versions: int = Field(3, ge=1)
    """Embedding models: published versions kept (``rayrec.platform.embeddings``; the
    current one always)."""
    checkpoint: bool = True
    """False reports metrics only (huge catalogs in benchmarks)."""


class EvalSection(StrictModel):
    every: int = Field(1, ge=1)
    """Validate every this many epochs (and after the last)."""
    batch_size: int = Field(512, ge=1)
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])

    @model_validator(mode="after")
    def _ks(self) -> EvalSection:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"eval.ks must be a non-empty list of positive cut-offs, got {self.ks}")
        return self


class TrainSection(StrictModel):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    shuffle: bool = False
    """Shuffle the training examples every epoch (session models keep seed 003's order by
    session start time unless this is set)."""
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """Cap for smoke tests and benchmarks."""
    fail_at_epoch: int | None = None
    """Testing aid: the last rank raises once, after the checkpoint of this epoch, to
    exercise FailureConfig-based recovery."""
    progress_every_s: float | None = Field(30.0, gt=0)
    """Print a progress line (step, examples, examples/s, ETA of the epoch) at most this often
    inside an epoch; None: only the line at the end of each epoch."""
    init_from: str | None = None
    """Warm start: a checkpoint directory (or a run directory: its latest checkpoint) of the
    same model.  A new run starts from its weights: item rows are copied by item id (items
    new in the data keep their fresh initialisation), every other parameter must have the
    same shape.  Ignored when the run resumes from its own checkpoint."""
    sequence_key: Literal["session", "user"] = "session"
    """Session models: what one training and validation sequence is: a ``session`` (seed 003)
    or a ``user``'s sessions joined in time order (the data needs ``user_id``; events without
    a user keep their session as a sequence of their own).  Data-parallel shards are whole
    sequences, so a user's history never spans two workers."""
    bptt: int = Field(1, ge=1)
    """Truncated back-propagation through time: one optimiser step per ``bptt`` consecutive
    session-parallel steps, gradients flowing through all of them (1: one step, GRU4Rec's
    training).  Only models whose task says ``supports_bptt`` accept more than 1."""


class SyntheticData(StrictModel):
    """In-memory random data (benchmarks, the P = 1M tensor-parallel demo)."""

    n_users: int = Field(2048, ge=1)
    n_items: int = Field(100_000, ge=2)
    items_per_user: int = Field(8, ge=1)
    targets_per_user: int = Field(2, ge=1)
    seed: int = 0


class DataSection(StrictModel):
    path: str = "outputs/rsc15-100k"
    """A preprocess job's output directory (local path or pyarrow URI)."""
    train_split: str = "train_full"
    """Session models: a split name; the daily model: a windows prefix (``<p>_x``/``<p>_y``)."""
    valid_split: str | None = "test"
    """Evaluated after every ``eval.every`` epochs and reported with the checkpoint."""
    test_split: str | None = "test"
    catalog_size: int | None = Field(None, ge=1)
    """Keep the P most frequent items of the training inputs (the daily model, seed 000
    section 3.1); None keeps all."""
    synthetic: SyntheticData | None = None
    """When set, ``path`` is ignored and random data of this shape is generated."""
    splits: list[str] | None = None
    """Embedding models: the splits whose per-user sequences they train on (default
    ``train``, ``valid_input``, ``test_input``; never a ``*_target``)."""
    embeddings: str | None = None
    """History models and the sampled-candidates evaluation: a published embedding version,
    ``<run dir>@<version|current>`` (``runs/item2vec-ml100k@current``); a relative local
    run dir is made absolute when the config is read (Ray workers run elsewhere)."""

    @field_validator("embeddings")
    @classmethod
    def _abs_embeddings(cls, v: str | None) -> str | None:
        if v is None or "://" in v:
            return v
        root, sep, version = v.rpartition("@")
        return os.path.abspath(root) + sep + version if sep else os.path.abspath(v)

    @model_validator(mode="after")
    def _synthetic_catalog(self) -> DataSection:
        if self.synthetic is not None and self.catalog_size is not None:
            raise ValueError("data.catalog_size cannot be combined with data.synthetic (use synthetic.n_items)")
        return self


def resolve_use_ray(use_ray: bool | str, address: str | None, size: float, limit: float, what: str,
                    log=print) -> bool:
    """``ray.use_ray`` as a decision: ``auto`` is Ray when joining a cluster or when ``size``
    (rows, bytes: ``what`` names them) reaches ``limit``, else this process; logged."""
    import os

    if use_ray != "auto":
        return bool(use_ray)
    joining = address or os.environ.get("RAY_ADDRESS")
    on_ray = bool(joining) or size >= limit
    why = (f"joining the cluster at {joining}" if joining else
           f"{size:,.0f} {what} {'>=' if on_ray else '<'} {limit:,.0f}")
    log(f"ray.use_ray=auto: {'on Ray' if on_ray else 'in this process (no Ray start-up)'} ({why})")
    return on_ray
