"""The main job submitted with `ray job submit` to a real local head.

A module fixture starts `ray start --head --block` with token auth, every port
chosen free and its own temp dir, so it never meets a developer's cluster or
the session's in-process one (`ray_cluster` in conftest). The job then runs as
on a cloud head: in an uploaded copy of the repository, which is why every
path it gets is absolute. Linux only: teardown finds the head's processes in
/proc.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
# The venv's bin: `ray` from here, and first on the head's PATH so that the
# job's `python` is the venv's.
VENV_BIN = Path(sys.executable).parent
HEAD_START_TIMEOUT_S = 180
HEAD_STOP_TIMEOUT_S = 60
JOB_TIMEOUT_S = 15 * 60
# Not uploaded with the working dir (Ray also honours .gitignore by default).
EXCLUDES = [".git", ".venv", "runs", ".cache", ".pytest_cache", ".ruff_cache"]
METRIC_KEYS = {"hr@10", "hr@100", "ndcg@10", "examples"}
# Environment that would point Ray or recray elsewhere than this test says.
_INHERITED_OVERRIDES = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RECRAY_DATA_DIR",
    "RECRAY_TMDB_PATH",
    "RECRAY_RUNS_DIR",
)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(text: str | bytes | None, chars: int = 8000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-chars:]


def _processes_with_marker(marker: str) -> list[int]:
    """Pids whose environment holds `marker`: the head and all it started."""
    needle = marker.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _die_with_parent() -> None:
    """Run in the head's process before exec: SIGTERM it when pytest dies.

    So a killed test run (a CI timeout) still stops the head, which then
    stops everything it started.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass(frozen=True)
