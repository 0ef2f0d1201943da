"""Published item embeddings: versions of an embedding model's vectors (seed 002 section 3).

Seed 002 trains its item vectors once and hands them, frozen, to every downstream model.
An embedding run (``rayrec.jobs.train`` with a model of kind ``embedding``, e.g. item2vec)
ends by publishing its last checkpoint here; downstream configs name a version as
``<run dir>@<version>`` (``data.embeddings: runs/item2vec-ml100k@current``).

Layout under the run directory ``R``::

    R/embeddings/<version>/    a checkpoint (rayrec.platform.checkpoint): tensors x (N, d),
                               y (N, d), pair_counts (N,); items.json; meta.json with the
                               version, the data manifest's digest, the source checkpoint
    R/embeddings/CURRENT       the current version's id (replaced atomically)

The version id is a content hash (the tensors and the item index): publishing the same
vectors twice gives the same version.  Publishing refuses NaN/inf, switches ``CURRENT`` with
one ``os.replace`` (a reader sees the old or the new version, never a mix: the version's
directory is complete before it is named) and keeps the newest ``run.keep_versions``
versions (never the current one).  Loading checks the version's item index against the
data's ``items.parquet`` and names both on a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrec.platform.checkpoint import (
    CheckpointError,
    item_index_hash,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["EmbeddingError", "Embeddings", "load_embeddings", "parse_ref", "publish", "publish_checkpoint"]

SUBDIR = "embeddings"
CURRENT = "CURRENT"


class EmbeddingError(CheckpointError):
    """An embedding version is missing, malformed or does not fit the data."""


@dataclass
class Embeddings:
    x: np.ndarray
    """(N, d) float32 input vectors: what downstream models read."""
    y: np.ndarray
    pair_counts: np.ndarray
    """(N,) training pairs per item (0: the vector was never trained)."""
    item_ids: list[str]
    version: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)


def parse_ref(ref: str) -> tuple[str, str]:
    """``<run dir>@<version>`` -> (run dir, version); no ``@`` means ``current``."""
    root, sep, version = str(ref).rpartition("@")
    if not sep:
        return str(ref), "current"
    if not root or not version:
        raise EmbeddingError(f"data.embeddings: {ref!r} is not <run dir>@<version|current>")
    return root, version


def _manifest_digest(data_path: str) -> str:
    from rayrec.platform.data import read_manifest

    return hashlib.sha256(json.dumps(read_manifest(data_path), sort_keys=True).encode()).hexdigest()[:16]


def _version_id(tensors: dict[str, np.ndarray], item_ids: list[str]) -> str:
    h = hashlib.sha256(item_index_hash(list(item_ids)).encode())
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def publish(run_directory: str | os.PathLike, x: np.ndarray, y: np.ndarray, pair_counts: np.ndarray,
            item_ids: list[str], data_path: str, keep_versions: int = 3,
            config: dict[str, Any] | None = None, extra_meta: dict[str, Any] | None = None) -> str:
    """Publish one version and make it current; returns its id."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    pc = np.asarray(pair_counts, dtype=np.int64)
    n = len(item_ids)
    if x.ndim != 2 or x.shape[0] != n or y.shape != x.shape or pc.shape != (n,):
        raise EmbeddingError(f"publish: x {x.shape}, y {y.shape}, pair_counts {pc.shape} do not fit {n} items")
    for name, a in (("x", x), ("y", y)):
        bad = ~np.isfinite(a)
        if bad.any():
            rows = np.flatnonzero(bad.any(1))
            raise EmbeddingError(f"publish: {name} holds NaN/inf in {rows.size} row(s) (first item_idx "
                                 f"{int(rows[0])}, item {item_ids[int(rows[0])]!r}); nothing published")
    tensors = {"x": x, "y": y, "pair_counts": pc}
    version = _version_id(tensors, item_ids)
    base = Path(run_directory) / SUBDIR
    base.mkdir(parents=True, exist_ok=True)
    final = base / version
    if not (final / "model.pt").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=base))
        meta = {"version": version, "published_at": time.time(), "data_path": str(data_path),
                "data_manifest_digest": _manifest_digest(data_path), "n_items": n, "dim": int(x.shape[1]),
                "trained_items": int((pc > 0).sum()), **(extra_meta or {})}
        save_checkpoint(tmp, {k: torch.from_numpy(v) for k, v in tensors.items()}, config or {}, item_ids,
                        meta=meta)
        if final.exists():  # an incomplete leftover
            shutil.rmtree(final)
        os.replace(tmp, final)
    ptr = base / f".{CURRENT}.tmp"
    ptr.write_text(version)
    os.replace(ptr, base / CURRENT)
    _prune(base, version, keep_versions)
    return version


