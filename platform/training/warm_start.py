"""Warm start (``train.init_from``): a new run starts from another run's checkpoint of the same
model when the catalog has changed (new data, a stable item index that appended items).

The model contract says which tensors of the full state run over items: a task's optional
``item_state_dims(module) -> {full-state key: item dim}``; without it, the ``catalog_dims`` that
the module's submodules declare (the tensor-parallel layout).  For those tensors the rows of
items known to the checkpoint are copied **by item id** (the checkpoint's ``items.json`` against
the data's index); rows of new items keep the fresh initialisation.  Every other tensor is
copied whole and must have the same shape; a missing, extra or differently shaped tensor is an
error naming it.  The optimiser state is carried over the same way
(:func:`warm_start_optimizer`), so the first steps continue the old run's step sizes.  Pure torch, no Ray: the loop calls :func:`warm_start_state` on every worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayrec.platform.checkpoint import (
    CONFIG_FILE,
    ITEMS_FILE,
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
)

__all__ = ["WarmStartError", "WarmStartReport", "init_checkpoint_items", "item_state_dims", "load_init_checkpoint",
           "resolve_init_from", "warm_start_optimizer", "warm_start_state"]


class WarmStartError(ValueError):
    """``train.init_from`` does not fit the model or the data (the message names the tensor)."""


@dataclass
class WarmStartReport:
    known_items: int
    new_items: int
    dropped_items: int
    """Checkpoint items that are not in the data's index (their rows are not used)."""
    item_tensors: list[str]
    copied_tensors: list[str]
    rows: tuple[torch.Tensor, torch.Tensor] | None = None
    """(new rows, old rows): the data's item_idx of the known items and their checkpoint rows."""

    def summary(self) -> str:
        return (f"{self.known_items} known items copied by id, {self.new_items} new items freshly "
                f"initialised, {self.dropped_items} checkpoint items not in the data; item tensors "
                f"{', '.join(self.item_tensors) or '-'}; {len(self.copied_tensors)} other tensors copied")


def resolve_init_from(path: str) -> str:
    """A checkpoint directory, or a run directory (its latest checkpoint)."""
    from rayrec.platform.training.trainer import checkpoint_or_latest

    found = checkpoint_or_latest(path)
    if found is not None:
        return str(Path(found).resolve())
    raise WarmStartError(f"train.init_from: {path} is neither a checkpoint directory (with model.pt) "
                         "nor a run directory with a complete checkpoint")


def _check_model(path: str, config: Any, model_name: str) -> None:
    mcfg = config.get("model") if isinstance(config, dict) else None
    name = mcfg.get("name") if isinstance(mcfg, dict) else None
    if name != model_name:
        raise WarmStartError(f"train.init_from: {path} holds model {name!r}, this run trains {model_name!r}")


