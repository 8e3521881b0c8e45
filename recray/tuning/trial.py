"""One trial of a search: a TensorflowTrainer run inside a Tune function.

Ray Train V2 composes with Tune this way: the Tune trial runs a small driver
function that starts its own TensorflowTrainer (its workers get the CPUs and
GPUs of the trial's `ScalingConfig`), and `TuneReportCallback` passes every
epoch's report from the trainer to Tune, so ASHA sees `val_hr@100` per epoch.

The trainer keeps its checkpoints under the trial's folder (`train/`). A
trial that Tune restores (after a driver crash or a failure) runs this again
with `resume=True`: Ray Train finds its run state there and the workers go on
from the last epoch's checkpoint instead of starting over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.data
from ray import tune

from recray import pipeline
from recray.config import PipelineConfig, from_dict
from recray.tuning.space import apply_parameters
from recray.tuning.validation import ValidationSample

TRAIN_DIR = "train"


def trial_dirname(trial_id: str) -> str:
    """The folder of a trial in the search's experiment folder."""
    return f"trial_{trial_id}"


def run_trial(
    parameters: dict[str, Any],
    base: dict[str, Any],
    sample: ValidationSample,
    experiment_dir: str,
) -> None:
    """Train one sampled configuration, reporting each epoch to Tune.

    Args:
        parameters: The trial's sample of the search space.
        base: `to_dict` of the search's `PipelineConfig`, with the per-trial
            number of workers already set.
        sample: The validation examples every epoch scores for HR@100.
        experiment_dir: The search's folder in the run folder. The trial's
            checkpoints go to its trial folder there, not to Tune's
            per-session working folder, so that a restored trial, in a
            new Ray session, finds them.
    """
    # Imported here: the trial process, not the Tune driver, loads Ray Train.
    from ray.tune.integration.ray_train import TuneReportCallback

    from recray.training.trainer import train as fit_towers

    # Progress bars of a trial's Ray Data reads flood the driver's log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = apply_parameters(from_dict(PipelineConfig, base), parameters)
    context = tune.get_context()
    trial_dir = Path(experiment_dir) / trial_dirname(context.get_trial_id())
    trial_dir.mkdir(parents=True, exist_ok=True)
    paths = pipeline.RunPaths(config.run_dir)
    movie_vectors, counts, datasets, negative_rows = pipeline.training_inputs(
        config, paths
    )

    # Its epochs are read back from the checkpoints (see `search._summaries`):
    # Tune may stop this function as soon as the last epoch is reported.
    fit_towers(
        config.model,
        config.train,
        movie_vectors,
        counts,
        datasets,
        config.data.max_history,
        trial_dir / TRAIN_DIR,
        seed=config.data.split_seed,
        negative_rows=negative_rows,
        callbacks=[TuneReportCallback()],
        epoch_metrics=sample,
        resume=True,
    )
