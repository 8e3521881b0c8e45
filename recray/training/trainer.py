"""Training the towers with Ray Train's TensorflowTrainer.

Each worker builds the retrieval model under MultiWorkerMirroredStrategy (a
lone worker under the default strategy), reads its dataset shard of the
training and validation examples, and after every epoch reports the losses
through `ray.train.report` with a checkpoint written by world rank 0. A
restarted run picks up from the last checkpoint.

A checkpoint holds the trainable weights (`weights.npz`), Adam's moments and
step count (`optimizer.npz`) and the epoch (`state.json`): the frozen text
embeddings are rebuilt from the run's embeddings, which keeps checkpoints
small even for 1536-dim OpenAI vectors. A worker that dies is restarted by
Ray Train (`FailureConfig`), and the run goes on from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer

from recray.config import ModelConfig, TrainConfig, from_dict, to_dict
from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class CrashOnce:
    """Kill one worker process once, to show that training survives it.

    The worker of `rank` sends itself SIGKILL `delay_s` seconds into the
    epoch after `after_epoch` (the others are then mid-epoch, waiting on it),
    unless `marker` exists; it writes `marker` (its pid) first, so the
    restarted run goes on. For tests and fault drills.
    """

    after_epoch: int
    marker: Path
    rank: int = 0
    delay_s: float = 3.0

    def strike(self, rank: int, epoch: int) -> None:
        """Kill this process if it is the chosen worker at the chosen epoch."""
        if rank != self.rank or epoch != self.after_epoch or self.marker.exists():
            return
        time.sleep(self.delay_s)
        self.marker.write_text(str(os.getpid()))
        logger.warning("Killing worker %d (pid %d): fault drill.", rank, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class TrainingResult:
    """Where the final weights are and what each epoch reported."""

    checkpoint_dir: Path
    epochs: list[dict[str, Any]]


def _optimizer_variables(model) -> list:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "variables"):
        return []
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def save_weights(
    model, directory: Path, epoch: int, metrics: dict[str, Any] | None = None
) -> None:
    """Write a model's trainable weights, its optimizer's state (Adam's
    moments and step, once it has any), the finished epoch count and that
    epoch's metrics (which outlive Tune's own result files, see
    `checkpointed_epochs`)."""
    arrays = {f"w{index}": w.numpy() for index, w in enumerate(model.trainable_weights)}
    np.savez(directory / WEIGHTS_FILE, **arrays)
    slots = _optimizer_variables(model)
    if slots:
        np.savez(
            directory / OPTIMIZER_FILE,
            **{f"v{index}": v.numpy() for index, v in enumerate(slots)},
        )
    state = {"epoch": epoch, "metrics": metrics or {}}
    (directory / STATE_FILE).write_text(json.dumps(state))


def checkpointed_epochs(storage_dir: Path) -> list[dict[str, Any]]:
    """Per epoch, the metrics saved with its checkpoint under `storage_dir`.

    A run resumed after a crash may hold two checkpoints of one epoch (one
    written just before the crash, never registered); the later one wins.
    Checkpoint folders are named by their time, so name order is time order.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    for state_file in sorted(Path(storage_dir).glob(f"checkpoint_*/{STATE_FILE}")):
        state = json.loads(state_file.read_text())
        by_epoch[state["epoch"]] = {"epoch": state["epoch"], **state.get("metrics", {})}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _load_optimizer(model, directory: Path) -> bool:
    """Restore the optimizer state `save_weights` wrote; False when none."""
    path = directory / OPTIMIZER_FILE
    optimizer = getattr(model, "optimizer", None)
    if not path.is_file() or optimizer is None or not hasattr(optimizer, "build"):
        return False
    with np.load(path) as arrays:
        saved = [arrays[f"v{index}"] for index in range(len(arrays.files))]
    if len(_optimizer_variables(model)) < len(saved):
        optimizer.build(model.trainable_variables)  # creates the moments
    slots = _optimizer_variables(model)
    if [a.shape for a in saved] != [tuple(v.shape) for v in slots]:
        logger.warning(
            "Optimizer state in `%s` does not fit this optimizer; Adam's "
            "moments restart from zero.",
            directory,
        )
        return False
    for variable, value in zip(slots, saved, strict=True):
        variable.assign(value)
    return True


