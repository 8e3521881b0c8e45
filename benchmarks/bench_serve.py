"""Latency of one recommendation over ml-25m's 62,423 movies, on CPU.

    make bench-serve            # writes benchmarks/results/serve.json
    .venv/bin/python benchmarks/bench_serve.py --queries 1000

Synthetic data of ml-25m's catalogue size: 62,423 movies with random
384-dim text vectors (all-MiniLM-L6-v2's size), untrained towers of the
default shape (latency does not depend on the weights' values), exported and
loaded exactly as a trained run's are, in a synthetic run folder. Three
timings per query, interleaved so that they see the same machine load:

    numpy           candidates @ query, argpartition top k, sort the k
                    (the reference)
    index           the exported TFRS index (SavedModel), query embedding -> k
    recommendation  `Recommender.recommend_rows`: a 50-movie history -> text
                    vectors -> exported query model -> index -> k titles, the
                    history's movies left out

Targets: recommendation p50 <= 20 ms; index p50 <= 2x numpy p50.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The target is CPU latency: hide any GPU from TensorFlow.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import recray  # noqa: E402, F401  (Keras 2 for TFRS, before TensorFlow)

NUM_MOVIES = 62_423  # ml-25m's movies.csv
TEXT_DIM = 384
RESULTS = Path(__file__).parent / "results" / "serve.json"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _synthetic_run(root: Path, rng: np.random.Generator):
    """A run folder with exported towers and index over NUM_MOVIES movies,
    whose rows carry year and genre features as a trained run's do."""
    from recray.config import PipelineConfig, save_yaml
    from recray.data.movie_features import GENRES, FeatureSpec, tower_inputs
    from recray.data.texts import MOVIE_TEXTS_SCHEMA
    from recray.model.export import export_query_model
    from recray.model.towers import RetrievalModel
    from recray.serving.index import export_serving

    config = PipelineConfig(name=root.name, runs_dir=root.parent)
    save_yaml(config, root / "config.yaml")
    movie_ids = np.arange(1, NUM_MOVIES + 1, dtype=np.int64)
    vectors = rng.normal(size=(NUM_MOVIES, TEXT_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    years = rng.integers(1920, 2020, size=NUM_MOVIES).astype(np.int32)
    genres = [[GENRES[i % len(GENRES)].title()] for i in range(NUM_MOVIES)]
    titles = [f"Movie {i} ({y})" for i, y in zip(movie_ids, years, strict=True)]
    pq.write_table(
        pa.table(
            {
                "movie_id": movie_ids,
                "title": titles,
                "text": [f"Movie {i}." for i in movie_ids],
                "year": years,
                "genres": genres,
            },
            schema=MOVIE_TEXTS_SCHEMA,
        ),
        root / "movie_texts.parquet",
    )
    np.savez(root / "movie_embeddings.npz", movie_id=movie_ids, vectors=vectors)

    spec = FeatureSpec(
        config.model.year_features, config.model.genre_features, last_year=2019
    )
    rows = tower_inputs(vectors, years, genres, spec)
    (root / "movie_features.json").write_text(
        json.dumps({**dataclasses.asdict(spec), "width": rows.shape[1]})
    )
    table = np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows])
    model = RetrievalModel(table, config.model)
    model.build_towers(config.data.max_history)
    export_query_model(model.query_model, root / "query_model")
    export_serving(model.candidate_model, root, kind="brute-force")
    return config


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from recray.model.export import ExportedIndex
    from recray.serving.catalogue import ServingPaths, read_index_info
    from recray.serving.index import INDEX_CANDIDATES, INDEX_MODEL
    from recray.serving.recommend import Recommender

    rng = np.random.default_rng(0)
    load_before = _uptime()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        root = Path(folder) / "synthetic-ml-25m"
        root.mkdir()
        started = time.perf_counter()
        config = _synthetic_run(root, rng)
        export_s = time.perf_counter() - started

        recommender = Recommender(root)
        index_kind = read_index_info(ServingPaths(root))["kind"]
        index = ExportedIndex(root / "index" / INDEX_MODEL)
        candidates = np.load(root / "index" / INDEX_CANDIDATES)  # [movies, dim]
        queries = rng.normal(size=(args.queries + args.warmup, candidates.shape[1]))
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(
            np.float32
        )
        length = config.data.max_history
        histories = rng.integers(0, NUM_MOVIES, size=(len(queries), length))
        ratings = rng.choice(np.arange(0.5, 5.5, 0.5), size=histories.shape)

        def numpy_top_k(query: np.ndarray) -> np.ndarray:
            scores = candidates @ query  # [movies]
            best = np.argpartition(-scores, args.k)[: args.k]
            return best[np.argsort(-scores[best])]

        timings: dict[str, list[float]] = {
            "numpy": [],
            "index": [],
            "recommendation": [],
        }
        agree = 0
        for i in range(len(queries)):
            query = queries[i]
            t0 = time.perf_counter()
            by_numpy = numpy_top_k(query)
            t1 = time.perf_counter()
            _, by_index = index(query[np.newaxis], args.k)
            t2 = time.perf_counter()
            found = recommender.recommend_rows(histories[i], ratings[i], args.k)
            t3 = time.perf_counter()
            if i < args.warmup:
                continue
            timings["numpy"].append(t1 - t0)
            timings["index"].append(t2 - t1)
            timings["recommendation"].append(t3 - t2)
            # Index ids are movie ids, row + 1 in this catalogue.
            agree += int(np.array_equal(by_index[0] - 1, by_numpy))
            assert len(found) == args.k
    load_after = _uptime()

    results = {name: _percentiles(values) for name, values in timings.items()}
    numpy_p50, numpy_p99 = results["numpy"]["p50_ms"], results["numpy"]["p99_ms"]
    summary = {
        "benchmark": "serve",
        "movies": NUM_MOVIES,
        "text_dim": TEXT_DIM,
        "embedding_dim": int(candidates.shape[1]),
        "history_length": length,
        "k": args.k,
        "queries": args.queries,
        "index_kind": index_kind,
        "timings": results,
        "ratios": {
            "index_p50_vs_numpy": round(results["index"]["p50_ms"] / numpy_p50, 3),
            "index_p99_vs_numpy": round(results["index"]["p99_ms"] / numpy_p99, 3),
            "recommendation_p50_vs_numpy": round(
                results["recommendation"]["p50_ms"] / numpy_p50, 3
            ),
        },
        "targets": {
            "recommendation_p50_ms_at_most_20": results["recommendation"]["p50_ms"]
            <= 20.0,
            "index_p50_at_most_2x_numpy": results["index"]["p50_ms"] <= 2.0 * numpy_p50,
        },
        "index_top_k_equals_numpy": f"{agree}/{args.queries}",
        "export_seconds": round(export_s, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "uptime_before": load_before,
            "uptime_after": load_after,
            "note": "CPU only; other processes share the cores (see uptime).",
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
