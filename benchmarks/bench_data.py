"""`make bench-data`: the histories prep on SYNTHETIC ml-25m, Ray Data vs one process.

Writes benchmarks/results/data.json with, for the same transformation (clean
ratings Parquet -> padded next-movie examples in Parquet, split by user):

- `ray_data`: `recray.data.histories.write_examples` on a local Ray cluster
  (`--num-cpus` logical CPUs), the Ray start excluded and reported apart;
- `reference`: a single-process pyarrow version (`reference_examples`
  below: pyarrow sort, whole-user chunks, one Parquet file per split);

each with wall time and the peak memory of the whole process tree (this
process, and for Ray its raylet, GCS, object store and workers), sampled
every 0.2 s: the sum of PSS (shared pages split between the processes that
map them, so the object store counts once) and, as an upper bound, of RSS.
The outputs are compared row by row; `outputs_equal` must be true. The
ingest (CSV validation) and synthesis are timed too, single process.

    python benchmarks/bench_data.py --scale 0.05     # a twentieth, minutes
    python benchmarks/bench_data.py                  # full ml-25m shape

Targets (in the JSON as `targets` and `met`): Ray Data wall time at most
1.5x the reference; peak memory of the prep at most 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recray  # noqa: E402,F401  (environment before Ray and TensorFlow)
from recray.config import DataConfig  # noqa: E402
from recray.data import DataReport, load_movielens  # noqa: E402
from recray.data.histories import (  # noqa: E402
    SPLITS,
    _user_uniform,
    examples_of_sorted,
    examples_table,
    validation_mask,
)
from recray.data.synth import SynthSpec, write_synthetic  # noqa: E402
from recray.data.vocabulary import MovieVocabulary  # noqa: E402
from recray.schema import USER_ID  # noqa: E402

GIB = 1 << 30


class PeakMemory:
    """Samples the PSS and RSS sums of this process and its descendants."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_pss = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process()
        pss = rss = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def as_dict(self) -> dict:
        return {
            "peak_pss_gib": round(self.peak_pss / GIB, 3),
            "peak_rss_sum_gib": round(self.peak_rss / GIB, 3),
        }


def reference_examples(
    ratings_path: Path, vocabulary: MovieVocabulary, config: DataConfig, out: Path
) -> dict[str, int]:
    """The same examples in one process with pyarrow: one file per split.

    Users split and ordered as `write_examples` does (same seeded hashes),
    sorted by pyarrow, cut into chunks of whole users, built with the same
    vectorised kernel and written a row group at a time.
    """
    ratings = pq.read_table(ratings_path)
    user_ids = ratings[USER_ID].to_numpy()
    keyed = pa.table(
        {
            "is_train": pa.array(~validation_mask(user_ids, config)),
            "rank": pa.array(_user_uniform(user_ids, config.split_seed + 1)),
            "user_id": ratings["user_id"],
            "timestamp": ratings["timestamp"],
            "movie_id": ratings["movie_id"],
            "rating": ratings["rating"],
        }
    )
    del ratings, user_ids
    keyed = keyed.sort_by(
        [(name, "ascending") for name in ("is_train", "rank", "user_id")]
        + [("timestamp", "ascending"), ("movie_id", "ascending")]
    )
    is_train = keyed["is_train"].to_numpy(zero_copy_only=False)
    users = keyed["user_id"].to_numpy()
    rows = vocabulary.rows(keyed["movie_id"].to_numpy())
    stars2 = np.round(keyed["rating"].to_numpy().astype(np.float64) * 2).astype(np.int8)
    del keyed
    counts = {}
    boundary = int(np.searchsorted(is_train, True))  # False (validation) first
    ranges = {"validation": (0, boundary), "train": (boundary, users.size)}
    out.mkdir(parents=True, exist_ok=True)
    is_first = np.ones(users.size, dtype=bool)
    is_first[1:] = users[1:] != users[:-1]
    for split in SPLITS:
        start, stop = ranges[split]
        # Chunks of whole users, about 65,536 ratings each.
        firsts = start + np.flatnonzero(is_first[start:stop])
        index = np.searchsorted(firsts, np.arange(start, stop, 65_536))
        cuts = np.where(
            index < firsts.size, firsts[np.minimum(index, firsts.size - 1)], stop
        )
        cuts = np.unique(np.r_[start, cuts, stop])
        written = 0
        writer = None
        for chunk_start, chunk_stop in zip(cuts[:-1], cuts[1:], strict=True):
            columns = examples_of_sorted(
                users[chunk_start:chunk_stop],
                rows[chunk_start:chunk_stop],
                stars2[chunk_start:chunk_stop],
                config.max_history,
            )
            table = examples_table(columns)
            if writer is None:
                writer = pq.ParquetWriter(str(out / f"{split}.parquet"), table.schema)
            writer.write_table(table)
            written += table.num_rows
        if writer is not None:
            writer.close()
        counts[split] = written
    return counts