def _prune(base: Path, current: str, keep: int) -> None:
    versions = []
    for p in base.iterdir():
        if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file():
            try:
                at = float(json.loads((p / "meta.json").read_text()).get("published_at", 0.0))
            except (OSError, ValueError):
                at = 0.0
            versions.append((at, p))
    versions.sort(reverse=True)
    for _, p in versions[keep:]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)


def load_embeddings(ref: str, data_path: str | None = None) -> Embeddings:
    """The version ``ref`` names (``<run dir>@<version|current>``); with ``data_path`` its item
    index must equal that data's ``items.parquet`` (an error names both)."""
    root, version = parse_ref(ref)
    base = Path(root) / SUBDIR
    if version == "current":
        try:
            version = (base / CURRENT).read_text().strip()
        except OSError:
            raise EmbeddingError(f"data.embeddings: {root} has no published embedding version "
                                 f"({base / CURRENT} missing): train an embedding model with run.name there") from None
    path = base / version
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        raise EmbeddingError(f"data.embeddings: version {version!r} of {root}: {exc}") from None
    missing = [k for k in ("x", "y", "pair_counts") if k not in ck.model_state]
    if missing:
        raise EmbeddingError(f"data.embeddings: {path} is not an embedding version (no {missing})")
    emb = Embeddings(ck.model_state["x"].float().numpy(), ck.model_state["y"].float().numpy(),
                     ck.model_state["pair_counts"].numpy(), [str(i) for i in ck.item_ids], version, str(path),
                     ck.meta)
    if data_path is not None:
        from rayrec.platform.data import load_items

        data_ids = load_items(data_path)["item_id"].astype(str).tolist()
        if data_ids != emb.item_ids:
            first = next((i for i, (a, b) in enumerate(zip(emb.item_ids, data_ids)) if a != b),
                         min(len(data_ids), len(emb.item_ids)))
            raise EmbeddingError(
                f"embedding version {version} ({path}, {len(emb.item_ids)} items) does not fit "
                f"{data_path}/items.parquet ({len(data_ids)} items): first difference at item_idx {first}; "
                "retrain the embeddings on this data or point data.embeddings at a matching version")
    return emb


def publish_checkpoint(job: Any, checkpoint_dir: str, run_directory: str) -> str:
    """Publish an embedding run's checkpoint (tensors ``x``, ``y``) with per-item pair counts
    of the job's ``data.splits`` under its ``model.window``."""
    from rayrec.models.item2vec import pair_counts
    from rayrec.platform.training.families import EmbeddingFamily, user_sequences

    ck = load_checkpoint(checkpoint_dir)
    seqs, _ = user_sequences(job.data.path, EmbeddingFamily.splits(job))
    pc = pair_counts(seqs.offsets, seqs.items, len(ck.item_ids), int(job.model.window))
    return publish(run_directory, ck.model_state["x"].numpy(), ck.model_state["y"].numpy(), pc,
                   [str(i) for i in ck.item_ids], job.data.path, job.run.keep_versions,
                   config=ck.config, extra_meta={"source_checkpoint": str(checkpoint_dir),
                                                 "epoch": ck.meta.get("epoch")})
