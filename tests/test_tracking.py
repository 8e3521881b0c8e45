"""ClearML tracking: offline sessions hold the scalars, never the secrets."""

from __future__ import annotations

import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from recray import pipeline, tracking
from recray.config import PipelineConfig, TrackingConfig, save_yaml

SECRET = "sk-test-d0n0tl0g-4f8a2c"
CLEARML_SECRET = "clearml-s3cr3t-9b7e1d"


@pytest.fixture
def clearml_env(tmp_path: Path, monkeypatch):
    """No ClearML server or config file, and secrets in the environment."""
    for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", CLEARML_SECRET)
    # A clearml.conf or the environment may ask to log every variable.
    monkeypatch.setenv("CLEARML_LOG_ENVIRONMENT", "*")


def _session(zip_path: Path) -> dict[str, str]:
    with zipfile.ZipFile(zip_path) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


def _metrics_events(files: dict[str, str]) -> list[dict]:
    events = []
    for line in files["metrics.jsonl"].splitlines():
        if line.strip():
            chunk = json.loads(line)
            events += chunk if isinstance(chunk, list) else [chunk]
    return events


def test_redact_masks_credential_keys_and_secret_values():
    values = {
        "api_key": "abc123456",
        "nested": {"OPENAI_TOKEN": "x" * 10, "path": f"/tmp/{SECRET}/x"},
        "items": [SECRET, 3],
        "learning_rate": 0.001,
        "use_key_frames": False,
        "key_dim": 32,
        "tokens_per_minute": 200_000,
        "max_tokens_per_request": 300_000,
        "api_key_file": "/home/me/.openai-key",
        "CLEARML_API_SECRET_KEY": "s3cr3t-value",
        "auth_token": "t0ken-value",
    }
    cleaned = tracking.redact(values, secrets=[SECRET])
    assert cleaned == {
        "api_key": "***",
        "nested": {"OPENAI_TOKEN": "***", "path": "/tmp/***/x"},
        "items": ["***", 3],
        "learning_rate": 0.001,
        "use_key_frames": False,
        "key_dim": 32,
        "tokens_per_minute": 200_000,
        "max_tokens_per_request": 300_000,
        "api_key_file": "***",
        "CLEARML_API_SECRET_KEY": "***",
        "auth_token": "***",
    }


def test_no_server_configured_means_offline(clearml_env):
    assert tracking.resolve_mode("auto") == "offline"
    assert tracking.resolve_mode("off") == "off"
    with pytest.raises(ValueError, match="`clearml`"):
        tracking.resolve_mode("sometimes")


class _Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server hook's name
        self.send_response(200 if self.path == "/debug.ping" else 404)
        self.end_headers()
        self.wfile.write(b'{"meta": {}, "data": {}}')

    def log_message(self, *args):
        pass


def test_a_configured_server_is_used_only_when_it_answers(clearml_env, monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        monkeypatch.setenv("CLEARML_API_HOST", f"http://127.0.0.1:{port}")
        # A host without credentials is not usable.
        assert tracking.resolve_mode("auto") == "offline"
        monkeypatch.setenv("CLEARML_API_ACCESS_KEY", "access-key-1234")
        assert tracking.resolve_mode("auto") == "online"
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listens there any more.
    assert tracking.resolve_mode("auto") == "offline"


def test_a_pipeline_run_writes_an_offline_session_with_its_scalars(
    clearml_env, tmp_path: Path
):
    config = PipelineConfig(
        name="tracked",
        runs_dir=tmp_path,
        tracking=TrackingConfig(clearml="auto"),
    )
    paths = pipeline.RunPaths(config.run_dir)
    paths.root.mkdir()
    save_yaml(config, paths.config)
    epochs = [
        {"epoch": 1, "loss": 5.0, "val_loss": 5.5},
        {"epoch": 2, "loss": 4.0, "val_loss": 4.8},
    ]
    paths.training.write_text(json.dumps(epochs))
    metrics = {
        "model": {"hr@10": 0.07, "hr@100": 0.31, "examples": 100},
        "popularity": {"hr@10": 0.04, "hr@100": 0.2, "examples": 100},
    }
    paths.metrics.write_text(json.dumps(metrics))

    # The hooks `pipeline.run` calls around and after its stages.
    tracker = pipeline.start_tracking(config, paths)
    assert tracker is not None and tracker.mode == "offline"
    pipeline.track_stage(tracker, "train", paths)
    pipeline.track_stage(tracker, "evaluate", paths)
    zip_path = tracker.close()

    assert zip_path is not None and zip_path.is_file()
    assert zip_path.is_relative_to(paths.root / "clearml")
    files = _session(zip_path)
    events = _metrics_events(files)
    scalars = {
        (e["metric"], e["iter"]): e["value"]
        for e in events
        # Single values (the metrics table's numbers) sit at a negative iteration.
        if e["type"] == "training_stats_scalar" and e["iter"] >= 0
    }
    assert scalars == {
        ("loss", 1): 5.0,
        ("loss", 2): 4.0,
        ("val_loss", 1): 5.5,
        ("val_loss", 2): 4.8,
    }
    tables = [e for e in events if e["type"] == "plot"]
    assert any("popularity" in e["plot_str"] for e in tables)
    task = json.loads(files["task.json"])
    configuration = json.dumps(task.get("configuration", {}))
    assert "tracked" in configuration and "learning_rate" in configuration
    artifacts = [name for name in files if "/artifacts/" in name]
    assert any(name.endswith("metrics.json") for name in artifacts)
    assert any(name.endswith("config.yaml") for name in artifacts)

    everything = "\n".join(files.values())
    assert SECRET not in everything
    assert CLEARML_SECRET not in everything
