"""Connecting to Ray the same way from jobs, tests and benchmarks.

Every Ray worker that may import TensorFlow needs `TF_USE_LEGACY_KERAS=1`
before the import, so the runtime environment carries it to all of them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import ray
import ray.data

logger = logging.getLogger(__name__)

WORKER_ENV_VARS = {
    "TF_USE_LEGACY_KERAS": "1",
    # TensorFlow's C++ start-up chatter drowns the job's own log lines.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # The packaged sentence-transformers weights live on disk; never reach a hub.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def runtime_env() -> dict[str, Any]:
    """Return the runtime environment every recray Ray worker needs."""
    return {"env_vars": dict(WORKER_ENV_VARS)}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a Ray cluster, or start a local one, with recray's workers' env.

    Inside `ray job submit` the job already runs on a cluster, and `address`
    stays unset so that Ray finds it (`RAY_ADDRESS`). A local cluster started
    here binds its dashboard to 127.0.0.1 only.

    Args:
        address: Ray address (`auto`, `ray://...`), or None for the default.
        num_cpus: CPUs of a new local cluster; ignored when connecting.
    """
    for name, value in WORKER_ENV_VARS.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env())
    else:
        ray.init(
            num_cpus=num_cpus,
            runtime_env=runtime_env(),
            dashboard_host="127.0.0.1",
        )
    # Ray Data's progress bars turn into a flood of log lines without a
    # terminal; keep them for people watching one.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    resources = ray.cluster_resources()
    logger.info(
        "Ray cluster: %s CPUs, %s GPUs",
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )
