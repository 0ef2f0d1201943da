"""``TrainJobConfig``: the typed config of ``rayrec.jobs.train`` (and of Tune trials)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from rayrec.models.gru4rec import GRU4RecConfig
from rayrec.models.losses import LossConfig

from rayrec.platform.config import StrictModel
from rayrec.platform.training.optim import OptimConfig


class TrainDataConfig(StrictModel):
    path: str = "outputs/rsc15-100k"
    """A preprocess job's output directory (local path or pyarrow URI)."""
    train_split: str = "train_full"
    valid_split: str | None = "test"
    """Evaluated (next_item) after every epoch and reported with the checkpoint."""


class LoopConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    shuffle_sessions: bool = False
    """Seed 003 orders sessions by start time; shuffling is an option, off by default."""
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    cutoffs: list[int] = Field(default_factory=lambda: [5, 10, 20])
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """Cap for smoke tests and benchmarks."""
    fail_at_epoch: int | None = None
    """Testing aid: rank 1 (or 0 in a 1-worker run) raises once, after the checkpoint of this
    epoch, to exercise FailureConfig-based recovery."""


class ScalingConfig_(StrictModel):
    num_workers: int = Field(1, ge=0)
    """0 runs the loop in this process (no Ray Train); >= 1 a TorchTrainer."""
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)
    engine: Literal["ddp", "deepspeed"] = "ddp"
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
    def _check(self) -> ScalingConfig_:
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


class RunConfig_(StrictModel):
    name: str = "gru4rec"
    storage_path: str = "runs"
    """Local path or URI; re-running the same name continues from the last checkpoint."""
    max_failures: int = Field(0, ge=-1)
    keep_checkpoints: int | None = Field(2, ge=1)


class RayInitConfig(StrictModel):
    address: str | None = None
    num_cpus: int | None = None


class TrainJobConfig(StrictModel):
    model: GRU4RecConfig = Field(default_factory=GRU4RecConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: TrainDataConfig = Field(default_factory=TrainDataConfig)
    train: LoopConfig = Field(default_factory=LoopConfig)
    scaling: ScalingConfig_ = Field(default_factory=ScalingConfig_)
    run: RunConfig_ = Field(default_factory=RunConfig_)
    ray: RayInitConfig = Field(default_factory=RayInitConfig)
