"""A Ray Tune search over the towers on a prepared run folder.

    runs/<name>/                      the run: ingest, embed, histories outputs
    runs/<name>/tune/<search>/        Tune's experiment folder (resumable)
        <trial>/                      per trial: Tune's result files and
                                      TensorBoard events (HParams), train/
                                      (Ray Train checkpoints), training.json,
                                      clearml/ (offline ClearML session)
        report.html                   the static report
        best.yaml                     the best trial's PipelineConfig
        clearml/                      the search's ClearML task, offline

Each trial trains through the TensorflowTrainer (see `recray.tuning.trial`),
ASHA stops the weak ones on validation HR@100, and `resume=True` restores an
interrupted search: unfinished and errored trials go on from their last
epoch's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from recray import pipeline, tracking
from recray.config import (
    PipelineConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
    from_dict,
    save_yaml,
    to_dict,
)
from recray.tuning.report import TrialSummary, rank_trials, write_report
from recray.tuning.space import PARAMETERS, apply_parameters, plain, search_space
from recray.tuning.trial import TRAIN_DIR, run_trial, trial_dirname
from recray.tuning.validation import sample_validation

logger = logging.getLogger(__name__)

TRAINING_FILE = "training.json"  # per trial: every epoch's metrics

METRIC = "val_hr@100"
PREPARE_STAGES = ("ingest", "embed", "histories")
TRACKED_MARK = "clearml_task.txt"


@dataclass(frozen=True)
class SearchResult:
    """Where a search's outputs are and how its best trial did."""

    experiment_dir: Path
    report: Path
    best_config: Path
    best_parameters: dict[str, Any]
    best_metric: float
    trials: list[TrialSummary]


def prepare_run(config: PipelineConfig, paths: pipeline.RunPaths) -> None:
    """Run the stages before `train` that the run folder lacks.

    Raises:
        ValueError: The run folder was prepared with other data settings.
    """
    outputs = {
        "ingest": paths.movie_texts,
        "embed": paths.movie_embeddings,
        "histories": paths.histories,
    }
    missing = [stage for stage in PREPARE_STAGES if not outputs[stage].exists()]
    if not missing and not pipeline.has_years_and_genres(paths.movie_texts):
        # Ingested before movie texts kept year and genres: ingest again.
        missing = list(PREPARE_STAGES)
    if not missing:
        pipeline.check_earlier_settings(config, paths, "train")
        logger.info("Reusing the prepared run folder %s", paths.root)
        return
    first = PREPARE_STAGES.index(missing[0])
    logger.info("Preparing %s: %s", paths.root, ", ".join(PREPARE_STAGES[first:]))
    pipeline.run(config, PREPARE_STAGES[first:])


# The CPU share of a trial's own process, which only drives its trainer (Tune
# refuses a trial of no resources at all).
DRIVER_CPUS = 0.01


def _trial_cpus(settings: TuneConfig, train: TrainConfig) -> float:
    """CPUs one trial reserves: its driver and its Ray Train workers."""
    return DRIVER_CPUS + settings.workers_per_trial * train.cpus_per_worker


def local_cluster_cpus(settings: TuneConfig, train: TrainConfig) -> int:
    """Logical CPUs of a local cluster: `num_cpus`, else the cores, but at
    least `max_concurrent` trials and one CPU for Ray Data reads."""
    if settings.num_cpus is not None:
        return settings.num_cpus
    needed = settings.max_concurrent * _trial_cpus(settings, train) + 1
    return max(os.cpu_count() or 1, math.ceil(needed))


