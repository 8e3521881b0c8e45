"""A whole search on tiny data: stopped mid-way, resumed, then its dashboards.

`jobs/tune.py` runs in a subprocess with its own local Ray cluster. Once a
trial has reported its first epoch the test kills the driver's whole process
group (driver, Ray cluster, trials) with SIGKILL, as a crash would; the second
call with `--resume` must finish every trial, and the trial that was cut off
must go on from its checkpoint rather than start again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from recray.cli import parse as parse_pipeline_flags
from recray.config import PipelineConfig, load_yaml
from recray.tuning.search import METRIC
from recray.tuning.space import PARAMETERS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
NUM_SAMPLES = 2
KILL_TIMEOUT_S = 600
RUN_TIMEOUT_S = 900


def _command(runs: Path, data: Path, tmdb: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "tune.py"),
        "--name",
        "tiny",
        "--runs-dir",
        str(runs),
        "--data-dir",
        str(data),
        "--tmdb-path",
        str(tmdb),
        "--cache-dir",
        str(runs / "cache"),
        "--max-history",
        "5",
        "--batch-size",
        "16",
        "--epochs",
        str(EPOCHS),
        "--num-samples",
        str(NUM_SAMPLES),
        # ASHA stops no trial early here: a trial it stopped at its first
        # rung before the kill has nothing to go on with after the resume.
        "--grace-period",
        str(EPOCHS),
        "--max-concurrent",
        "2",
        "--eval-sample",
        "50",
        "--num-cpus",
        "4",
        "--clearml",
        "auto",
        *extra,
    ]


def _environment(ray_tmp: Path, tmp: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("RAY_ADDRESS", None)
    environment["RAY_TMPDIR"] = str(ray_tmp)
    # No ClearML server: every task is an offline session.
    for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY"):
        environment.pop(name, None)
    environment["CLEARML_CONFIG_FILE"] = str(tmp / "no-clearml.conf")
    # Write the experiment state often, so a kill loses little.
    environment["TUNE_GLOBAL_CHECKPOINT_S"] = "2"
    return environment


def _kill_leftovers(marker: str) -> None:
    """SIGKILL processes of the killed cluster (their command line names its
    temp dir); only what this test started carries that path."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in command:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def _reported_epochs(trial_dir: Path) -> list[int]:
    results = trial_dir / "result.json"
    if not results.is_file():
        return []
    return [
        int(json.loads(line)["epoch"])
        for line in results.read_text().splitlines()
        if line.strip() and "epoch" in json.loads(line)
    ]


