"""Compare model options in one process on a run folder's examples.

A quick harness for the ablations of issue 5: it trains the towers with plain
Keras `fit` (no Ray Train), on the training examples of a run made by
`jobs/pipeline.py` (ingest, embed and histories are enough), and scores a
seeded sample of validation examples against the whole catalogue, with the
cold-start movies kept out of training as the train stage does.

    .venv/bin/python scripts/ablations.py --run runs/bench-quality --epochs 6 \
        --train cpus_per_worker=2 --train batch_size=512 --model use_attention=False

Appends one JSON line per call to `--out` (default
benchmarks/results/ablations.jsonl).

With `movie_bias`, `--unseen-bias-quantiles 0.5 0.75` also scores the trained
model again with every cold-start movie given that quantile of the learned
biases of the training targets' movies, instead of 0: how much of the cold-start
hit rate rides on where 0 falls among the learned biases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

import recray  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from recray import pipeline
from recray.config import PipelineConfig, load_yaml
from recray.data.cold_start import without_cold_targets
from recray.data.histories import rated_before
from recray.evaluation.metrics import rank_in_chunks, ranking_metrics, seeded_sample
from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID


def read_split(folder: Path) -> dict[str, np.ndarray]:
    """Example columns of one split, read with pyarrow (no Ray cluster)."""
    import ray.data  # noqa: F401  (registers Ray's tensor column type)

    table = pq.read_table(folder)
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if hasattr(column, "to_numpy_ndarray"):
            columns[name] = column.to_numpy_ndarray()
        else:
            try:
                columns[name] = column.to_numpy()
            except Exception:  # noqa: BLE001
                columns[name] = np.stack(column.to_numpy(zero_copy_only=False))
    return columns


def overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        values[key] = yaml.safe_load(value)
    return values


def unseen_bias_priors(
    model, scored: Callable[..., dict], watched: np.ndarray, quantiles: list[float]
) -> dict:
    """Metrics with the cold-start movies' bias set to quantiles of the
    learned biases of the movies that are training targets (`watched`, a
    mask of rows). Warm movies only validation users rated are left out:
    training only ever pushes their bias down."""
    biases = model.candidate_model.bias.get_weights()[0][watched, 0]
    priors = []
    for quantile in quantiles:
        bias = float(np.quantile(biases, quantile))
        metrics = scored(model, unseen_bias=bias)
        priors.append({"quantile": quantile, "bias": round(bias, 4), **metrics})
        print(
            f"unseen bias {bias:+.3f} (quantile {quantile}): warm HR@100 "
            f"{metrics['warm']['hr@100']:.4f}, cold {metrics['cold']['hr@100']:.4f}"
        )
    share_below_zero = round(float(np.mean(biases < 0)), 4)
    return {"learned_share_below_zero": share_below_zero, "priors": priors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/dev"))
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--train", action="append", default=[])
    parser.add_argument(
        "--epochs", type=int, default=None, help="the run's epochs when unset"
    )
    parser.add_argument(
        "--max-eval", type=int, default=None, help="all validation examples when unset"
    )
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="seeds weights and shuffle; the run's split seed when unset",
    )
    parser.add_argument(
        "--ease", action="store_true", help="score EASE instead of training"
    )
    parser.add_argument(
        "--unseen-bias-quantiles",
        type=float,
        nargs="+",
        default=[],
        help="with movie_bias: rescore with cold-start biases at these quantiles",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/ablations.jsonl")
    )
    args = parser.parse_args()
    if not all(0 <= quantile <= 1 for quantile in args.unseen_bias_quantiles):
        parser.error("--unseen-bias-quantiles are quantiles, between 0 and 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level="WARNING")

    from recray.training.trainer import fit_in_process

    paths = pipeline.RunPaths(args.run)
    config = load_yaml(PipelineConfig, paths.config)
    model_config = dataclasses.replace(config.model, **overrides(args.model))
    train_config = dataclasses.replace(
        config.train,
        epochs=args.epochs or config.train.epochs,
        **overrides(args.train),
    )
    config = dataclasses.replace(config, model=model_config, train=train_config)
    if args.unseen_bias_quantiles and not model_config.movie_bias:
        parser.error("--unseen-bias-quantiles needs the movie bias (movie_bias=True)")

    counts = pipeline._training_rating_counts(config, paths)
    vectors = pipeline.movie_table(config, paths, counts)
    cold = pipeline._cold_start(config, paths)
    train = without_cold_targets(read_split(paths.examples / "train"), cold.is_cold)
    validation = read_split(paths.examples / "validation")
    validation = seeded_sample(validation, args.max_eval, config.data.split_seed)

    targets = validation[TARGET_ID].astype(np.int64)
    excluded = rated_before(
        pq.read_table(paths.ratings), pipeline._vocabulary(paths), validation
    )
    is_cold = cold.is_cold[targets]
    if args.ease:
        from recray.evaluation.baselines import choose_ease

        started = time.perf_counter()
        ease, grid = choose_ease(
            pipeline._training_sequences(config, paths),
            len(vectors),
            config.eval.ease_l2_grid,
            seed=config.data.split_seed,
        )
        ranks = rank_in_chunks(
            lambda rows: ease.scores(excluded[rows]), targets, excluded
        )
        result = {
            "label": args.label or "ease",
            "ease": {"l2": ease.l2, "grid": grid},
            "all": ranking_metrics(ranks, config.eval.ks),
            "warm": ranking_metrics(ranks[~is_cold], config.eval.ks),
            "cold": ranking_metrics(ranks[is_cold], config.eval.ks),
            "train_seconds": round(time.perf_counter() - started, 1),
        }
        with args.out.open("a") as out:
            out.write(json.dumps(result) + "\n")
        print(json.dumps(result))
        return

    history = validation
    unseen = counts == 0
    if model_config.movie_features == "id":
        from recray.data.cold_start import mask_cold_history

        history = mask_cold_history(validation, cold.is_cold)

    def scored(model, unseen_bias: float | None = None) -> dict:
        """All, warm and cold-start metrics of the model as it is now, with
        `unseen_bias` in place of the cold-start movies' bias when given."""
        queries = model.query_model.predict(
            {
                HISTORY_IDS: history[HISTORY_IDS],
                HISTORY_RATINGS: history[HISTORY_RATINGS],
            },
            batch_size=2048,
            verbose=0,
        )
        candidates = model.candidate_model.predict(
            np.arange(len(vectors), dtype=np.int32), batch_size=4096, verbose=0
        )
        if unseen_bias is not None:
            candidates[cold.is_cold, -1] = unseen_bias  # the bias column

        def score(rows: slice) -> np.ndarray:
            scores = queries[rows] @ candidates.T
            if model_config.movie_features == "id":
                scores[:, unseen] = -np.inf
            return scores

        ranks = rank_in_chunks(score, targets, excluded)
        return {
            "all": ranking_metrics(ranks, config.eval.ks),
            "warm": ranking_metrics(ranks[~is_cold], config.eval.ks),
            "cold": ranking_metrics(ranks[is_cold], config.eval.ks),
        }

    negative_rows = np.flatnonzero(~cold.is_cold)[1:].astype(np.int32)
    train_seed = config.data.split_seed if args.train_seed is None else args.train_seed
    model, epochs = fit_in_process(
        model_config,
        train_config,
        vectors,
        counts,
        train,
        config.data.max_history,
        seed=train_seed,
        negative_rows=negative_rows,
        epoch_metrics=scored,
    )
    for epoch in epochs:
        print(
            f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, HR@100 "
            f"{epoch['all']['hr@100']:.4f} (warm {epoch['warm']['hr@100']:.4f}, "
            f"cold {epoch['cold']['hr@100']:.4f})"
        )
    last = epochs[-1]
    result = {
        "label": args.label,
        "model": overrides(args.model),
        "train": {**overrides(args.train), "epochs": train_config.epochs},
        "train_seed": train_seed,
        "examples": int(len(targets)),
        "all": last["all"],
        "warm": last["warm"],
        "cold": last["cold"],
        "loss_by_epoch": [round(e["loss"], 4) for e in epochs],
        "hr@100_by_epoch": [round(e["all"]["hr@100"], 4) for e in epochs],
        "cold_hr@100_by_epoch": [round(e["cold"]["hr@100"], 4) for e in epochs],
        "train_seconds": round(sum(e["train_seconds"] for e in epochs), 1),
    }
    if args.unseen_bias_quantiles:
        result["unseen_bias"] = unseen_bias_priors(
            model, scored, counts > 0, args.unseen_bias_quantiles
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        out.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