def outputs_equal(ray_dir: Path, reference_dir: Path) -> tuple[bool, str]:
    """Whether the Ray shards, in order, hold the reference rows exactly."""
    for split in SPLITS:
        shards = sorted((ray_dir / split).glob("shard-*.parquet"))
        reference = reference_dir / f"{split}.parquet"
        if not reference.exists():
            if shards:
                return False, f"{split}: reference wrote nothing"
            continue
        ray_batches = (
            batch for path in shards for batch in pq.ParquetFile(path).iter_batches()
        )
        pending: pa.Table | None = None
        compared = 0
        for ref_batch in pq.ParquetFile(reference).iter_batches(batch_size=65_536):
            need = ref_batch.num_rows
            parts = [] if pending is None else [pending]
            have = 0 if pending is None else pending.num_rows
            while have < need:
                batch = next(ray_batches, None)
                if batch is None:
                    return False, f"{split}: Ray output ends at row {compared + have}"
                parts.append(pa.Table.from_batches([batch]))
                have += batch.num_rows
            got = pa.concat_tables(parts).combine_chunks()
            pending = got.slice(need)
            got = got.slice(0, need)
            want = pa.Table.from_batches([ref_batch])
            for name in want.column_names:
                left = got[name].combine_chunks()
                right = want[name].combine_chunks()
                if hasattr(left, "to_numpy_ndarray"):
                    equal = np.array_equal(
                        left.to_numpy_ndarray(), right.to_numpy_ndarray()
                    )
                else:
                    equal = pc.all(pc.equal(left, right)).as_py() is not False
                if not equal:
                    return (
                        False,
                        f"{split}: column `{name}` differs near row {compared}",
                    )
            compared += need
        if (pending is not None and pending.num_rows) or next(ray_batches, None):
            return False, f"{split}: Ray output has more rows than the reference"
    return True, "identical, row by row"


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/recray-bench-data"))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/data.json"
    )
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--examples-per-shard", type=int, default=250_000)
    parser.add_argument("--keep", action="store_true", help="keep the examples written")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    spec = SynthSpec.scaled(args.scale)
    data_dir = args.work_dir / f"synthetic-ml-25m-scale-{args.scale:g}"
    result: dict = {
        "what": "histories prep on SYNTHETIC ml-25m-shaped data (recray data synth)",
        "synthetic": True,
        "spec": spec.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
            "python": platform.python_version(),
            "load_before": load_average(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }

    started = time.perf_counter()
    if not (data_dir / "SYNTHETIC").is_file():
        write_synthetic(data_dir, spec)
        result["synth_s"] = round(time.perf_counter() - started, 2)

    ratings_path = args.work_dir / f"ratings-scale-{args.scale:g}.parquet"
    with PeakMemory() as memory:
        started = time.perf_counter()
        report = DataReport()
        movielens = load_movielens(data_dir, report)
        pq.write_table(movielens.ratings, ratings_path)
        vocabulary = MovieVocabulary(np.sort(movielens.movies["movie_id"].to_numpy()))
        del movielens
    result["ingest"] = {
        "wall_s": round(time.perf_counter() - started, 2),
        **memory.as_dict(),
        "rows_read": report.rows_read,
        "total_dropped": report.total_dropped(),
        "layout": report.dataset.get("layout"),
    }

    config = DataConfig(
        data_dir=data_dir,
        tmdb_path=None,
        max_history=args.max_history,
        validation_users=max(1, round(20_000 * args.scale)),
        examples_per_shard=args.examples_per_shard,
    )
    result["config"] = {
        "max_history": config.max_history,
        "validation_users": config.validation_users,
        "examples_per_shard": config.examples_per_shard,
        "num_cpus": args.num_cpus,
    }
    ray_dir = args.work_dir / "ray-examples"
    reference_dir = args.work_dir / "reference-examples"
    for folder in (ray_dir, reference_dir):
        shutil.rmtree(folder, ignore_errors=True)

    import ray

    from recray.cluster import init_ray
    from recray.data.histories import write_examples

    started = time.perf_counter()
    init_ray(num_cpus=args.num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start_s = time.perf_counter() - started
    with PeakMemory() as memory:
        started = time.perf_counter()
        ratings = pq.read_table(ratings_path)
        stats = write_examples(ratings, vocabulary, config, ray_dir)
        del ratings
        ray_wall = time.perf_counter() - started
    result["ray_data"] = {
        "wall_s": round(ray_wall, 2),
        "ray_start_s": round(ray_start_s, 2),
        **memory.as_dict(),
        "stats": stats.to_dict(),
    }
    ray.shutdown()

    with PeakMemory() as memory:
        started = time.perf_counter()
        counts = reference_examples(ratings_path, vocabulary, config, reference_dir)
        reference_wall = time.perf_counter() - started
    result["reference"] = {
        "wall_s": round(reference_wall, 2),
        **memory.as_dict(),
        "examples": counts,
        "how": "single process: pyarrow read/sort/write, numpy kernel",
    }

    started = time.perf_counter()
    equal, detail = outputs_equal(ray_dir, reference_dir)
    result["outputs_equal"] = equal and counts == stats.examples
    result["outputs_check"] = {
        "detail": detail,
        "s": round(time.perf_counter() - started, 1),
    }

    peak = max(result["ray_data"]["peak_pss_gib"], result["ingest"]["peak_pss_gib"])
    result["ratios"] = {
        "ray_wall_over_reference": round(ray_wall / reference_wall, 3),
        "ray_peak_pss_over_reference": round(
            result["ray_data"]["peak_pss_gib"] / result["reference"]["peak_pss_gib"], 3
        ),
    }
    result["targets"] = {"ray_wall_over_reference_max": 1.5, "peak_memory_gib_max": 8.0}
    result["met"] = {
        "wall": result["ratios"]["ray_wall_over_reference"] <= 1.5,
        "memory": peak <= 8.0,
        "outputs_equal": result["outputs_equal"],
    }
    result["machine"]["load_after"] = load_average()
    if not args.keep:
        for folder in (ray_dir, reference_dir):
            shutil.rmtree(folder, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratios", "met")}, indent=2))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