@pytest.fixture(scope="module")
def search(tiny_movielens, tmdb_5000, tmp_path_factory):
    """Start a search, kill it after a first epoch, then resume it."""
    tmp = tmp_path_factory.mktemp("tune")
    runs = tmp / "runs"
    ray_tmp = Path(f"/tmp/ray-i6t-{uuid.uuid4().hex[:6]}")
    environment = _environment(ray_tmp, tmp)
    experiment = runs / "tiny" / "tune" / "search"
    log = tmp / "first.log"

    with log.open("w") as output:
        first = subprocess.Popen(
            _command(runs, tiny_movielens, tmdb_5000),
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while time.monotonic() < deadline and first.poll() is None:
            reported = {
                trial.name: _reported_epochs(trial)
                for trial in experiment.glob("trial_*")
            }
            if any(reported.values()):
                break
            time.sleep(1)
        assert first.poll() is None, log.read_text()[-3000:]
        assert any(reported.values()), "no trial reported an epoch in time"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        _kill_leftovers(str(ray_tmp))
    cut_off = {
        name: epochs for name, epochs in reported.items() if max(epochs or [0]) < EPOCHS
    }

    try:
        resumed = subprocess.run(
            _command(runs, tiny_movielens, tmdb_5000, "--resume"),
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            start_new_session=True,
        )
    finally:
        _kill_leftovers(str(ray_tmp))
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    return experiment, cut_off, resumed.stdout


def test_resume_finishes_every_trial_from_its_checkpoint(search):
    experiment, cut_off, _ = search
    trials = json.loads((experiment / "trials.json").read_text())
    assert len(trials) == NUM_SAMPLES
    assert all(trial["status"] == "TERMINATED" for trial in trials)
    assert cut_off, "the kill came after every trial had finished"

    for trial in trials:
        epochs = [row["epoch"] for row in trial["history"]]
        # Every trial reached ASHA's first rung, in order, without gaps.
        assert epochs == list(range(1, len(epochs) + 1)) and epochs
        assert all(0.0 <= row[METRIC] <= 1.0 for row in trial["history"])
    histories = {trial["trial_id"]: trial["history"] for trial in trials}
    for name, before in cut_off.items():
        # Tune rewrites a restored trial's result.json; the history in
        # trials.json (from the checkpoints) still starts with the epochs
        # reported before the kill.
        after = [row["epoch"] for row in histories[name]]
        assert after[: len(before)] == before, (name, before, after)
        assert len(after) > len(before), f"{name} did not go on: {after}"
        training = json.loads((experiment / name / "training.json").read_text())
        assert [row["epoch"] for row in training] == after
        # The resumed run went on from a checkpoint at least as late as the
        # epochs seen before the kill; a restart from scratch would have
        # rewritten every epoch with `resumed_from_epoch` 0.
        last = max(before, default=0)
        assert max(row["resumed_from_epoch"] for row in training) >= last, training


def test_best_config_is_a_pipeline_config_the_train_command_accepts(search):
    experiment, _, stdout = search
    best = experiment / "best.yaml"
    assert str(best) in stdout
    config = load_yaml(PipelineConfig, best)
    flags, _ = parse_pipeline_flags(["--config", str(best)], "train")
    assert flags == config

    trials = json.loads((experiment / "trials.json").read_text())
    winner = trials[0]  # ranked best first
    assert winner["history"][-1][METRIC] == max(
        trial["history"][-1][METRIC] for trial in trials
    )
    sampled = winner["parameters"]
    assert set(sampled) == set(PARAMETERS)
    assert config.train.learning_rate == pytest.approx(sampled["learning_rate"])
    for name in set(PARAMETERS) - {"learning_rate"}:
        assert getattr(config.model, name) == sampled[name]


def test_report_is_one_offline_html_file(search):
    experiment, _, _ = search
    page = (experiment / "report.html").read_text()
    trials = json.loads((experiment / "trials.json").read_text())
    for trial in trials:
        assert trial["trial_id"] in page
    # A plot per section, embedded; nothing fetched from elsewhere.
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page
    for name in PARAMETERS:
        assert name in page


def test_tensorboard_has_an_hparams_summary_per_trial(search):
    from tensorboard.backend.event_processing.event_file_loader import (
        EventFileLoader,
    )

    experiment, _, _ = search
    for trial_dir in sorted(experiment.glob("trial_*")):
        plugins = set()
        scalars = set()
        for events in trial_dir.glob("events.out.tfevents.*"):
            for event in EventFileLoader(str(events)).Load():
                for value in event.summary.value:
                    plugins.add(value.metadata.plugin_data.plugin_name)
                    scalars.add(value.tag)
        assert "hparams" in plugins, trial_dir
        # TensorBoard tags allow no `@`: tensorboardX writes `_` instead.
        assert any(METRIC.replace("@", "_") in tag for tag in scalars), scalars


def _session(zip_path: Path) -> tuple[dict, list[dict]]:
    with zipfile.ZipFile(zip_path) as archive:
        task = json.loads(archive.read("task.json"))
        events = []
        for line in archive.read("metrics.jsonl").decode().splitlines():
            if line.strip():
                chunk = json.loads(line)
                events += chunk if isinstance(chunk, list) else [chunk]
    return task, events


def test_each_trial_is_a_clearml_task_under_the_search(search):
    experiment, _, _ = search
    searches = sorted((experiment / "clearml" / "offline").glob("*.zip"))
    assert searches, "no offline session of the search"
    parents = {_session(path)[0]["id"] for path in searches}
    trials = json.loads((experiment / "trials.json").read_text())
    epochs = {t["trial_id"]: [row["epoch"] for row in t["history"]] for t in trials}

    for trial_dir in sorted(experiment.glob("trial_*")):
        (zip_path,) = (trial_dir / "clearml" / "offline").glob("*.zip")
        task, events = _session(zip_path)
        assert task["parent"] in parents
        iterations = sorted(
            event["iter"]
            for event in events
            if event.get("type") == "training_stats_scalar"
            and event["metric"] == METRIC
        )
        assert iterations == epochs[trial_dir.name]