def trial_concurrency(settings: TuneConfig, train: TrainConfig) -> int:
    """The most trials the cluster holds at once, at most `max_concurrent`.

    Raises:
        ValueError: Not even one trial fits the cluster.
    """
    resources = ray.cluster_resources()
    cpus = _trial_cpus(settings, train)
    fits = int(resources.get("CPU", 0) // cpus)
    if train.on_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // settings.workers_per_trial))
    if fits < 1:
        raise ValueError(
            f"A trial needs {settings.workers_per_trial} workers with "
            f"{train.cpus_per_worker} CPUs{' and 1 GPU' if train.on_gpu else ''} "
            f"each; the cluster has {resources}. Lower `--workers-per-trial` "
            "or `--cpus-per-worker`."
        )
    if fits < settings.max_concurrent:
        logger.warning(
            "`max_concurrent` %d lowered to %d: that many trials fit the "
            "cluster's CPUs and GPUs.",
            settings.max_concurrent,
            fits,
        )
    return min(fits, settings.max_concurrent)


def _history_keys(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: plain(value)
        for key, value in row.items()
        if key == "epoch" or key.startswith(("loss", "val_"))
    }


def _summaries(grid: tune.ResultGrid) -> list[TrialSummary]:
    from recray.training.trainer import checkpointed_epochs

    summaries = []
    for result in grid:
        frame = result.metrics_dataframe
        # Tune starts a restored trial's result files afresh, so after a
        # resume they hold only the epochs since; the trial's checkpoints
        # keep every epoch's metrics.
        epochs = checkpointed_epochs(Path(result.path) / TRAIN_DIR)
        if epochs:
            (Path(result.path) / TRAINING_FILE).write_text(
                json.dumps(epochs, indent=2) + "\n"
            )
        history = [_history_keys(row) for row in epochs]
        if not history and frame is not None and "epoch" in frame:
            # A resumed trial may report an epoch twice; keep the later one.
            frame = frame.dropna(subset=["epoch"]).drop_duplicates(
                subset="epoch", keep="last"
            )
            history = [
                _history_keys(row)
                for row in frame.sort_values("epoch").to_dict("records")
            ]
        summaries.append(
            TrialSummary(
                trial_id=Path(result.path).name,
                status="ERROR" if result.error else "TERMINATED",
                parameters={
                    name: plain(result.config[name])
                    for name in PARAMETERS
                    if name in result.config
                },
                history=history,
                error=str(result.error).splitlines()[0] if result.error else None,
            )
        )
    return summaries


def _trial_dirname(trial) -> str:
    """Short trial folders: `trial_<id>` instead of every parameter value."""
    return trial_dirname(trial.trial_id)


@ray.remote(num_cpus=0, max_calls=1)
def _track_trial(
    tracking_config: dict[str, Any],
    task_name: str,
    trial_dir: str,
    parent: str | None,
    summary: TrialSummary,
) -> str | None:
    """Log one finished trial as a ClearML task under the search's task.

    A Ray task of its own (`max_calls=1`: a fresh process each time), since
    ClearML holds one task per process and the trial's own process may be
    gone: ASHA stops trials by ending them.
    """
    tracker = tracking.start(
        from_dict(TrackingConfig, tracking_config),
        task_name,
        Path(trial_dir),
        parent=parent,
        tags=("trial", summary.status.lower()),
    )
    if tracker is None:
        return None
    tracker.log_hyperparameters(summary.parameters)
    tracker.log_epochs(summary.history)
    if summary.history:
        final = {k: v for k, v in summary.history[-1].items() if k != "epoch"}
        tracker.log_table("final metrics", {"model": final})
    training = Path(trial_dir) / TRAINING_FILE
    if training.is_file():
        tracker.log_artifact("training", training)
    task_id = tracker.task_id
    tracker.close()
    (Path(trial_dir) / TRACKED_MARK).write_text(task_id + "\n")
    return task_id


def _track_trials(
    config: PipelineConfig,
    experiment_dir: Path,
    parent: str | None,
    trials: list[TrialSummary],
) -> None:
    """A ClearML task per trial not tracked yet (a resumed search skips those
    an earlier run logged)."""
    if config.tracking.clearml == "off":
        return
    pending = []
    for trial in trials:
        trial_dir = experiment_dir / trial.trial_id
        if not (trial_dir / TRACKED_MARK).is_file():
            pending.append(
                _track_trial.remote(
                    to_dict(config.tracking),
                    f"{experiment_dir.name}/{trial.trial_id}",
                    str(trial_dir),
                    parent,
                    trial,
                )
            )
    ray.get(pending)


def run_search(
    config: PipelineConfig, settings: TuneConfig, resume: bool = False
) -> SearchResult:
    """Search the towers' hyperparameters; write the report and best config.

    Args:
        config: The run (its folder is prepared if needed) and the settings
            every trial starts from.
        settings: Trials, concurrency, ASHA and the HR@100 sample.
        resume: Restore the search of the same name in this run folder.

    Raises:
        FileExistsError: A search of that name exists and `resume` is off.
        FileNotFoundError: `resume` is on and there is no such search.
    """
    from recray.cluster import init_ray

    config = pipeline.resolve_paths(config)
    paths = pipeline.RunPaths(config.run_dir)
    storage = paths.root / "tune"
    experiment_dir = storage / settings.search_name
    restorable = tune.Tuner.can_restore(str(experiment_dir))
    if resume and not restorable:
        raise FileNotFoundError(
            f"No search to resume at `{experiment_dir}`; drop `--resume` to "
            "start it, or pass the `--search-name` and `--name` it ran with."
        )
    if not resume and experiment_dir.exists():
        raise FileExistsError(
            f"A search already exists at `{experiment_dir}`; pass `--resume` to "
            "finish it, or choose another `--search-name`."
        )

    # Before the stages: their `init_ray()` would start a cluster of every CPU.
    init_ray(num_cpus=local_cluster_cpus(settings, config.train))
    prepare_run(config, paths)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(
        config,
        # `--workers-per-trial` workers, on GPUs when `--gpu-workers` or
        # `--use-gpu` asks for GPUs at all.
        train=dataclasses.replace(
            config.train,
            num_workers=settings.workers_per_trial,
            use_gpu=config.train.on_gpu,
            gpu_workers=0,
        ),
    )
    vocab_size = pipeline._vocabulary(paths).size
    sample = sample_validation(
        paths, settings.eval_sample, settings.seed, vocab_size, config.eval.ks
    )
    logger.info("Each epoch scores %d validation examples for HR@100", len(sample))
    concurrency = trial_concurrency(settings, config.train)

    tracker = tracking.start(
        config.tracking, f"tune/{settings.search_name}", experiment_dir, tags=["search"]
    )
    try:
        if tracker is not None:
            tracker.log_config(to_dict(config))
            tracker.log_config(to_dict(settings), name="search")
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                base=to_dict(base),
                sample=sample,
                experiment_dir=str(experiment_dir),
            ),
            # The trial function only drives its TensorflowTrainer, whose
            # workers reserve the CPUs and GPUs themselves (`ScalingConfig`).
            resources={"CPU": DRIVER_CPUS},
        )
        if resume:
            logger.info("Resuming the search at %s", experiment_dir)
            tuner = tune.Tuner.restore(
                str(experiment_dir),
                trainable,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(),
                tune_config=tune.TuneConfig(
                    metric=METRIC,
                    mode="max",
                    scheduler=ASHAScheduler(
                        time_attr="epoch",
                        max_t=config.train.epochs,
                        grace_period=min(settings.grace_period, config.train.epochs),
                        reduction_factor=settings.reduction_factor,
                    ),
                    search_alg=BasicVariantGenerator(random_state=settings.seed),
                    num_samples=settings.num_samples,
                    max_concurrent_trials=concurrency,
                    reuse_actors=False,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=settings.search_name,
                    storage_path=str(storage),
                    failure_config=tune.FailureConfig(max_failures=1),
                ),
            )
        grid = tuner.fit()
        trials = _summaries(grid)
        result = _write_outputs(config, settings, experiment_dir, trials)
        _track_trials(
            config, experiment_dir, tracker.task_id if tracker else None, trials
        )
        if tracker is not None:
            tracker.log_table(
                "trials",
                {
                    t.trial_id: {METRIC: t.final(METRIC), "epochs": t.epochs}
                    for t in trials
                },
            )
            tracker.log_artifact("report", result.report)
            tracker.log_artifact("best_config", result.best_config)
    finally:
        if tracker is not None:
            tracker.close()
    return result


