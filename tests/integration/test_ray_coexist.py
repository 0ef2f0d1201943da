"""Local jobs next to a running ``ray start`` head (first-user report, finding 3): a job with
the default ``ray.address`` starts its own local Ray (it used to join the head and fail with
``num_cpus ... must not be provided``); ``ray.address=auto`` joins the head, passing no
resources."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rayrec.platform.preprocessing.synthetic import generate_events, write_rsc15_style
from tests.fixtures import free_port, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _preprocess(tsv: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "rayrec.jobs.preprocess", "source.format=rsc15_prepared", f"source.path={tsv}",
         "split.test_days=1", "split.valid_days=1", "filter.min_item_support=2", f"output.path={out}",
         "ray.use_ray=true", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_local_jobs_run_next_to_a_ray_start_head(tmp_path):
    tsv = write_rsc15_style(generate_events(3000, n_items=100, seed=0, days=4), tmp_path / "ev.tsv")
    port = free_port()
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false",
         "--disable-usage-stats", "--block"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        wait_for(lambda: head.poll() is not None or "will now block forever" in (tmp_path / "head.log").read_text(),
                 120, "the ray start head to come up")
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
        own = _preprocess(tsv, tmp_path / "own")
        assert own.returncode == 0, own.stderr[-3000:]
        assert (tmp_path / "own/manifest.json").is_file()
        assert "joining the running cluster" not in own.stdout + own.stderr
        # a log that is not a terminal gets no progress bars or colour codes (finding 9)
        assert "\x1b[" not in own.stdout + own.stderr and "\r" not in own.stdout + own.stderr
        joined = _preprocess(tsv, tmp_path / "joined", "ray.address=auto")
        out = joined.stdout + joined.stderr
        assert joined.returncode == 0, out[-3000:]
        assert "ray: joining the running cluster at auto" in out
        assert f":{port}" in out, "ray.address=auto did not connect to the running head"
        assert (tmp_path / "joined/manifest.json").read_bytes() != b""
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        log.close()
        current = Path("/tmp/ray/ray_current_cluster")  # the killed head's address, left behind
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def test_ray_train_prints_each_epoch_line_once_without_control_codes(tmp_path):
    """Finding 9: under Ray Train every epoch line came out twice (Ray Train's print patch
    logs a worker's print and tees it to stdout), the placement-group cleaner filled the log
    with state-API warnings (no dashboard, no state API), and colour codes reached files."""
    from tests.fixtures import synthetic_sessions

    data = synthetic_sessions(tmp_path / "d", n_events=3000, n_items=80)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PRINT_PATCH")}
    p = subprocess.run(
        [sys.executable, "-m", "rayrec.jobs.train", "-c", str(REPO / "jobs/configs/gru4rec_rsc15.yaml"),
         f"data.path={data}", "data.train_split=train_full", "data.valid_split=test", "train.epochs=2",
         "train.max_steps_per_epoch=20", "model.loss.n_sample=16", "model.layers=[8]",
         "scaling.cpus_per_worker=1", f"run.storage_path={tmp_path / 'runs'}", "run.name=logs"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    for e in (1, 2):
        assert len([ln for ln in out.splitlines() if f"epoch {e}/2 loss" in ln]) == 1, out[-3000:]
    assert "\x1b[" not in out
    assert "Failed to query Ray Train Controller actor state" not in out
