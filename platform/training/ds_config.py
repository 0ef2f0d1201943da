"""DeepSpeed configuration generated from the typed config (never hand-written JSON).

Item embeddings under DeepSpeed: DeepSpeed ignores sparse gradients (its
``sparse_gradients`` option was removed as never working with ZeRO), so rayrec's models
keep item tables as dense ``nn.Parameter`` s and look rows up with ``index_select``:
their gradients are dense tensors with non-zero rows only for the items in the step.
ZeRO stage 1/2 partitions the optimiser state (and stage 2 the gradients) of those
tables across ranks like any other weight, and ZeRO-3 partitions the tables
themselves; the item weights used outside the module's own ``forward`` (the output
scoring) are registered as external parameters so ZeRO-3 gathers them in time.
Accuracy parity with plain DDP is checked by tests/integration/test_train_gru4rec.py.
"""

from __future__ import annotations

from typing import Any

from rayrec.platform.training.config import TrainJobConfig


def make_ds_config(cfg: TrainJobConfig) -> dict[str, Any]:
    sc = cfg.scaling
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optim.clip_norm or 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_optimization": {"stage": sc.zero_stage},
        "zero_allow_untested_optimizer": True,
    }
    if sc.zero_stage >= 2:
        ds["zero_optimization"].update({"overlap_comm": False, "contiguous_gradients": True})
    if sc.zero_stage == 3:
        ds["zero_optimization"].update(
            {"stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": True}
        )
    if sc.bf16:
        ds["bf16"] = {"enabled": True}
    return ds
