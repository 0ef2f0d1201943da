"""Loading a trained daily model (seed 000).

The daily model trains through the one training loop of every model
(``rayrec.jobs.train`` / :func:`rayrec.platform.training.trainer.fit` with
``model.name: daily_nn``; its task is ``rayrec.models.daily_nn.DailyNNTask``, tensor parallel
over Ray Train workers for catalogs of a million products, section 5).  Checkpoints hold the
unsharded ``DailyNN`` layout, so the registry's builder loads them.
"""

from __future__ import annotations

from typing import Any

from rayrec.models.daily_nn import DailyNN
from rayrec.platform.checkpoint import load_model

__all__ = ["load_daily_model"]


def load_daily_model(ck_dir: str) -> tuple[DailyNN, list[str], dict[str, Any]]:
    """``(model, item_ids, meta)`` of a daily checkpoint: the registry's builder +
    ``load_state_dict(strict=True)`` (weights_only loading), in eval mode."""
    loaded = load_model(ck_dir, kind="daily")
    return loaded.model, loaded.item_ids, loaded.checkpoint.meta
