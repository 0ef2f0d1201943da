"""The one checkpoint format of rayrec (only this module writes checkpoints).

A checkpoint is a directory:

- ``model.pt``      ``{"model": state_dict, "optim": state_dict | None}`` saved with
                     ``torch.save``; loaded with ``weights_only=True`` (plain tensors and
                     containers only, never arbitrary pickles).
- ``config.json``   the resolved job config (``model_dump(mode="json")``).
- ``items.json``    the dense item index: ``item_ids[i]`` is the id of ``item_idx`` i.
- ``meta.json``     epoch, step, metrics, model name, rayrec version, free-form extra.

Everything but the tensors is JSON, so a checkpoint from outside cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import rayrec

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
ITEMS_FILE = "items.json"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the data."""


@dataclass
class LoadedCheckpoint:
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any] | None
    config: dict[str, Any]
    item_ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def item_index_hash(self) -> str:
        return item_index_hash(self.item_ids)


def item_index_hash(item_ids: list[str]) -> str:
    """A short stable hash of the item index (order matters)."""
    h = hashlib.sha256()
    for item in item_ids:
        h.update(item.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str), encoding="utf-8")


def save_checkpoint(
    directory: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    item_ids: list[str],
    optim_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint into ``directory`` (created; files replaced atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    payload = {"model": state, "optim": optim_state}
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        torch.save(payload, tmp)
        tmp_path = tmp.name
    os.replace(tmp_path, directory / MODEL_FILE)
    _write_json(directory / CONFIG_FILE, config)
    _write_json(directory / ITEMS_FILE, list(item_ids))
    full_meta = {"rayrec_version": rayrec.__version__, "item_index_hash": item_index_hash(list(item_ids))}
    full_meta.update(meta or {})
    _write_json(directory / META_FILE, full_meta)
    return directory


def load_checkpoint(directory: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    directory = Path(directory)
    missing = [n for n in (MODEL_FILE, CONFIG_FILE, ITEMS_FILE) if not (directory / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is incomplete: missing {', '.join(missing)}")
    payload = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{directory / MODEL_FILE}: not a rayrec checkpoint payload")
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    item_ids = json.loads((directory / ITEMS_FILE).read_text(encoding="utf-8"))
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return LoadedCheckpoint(payload["model"], payload.get("optim"), config, item_ids, meta)


def check_item_index(ckpt_item_ids: list[str], data_item_ids: list[str], where: str = "") -> None:
    """Fail clearly when a checkpoint's item index does not match the data's."""
    if list(ckpt_item_ids) == list(data_item_ids):
        return
    n_a, n_b = len(ckpt_item_ids), len(data_item_ids)
    first = next(
        (i for i, (a, b) in enumerate(zip(ckpt_item_ids, data_item_ids)) if a != b), min(n_a, n_b)
    )
    raise CheckpointError(
        f"item index mismatch{(' ' + where) if where else ''}: checkpoint has {n_a} items, "
        f"data has {n_b}; first difference at item_idx {first}"
    )


@dataclass
class LoadedModel:
    """A registered model rebuilt from a checkpoint: the spec, its typed config, the module
    (eval mode, unsharded single-device layout) and the raw checkpoint."""

    spec: Any
    config: Any
    model: torch.nn.Module
    checkpoint: LoadedCheckpoint

    @property
    def item_ids(self) -> list[str]:
        return self.checkpoint.item_ids

    def scorer(self):
        """The spec's session scorer over the model (evaluation and serving)."""
        if self.spec.scorer is None:
            raise CheckpointError(f"model {self.spec.name!r} ({self.spec.kind}) has no session scorer")
        return self.spec.scorer(self.model)


def load_model(
    directory: str | os.PathLike, expected_item_ids: list[str] | None = None, kind: str | None = None
) -> LoadedModel:
    """Rebuild the registered model a checkpoint holds (``weights_only`` loading, strict keys).

    ``kind`` (``session``, ``daily``) refuses a checkpoint of another kind with a clear error;
    ``expected_item_ids`` checks the checkpoint's item index against the data's."""
    from rayrec.models import registry

    ck = load_checkpoint(directory)
    mcfg = ck.config.get("model") if isinstance(ck.config, dict) else None
    if not isinstance(mcfg, dict) or "name" not in mcfg:
        raise CheckpointError(f"checkpoint {directory}: config.json has no model.name")
    try:
        spec = registry.get(mcfg["name"])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {directory}: {exc.args[0]}") from None
    if kind is not None and spec.kind != kind:
        raise CheckpointError(
            f"checkpoint {directory} holds {spec.name!r}, a {spec.kind} model; a {kind} model is needed"
        )
    if expected_item_ids is not None:
        check_item_index(ck.item_ids, expected_item_ids, where=f"between {directory} and the data")
    cfg = spec.config_cls.model_validate(mcfg)
    model = spec.build(cfg, len(ck.item_ids))
    try:
        model.load_state_dict(ck.model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {directory}: weights do not fit {spec.name!r}: {exc}") from None
    model.eval()
    return LoadedModel(spec, cfg, model, ck)
