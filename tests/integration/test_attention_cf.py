"""Seed 002 end to end on a local Ray: item2vec on 2 Ray Train workers through
``rayrec.jobs.train`` (published as an embedding version), the attention model on Ray Train
reading it, then ``rayrec.jobs.evaluate`` with ``protocol: sampled_candidates``."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_item2vec_then_attention_then_sampled_evaluation(ray_session, tmp_path):
    from rayrec.jobs import evaluate, train
    from rayrec.platform.embeddings import load_embeddings
    from tests.planted import neighbour_purity, planted_dataset

    data = planted_dataset(tmp_path / "ds")
    runs = tmp_path / "runs"
    common = [f"data.path={data}", f"run.storage_path={runs}", "scaling.cpus_per_worker=0.5"]
    assert train.main(["model.name=item2vec", "model.dim=16", "model.subsample=0", "train.epochs=8",
                       "train.batch_size=256", "optim.lr=0.02", "scaling.num_workers=2", "run.name=i2v",
                       *common]) == 0
    emb = load_embeddings(f"{runs / 'i2v'}@current", data)
    assert neighbour_purity(emb.x, emb.item_ids) >= 0.9
    assert train.main(["model.name=attention_cf", "model.dim=16", "model.hops=2", "model.hidden=16",
                       "model.negatives=20", "train.epochs=6", f"data.embeddings={runs / 'i2v'}@current",
                       "scaling.num_workers=1", "run.name=att", *common]) == 0
    out = tmp_path / "eval.json"
    assert evaluate.main(["protocol=sampled_candidates", f"data.path={data}", "data.train_split=train",
                          "data.test_split=test", f"data.embeddings={runs / 'i2v'}@current",
                          f"checkpoints.attention={runs / 'att'}", "sampled.gammas=[1.0]",
                          "sampled.n_negatives=[50]", f"output={out}"]) == 0
    res = json.loads(out.read_text())["results"]
    att, pop = res["attention g=1 n=50"], res["popularity g=1 n=50"]
    assert att["protocol"] == "sampled_candidates" and att["n"] == pop["n"] > 0
    assert att["ndcg"] > pop["ndcg"] and att["recall@10"] > pop["recall@10"]
