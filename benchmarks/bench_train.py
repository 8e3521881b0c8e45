"""Training throughput: Ray Train with 1 and 2 CPU workers against plain Keras.

Trains the same towers on the same examples of ml-latest-small three ways in
one run: plain Keras `fit` in this process (the reference), then Ray Train's
TensorflowTrainer with 1 and with 2 CPU workers, then plain `fit` again. Each
is timed inside the training loop (`fit` only) and around the whole call
(start-up, Ray Data, validation and checkpoints included). Last, one training
step of a worker's batch is timed with the catalogue softmax and with
in-batch negatives (`step_ms`): the difference is the per-step work that
every worker repeats. Writes benchmarks/results/train.json with examples per
second and the ratios to the reference. The run folder (ingest, embed,
histories) is made first if absent.

Every run gets all of the machine's cores: plain `fit` and the 1-worker run
use that many TensorFlow threads, the 2-worker run half each. With fewer
threads than cores, a run's speed depends on how much of the idle cores the
runtime's other threads borrow, which is not what is being compared. The
reference runs before and after the Ray runs; their spread shows how much
the machine itself drifted, and the ratios use their mean.

    .venv/bin/python benchmarks/bench_train.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

import recray  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from recray import pipeline
from recray.cluster import init_ray
from recray.config import DataConfig, EmbeddingConfig, PipelineConfig, TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--name", default="bench-train")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared/data/movielens/ml-latest-small",
    )
    parser.add_argument(
        "--tmdb-path",
        type=Path,
        default=REPO.parent / "shared/data/tmdb/tmdb_5000_movies.csv",
    )
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")

    config = PipelineConfig(
        name=args.name,
        runs_dir=REPO / "runs",
        data=DataConfig(data_dir=args.data_dir, tmdb_path=args.tmdb_path),
        embedding=EmbeddingConfig(cache_dir=REPO / ".cache/embeddings"),
        train=TrainConfig(epochs=args.epochs, id_baseline=False),
    )
    init_ray(num_cpus=4)
    paths = pipeline.RunPaths(pipeline.resolve_paths(config).run_dir)
    if not (paths.examples / "train").is_dir():
        pipeline.run(config, ("ingest", "embed", "histories"))

    import ray

    from recray.training.trainer import fit_in_process, train

    # What the train stage fits on, read once for all three runs.
    vectors, counts, datasets, negative_rows = pipeline.training_inputs(config, paths)
    datasets = {split: dataset.materialize() for split, dataset in datasets.items()}
    examples = datasets["train"].take_batch(
        datasets["train"].count(), batch_format="numpy"
    )
    num_examples = len(examples["target_id"])
    results: dict = {
        "data": str(args.data_dir),
        "training_examples": num_examples,
        "epochs": args.epochs,
        "batch_size_per_worker": config.train.batch_size,
        "model": "default ModelConfig (frozen text with year and genre features, "
        "recency, attention, movie bias, catalogue softmax)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": {},
    }

    def record(
        name: str,
        epochs: list[dict],
        wall: float,
        workers: int,
        threads: int,
        load_before: float,
    ) -> None:
        steps = [e for e in epochs]
        fit_seconds = sum(e["train_seconds"] for e in steps)
        # Each worker fits its shard; drop_last keeps whole global batches.
        global_batch = workers * config.train.batch_size
        trained = (num_examples // global_batch) * global_batch * len(steps)
        results["runs"][name] = {
            "workers": workers,
            "threads_per_worker": threads,
            "wall_seconds": round(wall, 1),
            "fit_seconds": round(fit_seconds, 1),
            "validation_seconds": round(
                sum(e.get("validation_seconds", 0.0) for e in steps), 1
            ),
            "other_seconds": round(
                wall
                - fit_seconds
                - sum(e.get("validation_seconds", 0.0) for e in steps),
                1,
            ),
            "examples_per_s_fit": round(trained / fit_seconds, 1),
            "examples_per_s_wall": round(trained / wall, 1),
            "first_epoch_fit_seconds": round(steps[0]["train_seconds"], 1),
            "load_before": round(load_before, 2),
        }
        print(name, json.dumps(results["runs"][name]))

    cores = os.cpu_count() or 1

    def plain_fit(name: str) -> None:
        load_before = _load()
        started = time.perf_counter()
        _, epochs = fit_in_process(
            config.model,
            dataclasses.replace(config.train, num_workers=1, cpus_per_worker=cores),
            vectors,
            counts,
            examples,
            config.data.max_history,
            seed=config.data.split_seed,
            negative_rows=negative_rows,
        )
        record(name, epochs, time.perf_counter() - started, 1, cores, load_before)

    plain_fit("plain_fit_before")
    for workers in (1, 2):
        load_before = _load()
        started = time.perf_counter()
        result = train(
            config.model,
            dataclasses.replace(
                config.train,
                num_workers=workers,
                cpus_per_worker=max(1, cores // workers),
            ),
            vectors,
            counts,
            datasets,
            config.data.max_history,
            paths.root / f"bench_train_{workers}",
            seed=config.data.split_seed,
            negative_rows=negative_rows,
        )
        record(
            f"ray_train_{workers}",
            result.epochs,
            time.perf_counter() - started,
            workers,
            max(1, cores // workers),
            load_before,
        )

    plain_fit("plain_fit_after")
    results["step_ms"] = step_costs(config, vectors, counts, negative_rows, examples)
    print("step_ms", json.dumps(results["step_ms"]))

    references = [results["runs"][f"plain_fit_{when}"] for when in ("before", "after")]
    reference = {
        key: float(np.mean([run[key] for run in references]))
        for key in ("examples_per_s_fit", "examples_per_s_wall")
    }
    results["plain_fit_spread"] = round(
        abs(references[0]["examples_per_s_fit"] - references[1]["examples_per_s_fit"])
        / reference["examples_per_s_fit"],
        3,
    )
    for name in ("ray_train_1", "ray_train_2"):
        run = results["runs"][name]
        results[f"{name}_vs_plain_fit"] = {
            "fit": round(
                run["examples_per_s_fit"] / reference["examples_per_s_fit"], 3
            ),
            "wall": round(
                run["examples_per_s_wall"] / reference["examples_per_s_wall"], 3
            ),
        }
    results["target"] = "ray_train_1_vs_plain_fit.fit >= 0.85"
    results["load_after"] = round(_load(), 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    ray.shutdown()


def step_costs(config, vectors, counts, negative_rows, examples) -> dict:
    """Milliseconds of one training step of a 2-worker run's per-worker batch,
    with the catalogue softmax and with in-batch negatives, in this process.

    Their difference is the candidate model's pass over the whole catalogue,
    which every worker makes for every step whatever its share of the batch.
    """
    import tensorflow as tf

    from recray.model.towers import RetrievalModel

    batch = config.train.batch_size
    features = {
        "history_ids": tf.constant(examples["history_ids"][:batch], tf.int32),
        "history_ratings": tf.constant(examples["history_ratings"][:batch]),
    }
    targets = tf.constant(examples["target_id"][:batch], tf.int32)
    costs = {}
    for negatives in ("catalogue", "in_batch"):
        model_config = dataclasses.replace(config.model, negatives=negatives)
        model = RetrievalModel(vectors, model_config, counts, negative_rows)
        model.build_towers(config.data.max_history)
        model.compile(optimizer=tf.keras.optimizers.Adam())
        step = tf.function(model.train_step)
        step((features, targets))  # trace and warm up
        started = time.perf_counter()
        for _ in range(20):
            step((features, targets))
        costs[f"{negatives}_{batch}"] = round(
            1000 * (time.perf_counter() - started) / 20, 1
        )
    return costs


if __name__ == "__main__":
    main()