def init_checkpoint_items(path: str, model_name: str) -> list[str]:
    """The item index of ``train.init_from`` after checking it holds ``model_name``, from its
    JSON files only (the driver's pre-flight check; the workers load the weights)."""
    directory = Path(resolve_init_from(path))
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        items = json.loads((directory / ITEMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WarmStartError(f"train.init_from: checkpoint {directory} is unreadable: {exc}") from None
    _check_model(path, config, model_name)
    return [str(i) for i in items]


def load_init_checkpoint(path: str, model_name: str) -> LoadedCheckpoint:
    """Load ``train.init_from`` (``weights_only=True``) and check it holds ``model_name``."""
    try:
        ck = load_checkpoint(resolve_init_from(path))
    except CheckpointError as exc:
        raise WarmStartError(f"train.init_from: {exc}") from None
    _check_model(path, ck.config, model_name)
    return ck


def item_state_dims(task: Any, module: nn.Module) -> dict[str, int]:
    """The task's item-indexed full-state tensors -> their item dimension."""
    if hasattr(task, "item_state_dims"):
        return {str(k): int(v) for k, v in task.item_state_dims(module).items()}
    out: dict[str, int] = {}
    for name, sub in module.named_modules():
        dims = getattr(sub, "catalog_dims", None)
        if dims is not None:
            out.update({(f"{name}." if name else "") + k: int(d) for k, d in dims.items()})
    return out


def warm_start_state(
    fresh: Mapping[str, torch.Tensor],
    old: Mapping[str, torch.Tensor],
    old_item_ids: Sequence[str],
    new_item_ids: Sequence[str],
    item_dims: Mapping[str, int],
    where: str = "train.init_from",
) -> tuple[dict[str, torch.Tensor], WarmStartReport]:
    """The fresh full state with the checkpoint's weights copied in (see the module doc)."""
    pos = {str(i): j for j, i in enumerate(old_item_ids)}
    new_rows, old_rows = [], []
    for j, item in enumerate(new_item_ids):
        i = pos.get(str(item))
        if i is not None:
            new_rows.append(j)
            old_rows.append(i)
    same_index = list(map(str, old_item_ids)) == list(map(str, new_item_ids))
    if not same_index and not item_dims:
        raise WarmStartError(
            f"{where}: the item index changed ({len(old_item_ids)} -> {len(new_item_ids)} items) and the "
            "model declares no item tables (TrainTask.item_state_dims or catalog_dims), so its rows "
            "cannot be matched by item id")
    if not new_rows:
        raise WarmStartError(f"{where}: no item of the data is in the checkpoint's {len(old_item_ids)} items "
                             "(another dataset?)")
    missing = sorted(set(fresh) - set(old))
    extra = sorted(set(old) - set(fresh))
    if missing or extra:
        raise WarmStartError(
            f"{where}: the checkpoint's parameters differ from the model's"
            + (f"; not in the checkpoint: {', '.join(missing)}" if missing else "")
            + (f"; not in the model: {', '.join(extra)}" if extra else "")
            + " (another model configuration?)")
    unknown = sorted(set(item_dims) - set(fresh))
    if unknown:
        raise WarmStartError(f"{where}: item tables {unknown} are not in the model's state")
    new_idx = torch.tensor(new_rows, dtype=torch.long)
    old_idx = torch.tensor(old_rows, dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    item_keys, copied = [], []
    for key, f in fresh.items():
        o = old[key]
        if key in item_dims:
            d = item_dims[key]
            fs, os_ = list(f.shape), list(o.shape)
            if (len(fs) != len(os_) or fs[:d] + fs[d + 1:] != os_[:d] + os_[d + 1:]
                    or fs[d] != len(new_item_ids) or os_[d] != len(old_item_ids)):
                raise WarmStartError(
                    f"{where}: item table {key} has shape {tuple(o.shape)} in the checkpoint and "
                    f"{tuple(f.shape)} in the model (item dim {d}: {len(old_item_ids)} -> "
                    f"{len(new_item_ids)} items); the other dimensions must match")
            t = f.detach().clone()
            t.index_copy_(d, new_idx.to(t.device), o.to(t.device, t.dtype).index_select(d, old_idx.to(t.device)))
            out[key] = t
            item_keys.append(key)
        else:
            if tuple(f.shape) != tuple(o.shape):
                raise WarmStartError(
                    f"{where}: parameter {key} has shape {tuple(o.shape)} in the checkpoint and "
                    f"{tuple(f.shape)} in the model")
            out[key] = o.detach().clone().to(f.device, f.dtype)
            copied.append(key)
    report = WarmStartReport(len(new_rows), len(new_item_ids) - len(new_rows),
                             len(old_item_ids) - len(new_rows), item_keys, copied, (new_idx, old_idx))
    return out, report


def warm_start_optimizer(
    optimizer: torch.optim.Optimizer,
    old_state: Mapping[str, Any],
    item_rows: Mapping[int, tuple[int, torch.Tensor, torch.Tensor]],
    where: str = "train.init_from",
) -> int:
    """Carry the checkpoint's optimiser state into the new run's optimiser; returns the number
    of parameters whose state was carried over.

    Without it a warm-started run meets its first steps with empty accumulators: Adagrad's
    first update of every coordinate is ``lr * g / sqrt(g^2 + eps)`` (about ``+-lr``), Adam's
    first steps are full-size too, and they undo much of what the copied weights knew.
    Item tables (``item_rows``: ``id(param) -> (item dim, new rows, old rows)``) get the
    known items' state rows copied by item id and zeros for new items (a new item starts as a
    fresh row would); every other tensor state is copied whole when it has the parameter's
    shape.  Scalar state (Adam's step count) is copied as is.  The parameter groups must list
    the same number of parameters as the checkpoint's (the same task and model config), else
    an error naming the counts."""
    groups = old_state.get("param_groups", []) if isinstance(old_state, Mapping) else []
    state = old_state.get("state", {}) if isinstance(old_state, Mapping) else {}
    old_ids = [i for g in groups for i in g.get("params", [])]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if len(old_ids) != len(params):
        raise WarmStartError(f"{where}: the checkpoint's optimiser holds {len(old_ids)} parameters, this "
                             f"run's {len(params)} (another model configuration?)")
    carried = 0
    for pid, p in zip(old_ids, params):
        st = state.get(pid, state.get(str(pid)))
        if not st:
            continue
        new_st: dict[str, Any] = {}
        for key, v in st.items():
            if not torch.is_tensor(v) or v.dim() == 0:
                new_st[key] = v.clone() if torch.is_tensor(v) else v
                continue
            if id(p) in item_rows:
                d, new_idx, old_idx = item_rows[id(p)]
                t = torch.zeros_like(p)
                t.index_copy_(d, new_idx.to(p.device), v.to(p.device, p.dtype).index_select(d, old_idx.to(p.device)))
            elif tuple(v.shape) == tuple(p.shape):
                t = v.detach().clone().to(p.device, p.dtype)
            else:
                raise WarmStartError(f"{where}: optimiser state {key!r} has shape {tuple(v.shape)} in the "
                                     f"checkpoint, the parameter {tuple(p.shape)}")
            new_st[key] = t
        optimizer.state[p] = new_st
        carried += 1
    return carried
