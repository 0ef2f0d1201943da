"""``ray job submit`` against a real local head: the code ships as the rayrec wheel.

The head runs in its own process group with its own ports and temp dir (so no other
test or ``ray.init()`` on this machine attaches to it) and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    wheel_dir = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("rayrec-*.whl"))
    port, dash = _free_port(), _free_port()
    # the session's shared local Ray already holds the default agent ports: use free ones
    agent_ports = [
        f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
        f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
    ]
    temp_dir = Path("/tmp") / f"rayrec-jt-{os.getpid()}"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", *agent_ports],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dash), timeout=1):
                break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("local Ray head did not start")
    yield {"url": url, "wheel": wheel, "env": env, "tmp": tmp}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_submit_preprocess_job_and_read_result_and_logs(head):
    from tests.conftest import data_path

    data = data_path("rsc15-100k")
    out = head["tmp"] / "out"
    ray_bin = str(Path(sys.executable).parent / "ray")
    runtime_env = {"py_modules": [str(head["wheel"])], "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}}
    cmd = [
        ray_bin, "job", "submit", "--address", head["url"], "--runtime-env-json", json.dumps(runtime_env),
        "--", sys.executable, "-m", "rayrec.jobs.preprocess",
        "-c", str(REPO / "jobs/configs/preprocess_rsc15.yaml"), f"output.path={out}",
        *[f"source.paths.{n}={data}/yoochoose-clicks-100k_{n}.txt" for n in ("train_full", "test", "train_tr", "train_valid")],
    ]
    deadline = time.time() + 120
    while True:  # the head answers HTTP before its job agent is up: retry that case only
        res = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=600)
        logs = res.stdout + res.stderr
        if res.returncode == 0 or "No available agent" not in logs or time.time() > deadline:
            break
        time.sleep(3)
    assert res.returncode == 0, logs[-3000:]
    assert "succeeded" in logs.lower()
    assert "resolved config" in logs and "train_full" in logs  # the job's own log lines came back
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"]["splits"]["train_full"]["sessions"] == 17_794
