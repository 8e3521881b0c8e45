"""Configuration: round trips, YAML files and errors a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from recray.cli import parse
from recray.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)


def test_round_trip_through_a_plain_dict_and_yaml(tmp_path: Path):
    config = PipelineConfig(
        name="x", model=ModelConfig(pooling="max"), eval=EvalConfig(ks=(5, 50))
    )
    assert from_dict(PipelineConfig, to_dict(config)) == config

    save_yaml(config, tmp_path / "config.yaml")
    assert load_yaml(PipelineConfig, tmp_path / "config.yaml") == config


def test_unknown_key_names_the_problem():
    with pytest.raises(ValueError, match="epochz"):
        from_dict(TrainConfig, {"epochz": 3})


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: DataConfig(validation_fraction=0.0), "validation_fraction"),
        (lambda: DataConfig(max_history=0), "max_history"),
        (lambda: ModelConfig(temperature=0.0), "temperature"),
        (lambda: ModelConfig(dropout=1.0), "dropout"),
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: EvalConfig(ks=()), "ks"),
    ],
)
def test_bad_settings_are_refused_by_name(build, setting):
    with pytest.raises(ValueError, match=f"`{setting}`"):
        build()


def test_flags_override_a_yaml_file(tmp_path: Path):
    base = PipelineConfig(name="from-yaml", train=TrainConfig(epochs=7))
    save_yaml(base, tmp_path / "config.yaml")

    config, level = parse(
        [
            "--config",
            str(tmp_path / "config.yaml"),
            "--batch-size",
            "64",
            "--tmdb-path",
            "None",
            "--log-level",
            "debug",
        ],
        description="test",
    )

    assert config.name == "from-yaml"
    assert config.train.epochs == 7
    assert config.train.batch_size == 64
    assert config.data.tmdb_path is None
    assert level == "DEBUG"
