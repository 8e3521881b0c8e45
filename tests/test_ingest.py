"""The ingest stage on its own: what the movie texts may quote."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recray import pipeline
from recray.config import DataConfig, PipelineConfig, TrainConfig
from recray.data.histories import is_validation_user


def _write(folder, name: str, header: str, rows: list[str]) -> None:
    (folder / name).write_text("\n".join([header, *rows]) + "\n")


def test_movie_texts_quote_training_users_tags_of_warm_movies(tmp_path):
    users = np.arange(1, 11)
    held_out = users[is_validation_user(users, seed=42, fraction=0.2)]
    assert len(held_out) >= 1
    validation_user = int(held_out[0])
    training_user = int(users[~np.isin(users, held_out)][0])

    # Twenty ratings, one of them of the 2018 movie: the latest year holds
    # 5% of the ratings, so movie 3 is the cold-start movie.
    data = tmp_path / "ml"
    data.mkdir()
    ratings = [f"{user},1,4.0,{100 + user}" for user in users]
    ratings += [f"{user},2,3.0,{200 + user}" for user in users[:9]]
    ratings += [f"{training_user},3,5.0,300"]
    _write(data, "ratings.csv", "userId,movieId,rating,timestamp", ratings)
    _write(
        data,
        "movies.csv",
        "movieId,title,genres",
        ["1,Alpha (1995),Drama", "2,Beta (2000),Comedy", "3,Gamma (2018),Action"],
    )
    _write(
        data,
        "tags.csv",
        "userId,movieId,tag,timestamp",
        [
            f"{training_user},1,kept,1",
            f"{validation_user},1,held out user,2",
            f"{validation_user},2,held out user,3",
            f"{training_user},3,cold movie,4",
        ],
    )
    config = PipelineConfig(
        name="ingest",
        runs_dir=tmp_path / "runs",
        data=DataConfig(data_dir=data, tmdb_path=None, split_seed=42),
        train=TrainConfig(cold_start_fraction=0.05),
    )

    paths = pipeline.run(config, stages=["ingest"])

    texts = pq.read_table(paths.movie_texts).to_pylist()
    assert [row["text"] for row in texts] == [
        "Alpha (1995). Genres: Drama. Tags: kept.",
        "Beta (2000). Genres: Comedy.",
        "Gamma (2018). Genres: Action.",
    ]
