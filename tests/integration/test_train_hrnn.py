"""HRNN-meta on real local Ray Train workers: the per-event context (event type, value, user)
and the item metadata travel with the Ray Data shards, and with ``train.sequence_key: user``
a shard holds whole user histories, so Ray runs see what the in-process run sees."""

from __future__ import annotations

import pytest

from rayrec.platform.checkpoint import load_model
from rayrec.platform.config import load_config
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.trainer import fit
from tests.fixtures import synthetic_user_sessions


@pytest.mark.slow
def test_ray_worker_shard_carries_event_context_and_item_features(ray_session, tmp_path):
    root = synthetic_user_sessions(tmp_path / "d")
    common = ["model.name=hrnn_meta", f"data.path={root}", "data.valid_split=test", "train.epochs=1",
              "train.batch_size=16", "model.inputs=[item_id,item_features,feedback,time]",
              "model.item_features=[genre]", "model.decoder=mixed", "model.memory=user",
              "train.sequence_key=user", "model.loss.rewards={interaction: 0.7}", "scaling.cpus_per_worker=1",
              f"run.storage_path={tmp_path}"]
    local = fit(load_config(TrainJobConfig, None, [*common, "ray.use_ray=false", "run.name=local"]),
                log=lambda _m: None)
    on_ray = fit(load_config(TrainJobConfig, None, [*common, "scaling.num_workers=1", "run.name=ray"]),
                 log=lambda _m: None)
    assert on_ray.metrics["examples"] == local.metrics["examples"] > 0
    assert on_ray.metrics["loss"] == pytest.approx(local.metrics["loss"], rel=1e-5)
    assert on_ray.metrics["recall@20"] == pytest.approx(local.metrics["recall@20"], abs=1e-6)


@pytest.mark.slow
def test_two_worker_ddp_fit_on_whole_user_sequences(ray_session, tmp_path):
    """2-worker TorchTrainer (DDP + the row-sparse item-row exchange) with
    ``sequence_key: user``: every pair of every user's joined history is trained exactly once
    (a shard of sessions regrouped per worker would split users and lose pairs), the replicas
    stay identical, and the checkpoint carries the driver's metadata vocabularies."""
    root = synthetic_user_sessions(tmp_path / "d")
    common = ["model.name=hrnn_meta", f"data.path={root}", "data.valid_split=test", "train.epochs=2",
              "train.batch_size=8", "model.inputs=[item_id,item_features,time]", "model.item_features=[genre]",
              "model.decoder=mixed", "model.memory=user", "train.sequence_key=user", "train.bptt=2",
              "scaling.cpus_per_worker=1", f"run.storage_path={tmp_path}"]
    local = fit(load_config(TrainJobConfig, None, [*common, "ray.use_ray=false", "run.name=local"]),
                log=lambda _m: None)
    ddp = fit(load_config(TrainJobConfig, None, [*common, "scaling.num_workers=2", "scaling.engine=ddp",
                                                 "run.name=ddp"]), log=lambda _m: None)
    assert ddp.metrics["world_size"] == 2
    assert ddp.metrics["examples"] == local.metrics["examples"] > 0
    assert ddp.metrics["replica_max_diff"] <= 1e-6
    assert 0.0 < ddp.metrics["recall@20"] <= 1.0
    got, want = load_model(ddp.checkpoint_dir, kind="session").model, load_model(local.checkpoint_dir,
                                                                                  kind="session").model
    assert got.Ef.shape == want.Ef.shape and bool((got.item_feat == want.item_feat).all())