def _write_outputs(
    config: PipelineConfig,
    settings: TuneConfig,
    experiment_dir: Path,
    trials: list[TrialSummary],
) -> SearchResult:
    """The report, `best.yaml` and `trials.json` of a finished search.

    Raises:
        RuntimeError: No trial reported the metric.
    """
    ranked = rank_trials(trials, METRIC)
    if not ranked or math.isnan(ranked[0].final(METRIC)):
        raise RuntimeError(
            f"No trial of `{experiment_dir}` reported `{METRIC}`; see the "
            "trials' `error.txt` files there."
        )
    best = ranked[0]
    best_config = experiment_dir / "best.yaml"
    save_yaml(
        dataclasses.replace(
            apply_parameters(config, best.parameters),
            name=f"{config.name}-{settings.search_name}-best",
        ),
        best_config,
    )
    (experiment_dir / "trials.json").write_text(
        json.dumps([dataclasses.asdict(t) for t in ranked], indent=2, default=str)
    )
    report = write_report(
        experiment_dir / "report.html",
        trials,
        METRIC,
        list(PARAMETERS),
        title=f"recray search `{settings.search_name}` on run `{config.name}`",
        notes=[
            f"{len(trials)} trials, ASHA on {METRIC} (grace period "
            f"{settings.grace_period}, reduction factor "
            f"{settings.reduction_factor}, at most {config.train.epochs} epochs)",
            f"{METRIC}: seeded sample of {settings.eval_sample} validation "
            "examples ranked against the whole catalogue after every epoch",
            f"best: {best.trial_id}, {METRIC} = {best.final(METRIC):.4f}; "
            f"config in {best_config}",
            f"TensorBoard: tensorboard --logdir {experiment_dir}",
        ],
    )
    logger.info("Report: %s; best config: %s", report, best_config)
    return SearchResult(
        experiment_dir=experiment_dir,
        report=report,
        best_config=best_config,
        best_parameters=best.parameters,
        best_metric=best.final(METRIC),
        trials=ranked,
    )
