"""The search space, a trial's config, and the static report, without Ray."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from recray.config import PipelineConfig
from recray.tuning.report import TrialSummary, rank_trials, write_report
from recray.tuning.space import PARAMETERS, apply_parameters, search_space


def test_every_searched_parameter_sets_a_config_field():
    assert set(search_space()) == set(PARAMETERS)
    sampled = {
        "num_heads": np.int64(4),
        "key_dim": 16,
        "dense_units": 64,
        "dropout": np.float64(0.25),
        "pooling": "max",
        "trainable_embeddings": True,
        "learning_rate": 0.002,
    }
    config = apply_parameters(PipelineConfig(), sampled)
    assert config.model.num_heads == 4 and type(config.model.num_heads) is int
    assert config.model.pooling == "max" and config.model.trainable_embeddings
    assert config.model.dropout == 0.25 and config.train.learning_rate == 0.002
    # Everything else stays as it was.
    assert config.model.output_dim == PipelineConfig().model.output_dim


def test_an_unknown_parameter_is_refused_by_name():
    with pytest.raises(ValueError, match="num_layers"):
        apply_parameters(PipelineConfig(), {"num_layers": 3})


def _trial(trial_id: str, values: list[float], **parameters) -> TrialSummary:
    history = [
        {"epoch": epoch, "val_hr@100": value, "val_loss": 5.0 - value}
        for epoch, value in enumerate(values, start=1)
    ]
    return TrialSummary(trial_id, "TERMINATED", parameters, history)


def test_trials_rank_by_their_last_epoch_and_unreported_ones_come_last():
    early_peak = _trial("a", [0.5, 0.1], pooling="max")
    steady = _trial("b", [0.2, 0.3], pooling="average")
    failed = TrialSummary("c", "ERROR", {"pooling": "max"}, [], error="boom")
    ranked = rank_trials([failed, early_peak, steady], "val_hr@100")
    assert [trial.trial_id for trial in ranked] == ["b", "a", "c"]
    assert math.isnan(failed.final("val_hr@100")) and failed.epochs == 0


def test_report_holds_table_plots_and_errors(tmp_path: Path):
    trials = [
        _trial("trial_1", [0.1, 0.2], learning_rate=1e-3, pooling="max"),
        _trial("trial_2", [0.3], learning_rate=3e-3, pooling="average"),
        TrialSummary("trial_3", "ERROR", {"learning_rate": 5e-4}, error="OOM <x>"),
    ]
    path = write_report(
        tmp_path / "report.html",
        trials,
        "val_hr@100",
        ["learning_rate", "pooling"],
        title="search",
        notes=["a note"],
    )
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 2
    # The best trial heads the table; the error is escaped, not markup.
    assert page.index("trial_2") < page.index("trial_1")
    assert "OOM &lt;x&gt;" in page and "a note" in page
