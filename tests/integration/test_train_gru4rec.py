"""GRU4Rec on a real local Ray: 2-worker DDP vs DeepSpeed ZeRO-2, failure recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayrec.platform.config import load_config
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.trainer import fit
from tests.fixtures import synthetic_sessions


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_sessions(tmp_path_factory.mktemp("gru"), n_events=8000, n_items=200)


def _cfg(root, storage, name, *extra):
    return load_config(
        TrainJobConfig, None,
        ["model.name=gru4rec", f"data.path={root}", "data.valid_split=test", "train.epochs=2",
         "train.batch_size=16", "model.loss.n_sample=64", "train.max_steps_per_epoch=40", "scaling.num_workers=2",
         "scaling.cpus_per_worker=1", f"run.storage_path={storage}", f"run.name={name}", *extra],
    )


def _epoch_losses(run_dir: str) -> dict[int, float]:
    out = {}
    for meta in Path(run_dir).glob("checkpoint_*/meta.json"):
        m = json.loads(meta.read_text())
        out[int(m["epoch"])] = float(m["metrics"]["loss"])
    return out


def test_deepspeed_zero2_matches_ddp_two_workers(ray_session, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    ddp = fit(_cfg(data_root, tmp_path, "ddp"), log=lambda _m: None)
    ds = fit(_cfg(data_root, tmp_path, "ds", "scaling.engine=deepspeed", "scaling.zero_stage=2"), log=lambda _m: None)
    for res in (ddp, ds):
        assert res.metrics["epoch"] == 2 and res.metrics["protocol"] == "next_item"
        assert res.metrics["examples"] > 0
    l_ddp, l_ds = _epoch_losses(ddp.run_dir), _epoch_losses(ds.run_dir)
    assert l_ddp[2] < l_ddp[1]  # it learns
    # same data order, seeds and optimiser: ZeRO-2 partitions state, not the maths
    assert l_ds[1] == pytest.approx(l_ddp[1], rel=1e-4)
    assert l_ds[2] == pytest.approx(l_ddp[2], rel=1e-3)
    assert ds.metrics["recall@20"] == pytest.approx(ddp.metrics["recall@20"], abs=0.02)
    # DeepSpeed wrote both ranks' optimiser partitions into the one checkpoint
    shards = sorted(p.name for p in Path(ds.checkpoint_dir).rglob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2, shards
    assert (Path(ds.checkpoint_dir) / "model.pt").is_file()


def test_worker_failure_resumes_from_checkpoint(ray_session, data_root, tmp_path):
    clean = fit(_cfg(data_root, tmp_path, "clean", "train.epochs=3"), log=lambda _m: None)
    failed = fit(
        _cfg(data_root, tmp_path, "flaky", "train.epochs=3", "train.fail_at_epoch=1", "run.max_failures=1"),
        log=lambda _m: None,
    )
    assert failed.metrics["epoch"] == clean.metrics["epoch"] == 3
    # the restored run continued from epoch 1's weights and optimiser state: same metrics
    # up to the re-seeded negative sampler
    assert failed.metrics["loss"] == pytest.approx(clean.metrics["loss"], rel=0.05)
    assert failed.metrics["recall@20"] == pytest.approx(clean.metrics["recall@20"], abs=0.05)


def test_failure_without_retries_surfaces_the_error(ray_session, data_root, tmp_path):
    with pytest.raises(Exception, match="injected failure"):
        fit(_cfg(data_root, tmp_path, "nofix", "train.fail_at_epoch=1", "run.max_failures=0"), log=lambda _m: None)


def test_data_and_storage_given_as_uris(ray_session, data_root, tmp_path):
    """Data and checkpoint locations are URIs (any pyarrow filesystem; file:// here)."""
    res = fit(_cfg(f"file://{data_root}", f"file://{tmp_path}", "uri", "scaling.num_workers=1", "train.epochs=1"),
              log=lambda _m: None)
    assert res.metrics["epoch"] == 1 and res.metrics["examples"] > 0
    cks = list((tmp_path / "uri").glob("checkpoint_*/model.pt"))
    assert cks, f"no checkpoint under {tmp_path / 'uri'}"
