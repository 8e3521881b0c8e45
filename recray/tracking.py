"""Experiment tracking with ClearML, online or as an offline session.

A `Tracker` wraps one ClearML task: the run's configuration, its per-epoch
metrics, a final metrics table and artifact files. `TrackingConfig.clearml`
picks where it goes:

- `auto`: the ClearML server when one is configured (`CLEARML_API_HOST`, or
  `api.api_server` in a `clearml.conf`) with credentials and it answers
  `/debug.ping`; otherwise an offline session, with a log line saying why.
- `offline`: always an offline session. ClearML writes it under
  `<output_dir>/clearml/offline/<task id>/` and zips it on close; upload it
  later with `clearml.Task.import_offline_session(zip)`.
- `off`: no task at all.

Secrets never reach ClearML: the task does not capture argv, stdout, the
environment or frameworks, and every value logged goes through `redact`,
which masks keys that look like credentials (`*key*`, `*secret*`, `*token*`,
`*password*`) and any text that holds the value of such an environment
variable (e.g. `OPENAI_API_KEY`, `CLEARML_API_SECRET_KEY`).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recray.config import TrackingConfig

logger = logging.getLogger(__name__)

REDACTED = "***"
# Whole words of a name, so that `tokens_per_minute` and `key_dim` stay
# readable while `OPENAI_API_KEY`, `api_key_file` and `auth_token` are masked.
_SECRET_WORDS = {"secret", "token", "password", "passwd", "credential", "apikey"}
_SECRET_SUFFIXES = {"key", "credentials"}
# Shorter values would mask ordinary words and numbers.
_MIN_SECRET_LENGTH = 6
PING_TIMEOUT_S = 3.0
# Everything `Task.init(auto_connect_frameworks=...)` can hook, all turned off.
_FRAMEWORKS = (
    "matplotlib",
    "tensorflow",
    "tensorboard",
    "pytorch",
    "xgboost",
    "scikit",
    "fastai",
    "lightgbm",
    "hydra",
    "detect_repository",
    "tfdefines",
    "joblib",
    "megengine",
    "catboost",
    "gradio",
)


def _is_secret_name(name: str) -> bool:
    """Whether a variable or setting of this name may hold a credential."""
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]
    if _SECRET_WORDS.intersection(words):
        return True
    # `key` names a credential as the last word (`access_key`) or before
    # `file`/`path` (`api_key_file`), never as in `key_dim`.
    return any(
        word in _SECRET_SUFFIXES
        and (index == len(words) - 1 or words[index + 1] in ("file", "path"))
        for index, word in enumerate(words)
    )


def _secret_values() -> list[str]:
    """Values of environment variables whose names look like credentials."""
    values = {
        value
        for name, value in os.environ.items()
        if _is_secret_name(name) and len(value) >= _MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact(values: Any, secrets: Iterable[str] | None = None) -> Any:
    """Mask credentials in a nested structure of dicts, lists and scalars.

    Args:
        values: What is about to be logged.
        secrets: Strings to mask wherever they appear; by default the values
            of credential-like environment variables.

    Returns:
        A copy with credential-like keys' values and every secret replaced
        by `***`.
    """
    secrets = list(_secret_values() if secrets is None else secrets)

    def clean(value: Any, key: str = "") -> Any:
        if key and _is_secret_name(key) and value not in (None, "", False):
            return REDACTED
        if isinstance(value, Mapping):
            return {name: clean(item, str(name)) for name, item in value.items()}
        if isinstance(value, list | tuple):
            return [clean(item) for item in value]
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, REDACTED)
        return value

    return clean(values)


def _server() -> tuple[str | None, str]:
    """The configured ClearML API host with credentials, or None and why not."""
    from clearml.backend_api import Session
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_HOST
    from clearml.config import config_obj

    configured = ENV_HOST.get() or config_obj.get("api.api_server", None)
    if not configured:
        return None, "no ClearML server is configured (`CLEARML_API_HOST`)"
    access_key = ENV_ACCESS_KEY.get() or config_obj.get(
        "api.credentials.access_key", None
    )
    if not access_key:
        return None, (
            f"the ClearML server `{configured}` has no credentials "
            "(`CLEARML_API_ACCESS_KEY`, `CLEARML_API_SECRET_KEY`)"
        )
    return Session.get_api_server_host(), ""


def _reachable(host: str) -> bool:
    """Whether anything answers HTTP at the ClearML API host."""
    try:
        with urllib.request.urlopen(f"{host}/debug.ping", timeout=PING_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # a server answered, if not with 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_mode(requested: str) -> str:
    """`online`, `offline` or `off` for a `TrackingConfig.clearml` setting.

    Raises:
        ValueError: An unknown setting.
    """
    if requested not in ("auto", "offline", "off"):
        raise ValueError(
            f"`clearml` must be `auto`, `offline` or `off`, got `{requested}`."
        )
    if requested != "auto":
        return requested
    host, reason = _server()
    if host is None:
        logger.info("ClearML: %s; writing an offline session.", reason)
        return "offline"
    if not _reachable(host):
        logger.warning(
            "ClearML: the server `%s` does not answer; writing an offline "
            "session instead.",
            host,
        )
        return "offline"
    return "online"


class Tracker:
    """One ClearML task: config, per-epoch scalars, tables and artifacts."""

    def __init__(
        self,
        mode: str,
        project: str,
        task_name: str,
        output_dir: Path,
        parent: str | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Start the task.

        Args:
            mode: `online` or `offline` (see `resolve_mode`).
            project: ClearML project.
            task_name: Task name, e.g. the run or trial name.
            output_dir: An offline session goes to `output_dir/clearml/`.
            parent: Id of the parent task (a search's task for a trial).
            tags: Task tags.
        """
        from clearml import Task

        self.mode = mode
        self._offline_zip: Path | None = None
        # ClearML keeps offline sessions under its cache folder; this one
        # lives in the run folder, beside what it describes.
        self._previous_cache = os.environ.get("CLEARML_CACHE_DIR")
        self._previous_env_log = os.environ.get("CLEARML_LOG_ENVIRONMENT")
        if mode == "offline":
            os.environ["CLEARML_CACHE_DIR"] = str((output_dir / "clearml").resolve())
        # A clearml.conf may ask for environment variables to be logged; a
        # name pattern that no variable has turns that off.
        os.environ["CLEARML_LOG_ENVIRONMENT"] = "RECRAY_NO_ENVIRONMENT_LOGGED"
        Task.set_offline(mode == "offline")
        # ClearML's default on Linux reports through a forked subprocess,
        # which takes ~10 s to drain on close and forks inside Ray workers;
        # a thread does the same here. No public switch exists.
        Task._report_subprocess_enabled = False
        # Task.init records "pid:task id" here for forked children. A Ray
        # worker inherits the driver's value through the raylet's
        # environment; ClearML would then take this process for a child of
        # the driver's task and hand back a stub task that logs nothing.
        for inherited in ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID"):
            if not os.environ.get(inherited, "").startswith(f"{os.getpid()}:"):
                os.environ.pop(inherited, None)
        self.task = Task.init(
            project_name=project,
            task_name=task_name,
            tags=list(tags) or None,
            reuse_last_task_id=False,
            continue_last_task=False,
            auto_connect_arg_parser=False,
            # No framework hooks, and no repository or package scan: that
            # scan reads the uncommitted diff and can take minutes.
            auto_connect_frameworks=dict.fromkeys(_FRAMEWORKS, False),
            auto_resource_monitoring=False,
            auto_connect_streams=False,
        )
        if parent:
            self.task.set_parent(parent)
        self._logger = self.task.get_logger()
        logger.info("ClearML task `%s` (%s): %s", task_name, mode, self.task.id)

    @property
    def task_id(self) -> str:
        return self.task.id

    def log_config(self, values: Mapping[str, Any], name: str = "config") -> None:
        """Log a configuration (e.g. `to_dict(PipelineConfig)`) as task settings."""
        self.task.connect_configuration(redact(dict(values)), name=name)

    def log_hyperparameters(self, values: Mapping[str, Any]) -> None:
        """Log flat hyperparameters, shown in ClearML's comparison views."""
        self.task.connect(redact(dict(values)), name="hyperparameters")

    def log_epochs(self, epochs: Iterable[Mapping[str, Any]]) -> None:
        """Log each epoch's numbers as scalars, one plot per metric.

        Args:
            epochs: Per-epoch reports with an `epoch` key (1-based), e.g.
                `TrainingResult.epochs`.
        """
        for report in epochs:
            epoch = int(report["epoch"])
            for name, value in report.items():
                if name != "epoch" and isinstance(value, int | float):
                    self._logger.report_scalar(
                        title=name, series=name, value=float(value), iteration=epoch
                    )

    def log_table(self, title: str, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Log a table, one row per key (e.g. a model), one column per metric;
        its numbers also become single values."""
        import pandas as pd

        table = pd.DataFrame.from_dict(redact(dict(rows)), orient="index")
        self._logger.report_table(title=title, series=title, table_plot=table)
        for row, values in rows.items():
            for column, value in values.items():
                if isinstance(value, int | float):
                    self._logger.report_single_value(f"{row}/{column}", float(value))

    def log_artifact(self, name: str, path: Path) -> None:
        """Attach a file or folder (copied into the session when offline)."""
        if path.exists():
            self.task.upload_artifact(name, artifact_object=path, wait_on_upload=True)
        else:
            logger.warning("ClearML: artifact `%s` not found at %s", name, path)

    def close(self) -> Path | None:
        """Finish the task; return the offline session's zip, if offline."""
        offline_dir = self.task.get_offline_mode_folder()
        self.task.close()
        for name, value in (
            ("CLEARML_CACHE_DIR", self._previous_cache),
            ("CLEARML_LOG_ENVIRONMENT", self._previous_env_log),
        ):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if offline_dir is None:
            return None
        self._offline_zip = Path(f"{offline_dir}.zip")
        logger.info("ClearML offline session: %s", self._offline_zip)
        return self._offline_zip


def start(
    config: TrackingConfig,
    task_name: str,
    output_dir: Path,
    parent: str | None = None,
    tags: Iterable[str] = (),
) -> Tracker | None:
    """A `Tracker` as `config` asks, or None when tracking is `off`.

    A failure to start ClearML (a broken `clearml.conf`, say) is logged and
    the run goes on untracked: tracking must never stop a training run.
    """
    try:
        mode = resolve_mode(config.clearml)
    except ValueError:
        raise  # a setting other than auto, offline or off
    except Exception:  # noqa: BLE001 - e.g. an unreadable clearml.conf
        logger.exception("ClearML settings unreadable; the run goes on untracked.")
        return None
    if mode == "off":
        return None
    try:
        return Tracker(
            mode, config.clearml_project, task_name, output_dir, parent, tags
        )
    except Exception:  # noqa: BLE001 - any ClearML failure leaves the run going
        logger.exception("ClearML could not start; the run goes on untracked.")
        return None