def load_weights(model, directory: Path) -> int:
    """Restore weights written by `save_weights`; return the epochs finished.

    The optimizer's state is restored too when the model is compiled and the
    checkpoint holds it.

    Raises:
        ValueError: The checkpoint was written by a model of another shape.
    """
    with np.load(directory / WEIGHTS_FILE) as arrays:
        saved = [arrays[f"w{index}"] for index in range(len(arrays.files))]
    weights = model.trainable_weights
    shapes = [tuple(w.shape) for w in weights]
    if [a.shape for a in saved] != shapes:
        raise ValueError(
            f"Checkpoint `{directory}` holds weights of shapes "
            f"{[a.shape for a in saved]}, the model has {shapes}. Was it "
            "trained with another model config?"
        )
    for variable, value in zip(weights, saved, strict=True):
        variable.assign(value)
    _load_optimizer(model, directory)
    return json.loads((directory / STATE_FILE).read_text())["epoch"]


def _shard_to_tf(shard, batch_size: int, shuffle_seed: int | None):
    """A worker's dataset shard as a tf.data.Dataset of (features, target)."""
    import tensorflow as tf

    dataset = shard.to_tf(
        feature_columns=[HISTORY_IDS, HISTORY_RATINGS],
        label_columns=TARGET_ID,
        batch_size=batch_size,
        # Equal shards and whole batches give every worker the same number
        # of steps, which MultiWorkerMirroredStrategy's collectives need.
        drop_last=shuffle_seed is not None,
        local_shuffle_buffer_size=None if shuffle_seed is None else 100 * batch_size,
        local_shuffle_seed=shuffle_seed,
    )
    # Ray already gave this worker its own shard; tf.data must not shard again.
    options = _pipeline_options(tf)
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    return dataset.with_options(options)


def _pipeline_options(tf):
    """tf.data options of every training input pipeline, Ray Train's and the
    in-process reference's alike."""
    options = tf.data.Options()
    # With autotune on, an epoch often ended only when tf.data's autotune
    # thread next woke up, and it doubles its sleep each time (20.5 s, 41.0
    # s, ...): epochs of 23 s of work took exactly 41.0 s. Off, plain `fit`
    # shows no such epoch. The pipelines here only batch and prefetch.
    options.autotune.enabled = False
    return options


