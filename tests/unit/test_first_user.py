"""What a first user trips on (the first-user report, findings 3, 7 and 10): reference docs
generated from the code, ``--help`` that prints the whole description and the keys, no
pointers to files outside the repository, the shipped GRU4Rec config selecting on a
validation split, ``tune_report`` on the run's own metric, evaluate given a run directory."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = ["preprocess", "train", "evaluate", "tune", "daily", "batch_predict", "demo"]


def _gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "scripts/gen_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_reference_docs_are_current():
    """docs/config_reference.md and docs/serving_api.md equal what the code generates now."""
    assert _gen_reference().main(["--check"]) == 0, "run .venv/bin/python scripts/gen_reference.py"


def test_reference_lists_every_job_and_nested_key_and_every_route():
    text = (REPO / "docs/config_reference.md").read_text()
    for job in JOBS:
        assert f"## `rayrec.jobs.{job}`" in text
    for key in ("`optim.lr`", "`scaling.engine`", "`data.valid_split`", "`model.loss.n_sample`",
                "`train.init_from`", "`ray.address`"):
        assert key in text, key
    api = (REPO / "docs/serving_api.md").read_text()
    for route in ("POST /events", "GET /sessions/{session_id}/recommendations", "GET /ready",
                  "GET /users/{user_id}/recommendations", "POST /admin/reload"):
        assert f"`{route}`" in api, route


@pytest.mark.parametrize("job", JOBS)
def test_help_prints_the_whole_description_and_the_top_level_keys(job):
    from rayrec.jobs import _cli

    mod = importlib.import_module(f"rayrec.jobs.{job}")
    cfg_cls = next(v for k, v in vars(mod).items() if k.endswith("JobConfig") and isinstance(v, type))
    text = _cli.parser(job, mod.__doc__, cfg_cls).format_help()
    body = [ln.strip() for ln in mod.__doc__.strip().splitlines()[1:] if ln.strip()]
    assert body, f"rayrec.jobs.{job} has no description"
    assert body[-1] in text, f"--help of {job} cuts its description: {body[-1]!r} missing"
    for key in cfg_cls.model_fields:
        assert re.search(rf"^  {re.escape(key)}\s", text, re.M), f"--help of {job} does not list {key}"
    assert "docs/config_reference.md" in text


def test_code_and_docs_point_to_no_file_outside_the_repository():
    bad = re.compile(r"DESIGN\.md|RAY_NOTES|evaluate_rsc15\.yaml")
    hits = []
    for folder in ("platform", "models", "ops_kernels", "jobs", "serve_apps", "docs", "tests", "benchmarks"):
        for p in (REPO / folder).rglob("*"):
            if p.suffix in (".py", ".md", ".yaml") and p.resolve() != Path(__file__).resolve():
                hits += [f"{p.relative_to(REPO)}:{i + 1}" for i, ln in enumerate(p.read_text().splitlines())
                         if bad.search(ln)]
    hits += [f"README.md:{i + 1}" for i, ln in enumerate((REPO / "README.md").read_text().splitlines())
             if bad.search(ln)]
    assert not hits, hits


def test_readme_has_a_paper_glossary_and_says_which_models_are_coming():
    text = (REPO / "README.md").read_text()
    for seed in ("000", "001", "002", "003", "004"):
        assert re.search(rf"^\| {seed} \|", text, re.M), f"seed {seed} missing from the glossary"
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (00\d) \|.*$", text, re.M)}
    from rayrec.models import registry

    names = {s.name for s in registry.trainable_specs()}
    assert ("hrnn_meta" in names) or ("coming" in rows["001"])
    assert "available" in rows["003"] and "gru4rec" in names


def test_shipped_gru4rec_config_selects_on_validation_not_test():
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig

    cfg = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml")
    assert cfg.data.valid_split == "train_valid" and cfg.data.train_split == "train_tr"
    text = (REPO / "jobs/configs/gru4rec_rsc15.yaml").read_text()
    assert "data.train_split=train_full data.valid_split=test" in text  # the test-protocol override


def test_tensorboard_is_installed_by_the_dev_extra():
    """Finding 10: ``tensorboard --logdir runs/tune`` (README) needed a package nobody installed."""
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^\s*"tensorboard[>=]', text, re.M)
    assert importlib.util.find_spec("tensorboard") is not None, "make setup installs the dev extra"
    assert (Path(sys.executable).parent / "tensorboard").is_file()  # the README's command


def _trial(root: Path, name: str, rows: list[dict]) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "result.json").write_text("\n".join(json.dumps(r) for r in rows))


def test_tune_report_uses_the_runs_own_metric(tmp_path, capsys):
    from rayrec.jobs import tune_report

    run = tmp_path / "daily-pbt"
    _trial(run, "trial_a", [{"epoch": 1, "precision@10": 0.10, "loss": 3.0, "time": 1},
                            {"epoch": 2, "precision@10": 0.12, "loss": 2.5, "time": 2}])
    _trial(run, "trial_b", [{"epoch": 1, "precision@10": 0.09, "loss": 3.1, "time": 1}])
    (run / "summary.json").write_text(json.dumps({"accuracy_metric": "precision@10", "metric": "fitness"}))
    assert tune_report.main([str(run)]) == 0
    out = capsys.readouterr().out
    header, first, second = out.splitlines()[:3]
    assert header.split()[:2] == ["trial", "precision@10"]  # the run's metric, best trial first
    assert first.split()[:2] == ["trial_a", "0.12"] and second.split()[:2] == ["trial_b", "0.09"]
    assert (run / "curves.png").is_file()
    assert tune_report.main([str(run), "--metric", "recall@20"]) == 2
    assert "reported metrics: loss, precision@10" in capsys.readouterr().out


def test_evaluate_takes_a_run_directory_and_checks_checkpoints_before_baselines(tmp_path):
    from rayrec.jobs.evaluate import EvaluateJobConfig, run
    from rayrec.platform.checkpoint import CheckpointError
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit
    from tests.fixtures import synthetic_sessions

    data = synthetic_sessions(tmp_path / "data", n_events=3000, n_items=80)
    job = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml", [
        f"data.path={data}", "data.train_split=train_full", "data.valid_split=test", "train.epochs=1",
        "train.max_steps_per_epoch=5", "model.loss.n_sample=16", "model.layers=[8]", "ray.use_ray=false",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=r"])
    fit(job, log=lambda _m: None)
    logs: list[str] = []
    cfg = EvaluateJobConfig.model_validate({"data": {"path": str(data), "train_split": "train_full",
                                                     "test_split": "test"},
                                            "baselines": ["pop"], "checkpoints": {"g": str(tmp_path / "runs/r")}})
    res = run(cfg, log=logs.append)
    assert "recall@20" in res["g"] and Path(res["g"]["checkpoint"]).name.startswith("checkpoint_")
    assert any("run directory" in m for m in logs)
    empty = tmp_path / "runs/empty"
    empty.mkdir()
    bad = EvaluateJobConfig.model_validate({"data": {"path": str(data)}, "baselines": ["pop"],
                                            "checkpoints": {"x": str(empty)}})
    logs.clear()
    with pytest.raises(CheckpointError, match="checkpoints.x: .* neither a checkpoint directory"):
        run(bad, log=logs.append)
    assert not any("pop" in m.lower() for m in logs), "baselines ran before the checkpoint was checked"


def test_long_epochs_print_progress_lines_and_one_epoch_line(tmp_path):
    """Finding 9: an epoch of minutes printed nothing until it ended."""
    from rayrec.platform.config import load_config
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.families import SessionFamily
    from rayrec.platform.training.loop import _progress_line, run_local
    from tests.fixtures import synthetic_sessions

    assert _progress_line(2, 10, 1200, 3400, 38_400, 4.0, 1) == (
        "epoch 2/10: step 1,200/3,400, 38,400 examples, 9,600 examples/s, ETA 7s")
    data = synthetic_sessions(tmp_path / "d", n_events=3000, n_items=80)
    job = load_config(TrainJobConfig, REPO / "jobs/configs/gru4rec_rsc15.yaml", [
        f"data.path={data}", "data.train_split=train_full", "data.valid_split=null", "train.epochs=1",
        "train.max_steps_per_epoch=6", "train.progress_every_s=1e-9", "model.loss.n_sample=16",
        "model.layers=[8]", "ray.use_ray=false", "run.checkpoint=false", f"run.storage_path={tmp_path}"])
    logs: list[str] = []
    run_local(job, SessionFamily.load(job, with_valid=False), log=logs.append)
    progress = [m for m in logs if re.match(r"epoch 1/1: step \d/6, ", m)]
    assert [int(m.split("step ")[1].split("/")[0]) for m in progress] == [1, 2, 3, 4, 5]
    assert all("examples/s, ETA" in m for m in progress)
    assert sum(1 for m in logs if m.startswith("epoch 1/1 loss")) == 1
    logs.clear()
    quiet = job.model_copy(update={"train": job.train.model_copy(update={"progress_every_s": None})})
    run_local(quiet, SessionFamily.load(quiet, with_valid=False), log=logs.append)
    assert not any(": step " in m for m in logs)


def test_use_ray_auto_keeps_small_jobs_in_this_process(tmp_path, monkeypatch):
    """Finding 9: preprocess of 10k rows took 25 s with Ray vs 0.3 s without; the daily job's
    scoring of 105 users 96 s vs 1 s."""
    from rayrec.platform.config import load_config
    from rayrec.platform.daily.config import DailyJobConfig
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import decide_ray
    from rayrec.platform.sections import resolve_use_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    logs: list[str] = []
    assert resolve_use_ray("auto", None, 105, 20_000, "users to score", logs.append) is False
    assert "in this process" in logs[-1] and "105 users to score < 20,000" in logs[-1]
    assert resolve_use_ray("auto", None, 20_000, 20_000, "users to score", logs.append) is True
    assert resolve_use_ray("auto", "auto", 1, 20_000, "users", logs.append) is True
    assert "joining the cluster at auto" in logs[-1]
    assert resolve_use_ray(False, "auto", 10**9, 1, "users") is False  # explicit settings win
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")  # ray job submit: on the cluster
    assert resolve_use_ray("auto", None, 1, 20_000, "users", logs.append) is True
    monkeypatch.delenv("RAY_ADDRESS")

    src = tmp_path / "ev.csv"
    src.write_text("user,item,timestamp\n" + "".join(f"u{i % 7},i{i % 11},{1000 + i}\n" for i in range(200)))
    cfg = load_config(PreprocessJobConfig, None, [
        "source.format=csv", f"source.path={src}", "source.column_map={user_id: user, item_id: item, ts: timestamp}",
        f"output.path={tmp_path / 'out'}"])
    assert cfg.ray.use_ray == "auto"
    assert decide_ray(cfg, logs.append).ray.use_ray is False and "MB of input <" in logs[-1]
    big = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"auto_max_mb": 0.0})})
    assert decide_ray(big, logs.append).ray.use_ray is True
    assert load_config(DailyJobConfig, REPO / "jobs/configs/daily_ml100k.yaml").ray.use_ray == "auto"
