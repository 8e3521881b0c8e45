"""The search space over the towers and how a sample becomes a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ray import tune

from recray.config import PipelineConfig

# Sampled hyperparameter -> the config section it sets.
PARAMETERS = {
    "num_heads": "model",
    "key_dim": "model",
    "dense_units": "model",
    "dropout": "model",
    "pooling": "model",
    "trainable_embeddings": "model",
    "learning_rate": "train",
}


def search_space() -> dict[str, Any]:
    """Tune's distributions for every entry of `PARAMETERS`."""
    return {
        "num_heads": tune.choice([1, 2, 4]),
        "key_dim": tune.choice([16, 32, 64]),
        "dense_units": tune.choice([64, 128, 256]),
        "dropout": tune.quniform(0.0, 0.3, 0.05),
        "pooling": tune.choice(["average", "max"]),
        "trainable_embeddings": tune.choice([False, True]),
        "learning_rate": tune.loguniform(3e-4, 3e-3),
    }


def apply_parameters(
    config: PipelineConfig, parameters: Mapping[str, Any]
) -> PipelineConfig:
    """`config` with a trial's sampled hyperparameters set.

    Raises:
        ValueError: A parameter that is not in `PARAMETERS`.
    """
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise ValueError(
            f"Unknown hyperparameters {unknown}; the search space has "
            f"{sorted(PARAMETERS)}."
        )
    sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for name, value in parameters.items():
        # Tune hands numpy scalars over; the YAML of the best config wants
        # plain Python values.
        sections[PARAMETERS[name]][name] = plain(value)
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **sections["model"]),
        train=dataclasses.replace(config.train, **sections["train"]),
    )


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds; anything else unchanged."""
    return value.item() if hasattr(value, "item") else value