def _build_model(tf, loop_config: dict[str, Any], model_config, train_config):
    from recray.model.towers import RetrievalModel

    model = RetrievalModel(
        loop_config["movie_vectors_array"],
        model_config,
        loop_config["target_frequencies"],
        loop_config.get("negative_rows"),
    )
    model.build_towers(loop_config["max_history"])
    optimizer = tf.keras.optimizers.Adam(train_config.learning_rate)
    if train_config.mixed_precision:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer)
    return model


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: build, resume, fit epoch by epoch, report."""
    # TensorFlow loads here, in the worker, after `recray` (imported with
    # this module) has set TF_USE_LEGACY_KERAS; the runtime env sets it too.
    import tensorflow as tf

    model_config = from_dict(ModelConfig, loop_config["model"])
    train_config = from_dict(TrainConfig, loop_config["train"])
    loop_config = {
        **loop_config,
        "movie_vectors_array": ray.get(loop_config["movie_vectors"]),
    }
    context = ray.train.get_context()
    rank = context.get_world_rank()

    # One TensorFlow thread pool per reserved CPU: several workers on one node
    # would otherwise each start a thread per core and fight over them.
    tf.config.threading.set_intra_op_parallelism_threads(train_config.cpus_per_worker)
    tf.config.threading.set_inter_op_parallelism_threads(train_config.cpus_per_worker)
    if train_config.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    tf.keras.utils.set_random_seed(loop_config["seed"] + rank)
    gpus = len(tf.config.list_physical_devices("GPU"))
    # One worker has nothing to all-reduce with; the default strategy spares
    # it the collective ops (and runs the same model, loss and batches).
    if context.get_world_size() > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = _build_model(tf, loop_config, model_config, train_config)

    first_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory, strategy.scope():
            first_epoch = load_weights(model, Path(directory))

    crash: CrashOnce | None = loop_config.get("crash_once")
    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")
    for epoch in range(first_epoch, train_config.epochs):
        if crash is not None:
            crash.strike(rank, epoch)
        train_data = _shard_to_tf(
            train_shard, train_config.batch_size, loop_config["seed"] + epoch
        )
        started = time.perf_counter()
        fitted = model.fit(train_data, epochs=1, verbose=0)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        validation_data = _shard_to_tf(validation_shard, train_config.batch_size, None)
        validation = model.evaluate(validation_data, verbose=0, return_dict=True)
        validation_seconds = time.perf_counter() - started
        steps = int(model.optimizer.iterations.numpy())
        metrics = {
            "epoch": epoch + 1,
            "loss": float(fitted.history["loss"][-1]),
            "val_loss": float(validation["loss"]),
            "train_seconds": train_seconds,
            "validation_seconds": validation_seconds,
            "optimizer_steps": steps,
            "resumed_from_epoch": first_epoch,
            "gpus_per_worker": gpus,
        }
        epoch_metrics = loop_config.get("epoch_metrics")
        if epoch_metrics is not None and context.get_world_rank() == 0:
            metrics.update(epoch_metrics(model))

        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                save_weights(model, Path(directory), epoch + 1, metrics)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)


def _workers_flag(config: TrainConfig) -> str:
    return "--gpu-workers" if config.gpu_workers else "--num-workers"


def check_enough_examples(
    num_examples: int, config: TrainConfig, num_validation: int | None = None
) -> None:
    """Refuse a run in which some worker would get no whole batch to train on,
    or no example to validate on: under MultiWorkerMirroredStrategy that
    worker would fail or leave the others waiting.

    Raises:
        ValueError: Fewer training examples than `num_workers * batch_size`,
            or fewer validation examples than `num_workers`.
    """
    needed = config.workers * config.batch_size
    if num_examples < needed:
        raise ValueError(
            f"{num_examples} training examples cannot fill one batch of "
            f"{config.batch_size} on each of {config.workers} workers "
            f"({needed} needed). Lower `--batch-size` or "
            f"`{_workers_flag(config)}`, or use more data."
        )
    if num_validation is not None and num_validation < config.workers:
        raise ValueError(
            f"{num_validation} validation examples cannot give each of "
            f"{config.workers} workers one. Hold out more users "
            "(`--validation-fraction` or `--validation-users`), lower "
            f"`{_workers_flag(config)}`, or use more data."
        )


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    movie_vectors: np.ndarray,
    target_frequencies: np.ndarray,
    datasets: dict[str, ray.data.Dataset],
    max_history: int,
    storage_dir: Path,
    seed: int = 0,
    negative_rows: np.ndarray | None = None,
    crash_once: CrashOnce | None = None,
    *,
    callbacks: list | None = None,
    epoch_metrics: Callable[[Any], dict[str, float]] | None = None,
    resume: bool = False,
) -> TrainingResult:
    """Fit the towers on a Ray cluster and return the last checkpoint.

    Args:
        model_config: Towers and loss.
        train_config: Workers, batch size, epochs, learning rate.
        movie_vectors: [vocab_size, dim] text embeddings, row 0 zeros.
        target_frequencies: [vocab_size] training target counts (logQ).
        datasets: `train` and `validation` example datasets.
        max_history: History length of the examples.
        storage_dir: Where Ray Train keeps checkpoints; the run folder's
            `train/`, emptied first. Must be shared storage on a multi-node
            cluster.
        seed: Seeds weights and the per-epoch shuffle.
        negative_rows: Vocabulary rows of the catalogue softmax (all movies
            when unset; the cold-start split leaves its movies out).
        crash_once: Kill one worker once mid-training (fault drills).
        callbacks: Ray Train `UserCallback`s, e.g. Tune's
            `TuneReportCallback` when a Tune trial runs this.
        epoch_metrics: Called on world rank 0 with the model after every
            epoch; the metrics it returns join that epoch's report.
        resume: Keep `storage_dir` and continue from its last checkpoint
            (a restored Tune trial) instead of starting afresh.

    Raises:
        ValueError: Too few examples for the workers and batch size.
        ray.train.TrainingFailedError: Training failed beyond its retries.
    """
    # The examples are read before training starts: Ray Data's read tasks
    # need CPUs, and on a small cluster the workers hold them all, so reads
    # started by the workers would wait forever.
    # TODO(scale): at ml-25m this holds every example in the object store;
    # stream instead, with CPUs reserved for Ray Data.
    datasets = {name: dataset.materialize() for name, dataset in datasets.items()}
    check_enough_examples(
        datasets["train"].count(), train_config, datasets["validation"].count()
    )
    # Ray Train resumes a run it finds under its storage path; a new call must
    # not pick up the checkpoints of an earlier, other config. They go only
    # once this run is known to be able to start.
    if not resume:
        shutil.rmtree(storage_dir, ignore_errors=True)
    loop_config = {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        # One copy in the object store, read by every worker on its node.
        "movie_vectors": ray.put(movie_vectors.astype(np.float32)),
        "target_frequencies": target_frequencies,
        "max_history": max_history,
        "seed": seed,
        "negative_rows": negative_rows,
        "crash_once": crash_once,
        "epoch_metrics": epoch_metrics,
    }
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train_config.workers,
            use_gpu=train_config.on_gpu,
            resources_per_worker={"CPU": train_config.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=storage_dir.name,
            storage_path=str(storage_dir.resolve().parent),
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(
            f"Training finished without a checkpoint; see the Ray Train logs "
            f"under `{storage_dir}`."
        )
    epochs = sorted(
        (metrics for _, metrics in result.best_checkpoints),
        key=lambda metrics: metrics["epoch"],
    )
    return TrainingResult(Path(result.checkpoint.path), epochs)


def fit_in_process(
    model_config: ModelConfig,
    train_config: TrainConfig,
    movie_vectors: np.ndarray,
    target_frequencies: np.ndarray,
    examples: dict[str, np.ndarray],
    max_history: int,
    seed: int = 0,
    negative_rows: np.ndarray | None = None,
    epoch_metrics: Callable[[Any], dict[str, Any]] | None = None,
):
    """Fit the towers with plain Keras `fit` in this process, no Ray.

    The reference that `make bench-train` holds Ray Train against, and a
    quick way to compare model options on one machine. Same model, loss,
    optimizer, batch size and per-epoch shuffle as a Ray Train worker.

    Args:
        model_config: Towers and loss.
        train_config: Batch size, epochs, learning rate, `cpus_per_worker`
            (TensorFlow threads).
        movie_vectors: [vocab_size, dim] text embeddings, row 0 zeros.
        target_frequencies: [vocab_size] training target counts (logQ).
        examples: `history_ids`, `history_ratings` [n, max_history] and
            `target_id` [n].
        max_history: History length of the examples.
        seed: Seeds weights and the shuffle.
        negative_rows: Vocabulary rows of the catalogue softmax.
        epoch_metrics: Called with the model after every epoch; the metrics
            it returns join that epoch's.

    Returns:
        The trained `RetrievalModel` and, per epoch, `loss`,
        `train_seconds` and what `epoch_metrics` returned.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(train_config.cpus_per_worker)
    tf.config.threading.set_inter_op_parallelism_threads(train_config.cpus_per_worker)
    tf.keras.utils.set_random_seed(seed)
    loop_config = {
        "movie_vectors_array": movie_vectors.astype(np.float32),
        "target_frequencies": target_frequencies,
        "negative_rows": negative_rows,
        "max_history": max_history,
    }
    model = _build_model(tf, loop_config, model_config, train_config)
    check_enough_examples(len(examples[TARGET_ID]), train_config)
    features = {
        HISTORY_IDS: examples[HISTORY_IDS].astype(np.int32),
        HISTORY_RATINGS: examples[HISTORY_RATINGS].astype(np.float32),
    }
    data = tf.data.Dataset.from_tensor_slices(
        (features, examples[TARGET_ID].astype(np.int32))
    )
    epochs = []
    for epoch in range(train_config.epochs):
        batches = (
            data.shuffle(100 * train_config.batch_size, seed=seed + epoch)
            .batch(train_config.batch_size, drop_remainder=True)
            .prefetch(2)
            .with_options(_pipeline_options(tf))
        )
        started = time.perf_counter()
        fitted = model.fit(batches, epochs=1, verbose=0)
        metrics = {
            "epoch": epoch + 1,
            "loss": float(fitted.history["loss"][-1]),
            "train_seconds": time.perf_counter() - started,
        }
        if epoch_metrics is not None:
            metrics.update(epoch_metrics(model))
        epochs.append(metrics)
    return model, epochs
