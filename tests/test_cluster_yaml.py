"""cluster.yaml: valid for the Ray cluster launcher and set up the way recray runs.

The schema is the one the installed Ray ships, so a Ray upgrade that changes
the launcher's format shows up here rather than at `ray up`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


def _ray_schema_path() -> Path:
    # find_spec locates the package without importing Ray.
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        pytest.fail("Ray is not installed; run `make venv`.")
    return Path(spec.origin).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    path = _ray_schema_path()
    if not path.is_file():
        pytest.fail(f"Ray's cluster schema is missing at `{path}`.")
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _start_commands(cluster: dict[str, Any], key: str) -> list[str]:
    commands = [command for command in cluster[key] if "ray start" in command]
    assert commands, f"`{key}` has no `ray start` command"
    return commands


def test_cluster_yaml_matches_ray_schema(cluster, validator):
    errors = sorted(validator.iter_errors(cluster), key=lambda error: error.path)
    assert not errors, "\n".join(
        f"{'/'.join(map(str, error.path)) or '<root>'}: {error.message}"
        for error in errors
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda config: config.update(max_workers="many"), "'many' is not of type"),
        (lambda config: config.update(cluster_nmae="typo"), "cluster_nmae"),
        (
            lambda config: config["available_node_types"]["cpu_worker"].pop(
                "node_config"
            ),
            "'node_config' is a required property",
        ),
        (
            lambda config: config["available_node_types"]["gpu_worker"][
                "resources"
            ].update(GPU="one"),
            "'one' is not of type 'integer'",
        ),
        (
            lambda config: config["available_node_types"]["gpu_worker"][
                "docker"
            ].update(image="x"),
            "Additional properties are not allowed ('image' was unexpected)",
        ),
    ],
    ids=[
        "max-workers-not-integer",
        "unknown-top-level-key",
        "node-type-no-config",
        "gpu-count-not-integer",
        "gpu-docker-unknown-key",
    ],
)
def test_schema_rejects_broken_copies(cluster, validator, mutate, expected):
    broken = copy.deepcopy(cluster)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(expected)):
        validator.validate(broken)


def test_head_and_cpu_worker_types(cluster):
    node_types = cluster["available_node_types"]
    assert cluster["head_node_type"] in node_types

    worker = node_types["cpu_worker"]
    assert worker["min_workers"] == 0
    assert 1 <= worker["max_workers"] <= cluster["max_workers"]
    assert worker["node_config"]["InstanceType"]
    assert "GPU" not in worker["resources"]


def test_gpu_worker_type(cluster):
    node_types = cluster["available_node_types"]
    worker = node_types["gpu_worker"]
    assert worker["min_workers"] == 0
    assert 1 <= worker["max_workers"] <= cluster["max_workers"]
    assert worker["resources"]["GPU"] >= 1
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))
    # Its own CUDA image, while the other node types keep the CPU image.
    assert worker["docker"]["worker_image"].endswith("-gpu")
    assert cluster["docker"]["image"].endswith("-cpu")
    assert "docker" not in node_types["cpu_worker"]


@pytest.mark.parametrize("node_type", [None, "gpu_worker"], ids=["all", "gpu"])
def test_setup_commands_install_the_project(cluster, node_type):
    # The checkout is mounted from the repository root ("." where `ray up` runs).
    project = next(
        remote for remote, local in cluster["file_mounts"].items() if local == "."
    )
    # A node type's own worker_setup_commands replace the global ones.
    commands = (
        cluster["setup_commands"]
        if node_type is None
        else cluster["available_node_types"][node_type]["worker_setup_commands"]
    )
    setup = " ".join(commands)

    assert re.search(rf"pip install .*-r {re.escape(project)}/requirements\.txt", setup)
    assert re.search(rf"pip install .*-e {re.escape(project)}(\s|$)", setup)
    assert "chmod 600 ~/.ray/auth_token" in setup
    assert "export RAY_AUTH_MODE=token" in setup
    if node_type == "gpu_worker":
        # PyPI's torch wheel is the CUDA one; the CPU index must not be used.
        assert "download.pytorch.org/whl/cpu" not in setup
        assert "tensorflow[and-cuda]==" in setup


def test_start_commands_enable_token_auth(cluster):
    token_path = "~/.ray/auth_token"
    assert cluster["file_mounts"].get(token_path) == token_path

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in _start_commands(cluster, key):
            assert "RAY_AUTH_MODE=token" in command, key
            assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in command, key

    (head,) = _start_commands(cluster, "head_start_ray_commands")
    assert "--head" in head
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head)


def test_ray_launcher_accepts_cluster_yaml(cluster):
    # The launcher's own checks after filling in the AWS defaults, as `ray up`
    # runs them. These helpers are private Ray API, so a move is a skip here.
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as err:
        pytest.skip(f"Ray moved its launcher config helpers: {err}")

    validate_config(prepare_config(copy.deepcopy(cluster)))
