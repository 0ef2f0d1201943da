"""Training refuses bad inputs with clear errors before any training starts (no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from rayrec.platform.config import load_config
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import run_preprocess
from rayrec.platform.training.config import TrainJobConfig
from rayrec.platform.training.families import TrainingInputError
from rayrec.platform.training.trainer import check_inputs, fit
from tests.fixtures import synthetic_sessions


def _cfg(root, *extra):
    return load_config(
        TrainJobConfig, None,
        ["model.name=gru4rec", f"data.path={root}", "data.valid_split=test", "ray.use_ray=false",
         "train.epochs=1", "model.loss.n_sample=16", "train.batch_size=8", *extra],
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_sessions(tmp_path_factory.mktemp("d"), n_events=3000, n_items=100)


def test_in_process_fit_checkpoint_and_resume(data_root, tmp_path):
    cfg = _cfg(data_root, f"run.storage_path={tmp_path}", "run.name=r", "train.max_steps_per_epoch=20")
    r1 = fit(cfg, log=lambda _m: None)
    assert r1.metrics["epoch"] == 1 and r1.checkpoint_dir.endswith("checkpoint_000001")
    assert 0.0 <= r1.metrics["recall@20"] <= 1.0 and r1.metrics["protocol"] == "next_item"
    logs = []
    r2 = fit(_cfg(data_root, f"run.storage_path={tmp_path}", "run.name=r", "train.max_steps_per_epoch=20",
                  "train.epochs=2"), log=logs.append)
    assert any("resuming" in m for m in logs)
    assert r2.metrics["epoch"] == 2 and r2.checkpoint_dir.endswith("checkpoint_000002")


def _one_split_dataset(tmp_path, lines):
    p = tmp_path / "x.tsv"
    p.write_text("SessionId\tItemId\tTime\n" + "".join(f"{ln}\n" for ln in lines))
    cfg = load_config(
        PreprocessJobConfig, None,
        ["source.format=rsc15_prepared", f"source.paths={{train_full: {p}, test: {p}}}", "split.name=predefined",
         f"output.path={tmp_path / 'o'}", "ray.use_ray=false", "filter.min_session_length=1",
         "filter.min_item_support=1", "split.min_test_session_length=1"],
    )
    run_preprocess(cfg, log=lambda _m: None)
    return str(tmp_path / "o")


def test_single_event_split_is_rejected(tmp_path):
    root = _one_split_dataset(tmp_path, ["1\t10\t1396310400"])
    with pytest.raises(TrainingInputError, match="nothing to train on"):
        check_inputs(_cfg(root))


def test_sessions_of_one_event_are_rejected(tmp_path):
    root = _one_split_dataset(tmp_path, [f"{i}\t{10 + i}\t{1396310400 + i}" for i in range(5)])
    with pytest.raises(TrainingInputError, match="no session with 2 or more events"):
        check_inputs(_cfg(root))


def test_gpu_request_on_cpu_machine(data_root):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TrainingInputError, match="scaling.use_gpu=true but this machine has no CUDA"):
        check_inputs(_cfg(data_root, "scaling.use_gpu=true"))


def test_item_index_mismatch_with_run_checkpoint(data_root, tmp_path):
    fit(_cfg(data_root, f"run.storage_path={tmp_path}", "run.name=m", "train.max_steps_per_epoch=5"), log=lambda _m: None)
    other = synthetic_sessions(tmp_path / "other", n_events=3000, n_items=100, seed=5)
    items_a = pd.read_parquet(f"{data_root}/items.parquet")["item_id"].tolist()
    items_b = pd.read_parquet(f"{other}/items.parquet")["item_id"].tolist()
    assert items_a != items_b
    with pytest.raises(TrainingInputError, match="item index mismatch"):
        check_inputs(_cfg(other, f"run.storage_path={tmp_path}", "run.name=m"))


def test_evaluate_checkpoint_against_wrong_items(data_root, tmp_path):
    from rayrec.platform.checkpoint import CheckpointError
    from rayrec.platform.evaluation.runner import scorer_from_checkpoint

    r = fit(_cfg(data_root, f"run.storage_path={tmp_path}", "run.name=e", "train.max_steps_per_epoch=5"), log=lambda _m: None)
    scorer, _ = scorer_from_checkpoint(r.checkpoint_dir)
    assert scorer.n_items == len(pd.read_parquet(f"{data_root}/items.parquet"))
    with pytest.raises(CheckpointError, match="item index mismatch"):
        scorer_from_checkpoint(r.checkpoint_dir, ["x", "y"])


def test_item_index_outside_the_item_table_names_the_event_before_any_step(tmp_path):
    """An items.parquet that lost rows (hand-edited, truncated copy): the split's item_idx
    would index past the item tables; the error names the event, its session and the index."""
    import pyarrow.parquet as pq

    root = _one_split_dataset(tmp_path, [f"{i // 3}\t{10 + i % 4}\t{1396310400 + i}" for i in range(12)])
    items = pq.read_table(f"{root}/items.parquet").to_pandas()
    pq.write_table(pq.read_table(f"{root}/items.parquet").slice(0, 2), f"{root}/items.parquet")
    with pytest.raises(TrainingInputError, match=r"event \d+ \(session \d+\) has item_idx [23], outside "
                                                  r"items.parquet's 2 items \(0..1\)"):
        check_inputs(_cfg(root))
    assert len(items) == 4