class LocalHead:
    """A running local head and how to reach it."""

    dashboard_url: str
    token: str
    temp_dir: Path
    env: dict[str, str]

    def ray(
        self, *args: str, token: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the `ray` CLI against this head, with `token` if given."""
        env = dict(self.env, RAY_AUTH_TOKEN=token or self.token)
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def get(self, path: str, token: str | None) -> int:
        """HTTP status of a GET on the dashboard, with `token` as bearer."""
        request = urllib.request.Request(self.dashboard_url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code


def _wait_until_ready(head: LocalHead, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"`ray start --head` exited with {process.returncode}:\n"
                f"{_tail(log.read_text())}"
            )
        # `ray start` writes the address file once the node is up; the job API
        # answers once the dashboard is.
        try:
            if (head.temp_dir / "ray_current_cluster").is_file() and head.get(
                "/api/jobs/", head.token
            ) == 200:
                return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(
        f"The local head's job API did not answer within {HEAD_START_TIMEOUT_S} s:\n"
        f"{_tail(log.read_text())}"
    )


def _stop(process: subprocess.Popen, marker: str) -> None:
    """Stop the head and every process it started, and nothing else."""
    # On SIGTERM, `ray start --block` stops the processes it started.
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=HEAD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    # Workers run in process groups of their own and leave once the raylet is
    # gone; anything still carrying this head's marker after that is killed.
    deadline = time.monotonic() + 30
    while _processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in _processes_with_marker(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def local_head() -> Iterator[LocalHead]:
    """A token-auth Ray head on loopback: 4 logical CPUs, free ports, own temp dir."""
    ray_cli = VENV_BIN / "ray"
    if not ray_cli.is_file():
        pytest.fail(f"`{ray_cli}` is missing; run the tests with the venv's python.")

    token = uuid.uuid4().hex
    marker = f"RECRAY_TEST_HEAD={uuid.uuid4().hex}"
    # A short path: Ray's unix sockets live under it and have a length limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="recray-ray-", dir="/tmp"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _INHERITED_OVERRIDES
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # Ray turns `--node-ip-address 127.0.0.1` into the machine's routable
        # address and then listens on every interface. Its single-node mode
        # (the default on macOS and Windows) keeps every port on loopback.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        # Nothing to drain on SIGTERM (no Serve): skip the 30 s drain wait.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.update([marker.split("=", 1)])

    (
        gcs,
        dashboard,
        client,
        agent_http,
        agent_grpc,
        runtime_env_agent,
        metrics,
        node_manager,
        object_manager,
    ) = _free_ports(9)
    # Every port fixed: none of Ray's defaults (6379, 8265, 10001, 52365) that
    # a developer's cluster holds, and the agents' ports go to the raylet
    # directly rather than through port files it waits for (a wait that timed
    # out, with a raylet check failure, on a busy 2-core machine).
    command = [
        str(ray_cli), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1",
        "--port", str(gcs),
        "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env_agent),
        "--metrics-export-port", str(metrics),
        "--node-manager-port", str(node_manager),
        "--object-manager-port", str(object_manager),
        # Two train workers plus Ray Data tasks on a 2-core machine.
        "--num-cpus", "4",
        # Tiny data; the default (30% of memory) is far more than needed.
        "--object-store-memory", str(1_000_000_000),
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
    ]  # fmt: skip
    log = temp_dir / "head.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    head = LocalHead(f"http://127.0.0.1:{dashboard}", token, temp_dir, env)
    try:
        _wait_until_ready(head, process, log)
        yield head
    finally:
        _stop(process, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_head_address_is_loopback(local_head):
    address = (local_head.temp_dir / "ray_current_cluster").read_text().strip()
    assert address.startswith("127.0.0.1:"), address


def test_submit_with_wrong_token_is_refused(local_head):
    assert local_head.get("/api/jobs/", token=None) == 401
    assert local_head.get("/api/jobs/", token="not-the-token") == 403

    result = local_head.ray(
        "job", "submit",
        "--address", local_head.dashboard_url,
        "--", "python", "-c", "print('the wrong token got in')",
        token="not-the-token",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "the wrong token got in" not in output
    assert re.search(r"403|Forbidden|[Aa]uthenticat", output), output

    listed = local_head.ray("job", "list", "--address", local_head.dashboard_url)
    assert listed.returncode == 0, listed.stderr
    assert "the wrong token got in" not in listed.stdout


def test_submit_pipeline(local_head, tiny_movielens, tmdb_5000, tmp_path):
    runs_dir = tmp_path / "runs"
    submission_id = f"recray-submit-test-{uuid.uuid4().hex[:8]}"
    submit = [
        "job", "submit",
        "--address", local_head.dashboard_url,
        "--submission-id", submission_id,
        "--working-dir", str(REPO_ROOT),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
        "--",
        "python", "jobs/pipeline.py",
        "--name", "submit-test",
        "--runs-dir", str(runs_dir),
        "--data-dir", str(tiny_movielens),
        "--tmdb-path", str(tmdb_5000),
        "--cache-dir", str(tmp_path / "embeddings"),
        "--epochs", "1",
        "--batch-size", "16",
        "--num-workers", "2",
        "--cpus-per-worker", "1",
        "--max-history", "5",
    ]  # fmt: skip

    started = time.monotonic()
    try:
        result = local_head.ray(*submit, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        local_head.ray("job", "stop", "--address", local_head.dashboard_url,
                       submission_id)  # fmt: skip
        logs = local_head.ray(
            "job", "logs", "--address", local_head.dashboard_url, submission_id
        )
        pytest.fail(
            f"Job `{submission_id}` did not finish within {JOB_TIMEOUT_S} s. "
            f"Job logs:\n{_tail(logs.stdout)}\nSubmit output:\n{_tail(err.output)}"
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"`ray job submit` exited with {result.returncode} after "
        f"{time.monotonic() - started:.0f} s:\n{_tail(output)}"
    )

    metrics_path = runs_dir / "submit-test" / "metrics.json"
    assert metrics_path.is_file(), f"no {metrics_path}:\n{_tail(output)}"
    metrics = json.loads(metrics_path.read_text())
    for name in ("model", "popularity"):
        assert METRIC_KEYS <= set(metrics[name]), (name, metrics[name])
        assert metrics[name]["examples"] > 0

    logs = local_head.ray(
        "job", "logs", "--address", local_head.dashboard_url, submission_id
    )
    assert logs.returncode == 0, logs.stderr
    # Kept with pytest's temp folders for a look at what the job printed.
    (tmp_path / "job.log").write_text(logs.stdout)
    assert "Validation metrics" in logs.stdout
    assert re.search(r"^model\s+hr@10\s+hr@100\s+ndcg@10", logs.stdout, re.M)
    for name in ("model", "popularity"):
        assert re.search(rf"^{name}\s+\d", logs.stdout, re.M), name
