"""A synthetic MovieLens dataset of ml-25m's shape, labelled synthetic throughout.

`write_synthetic` writes the ml-25m CSV layout (`ratings.csv`, `movies.csv`,
`links.csv`, `tags.csv`) with 162,541 users, 62,423 movies and 25,000,095
ratings at `scale=1`, or proportionally fewer at a smaller scale, so tests
and development runs use a tiny copy of the same shape:

- user activity is heavy-tailed (log-normal above ml-25m's minimum of 20
  ratings per user, capped at a third of the catalogue);
- movie popularity is heavy-tailed (Zipf, with a small uniform share so that
  every movie can be rated);
- ratings are half stars 0.5 to 5 with ml-25m's overall distribution, and
  timestamps fall between 1995-01-09 and 2019-11-21;
- every movie has a title, genres and tags, so every movie gets a text.

Everything is labelled synthetic: the folder holds a `README.txt` and a
`SYNTHETIC` marker (JSON of the parameters) that `load_movielens` records in
the data report, every title starts with "Synthetic movie" and every movie
carries the tag "synthetic data". The data are random: no model trained on
them says anything about real MovieLens users.

Generation is vectorised with numpy and written with pyarrow; the full scale
takes about a minute and a few GiB.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from recray.data.movielens import SYNTHETIC_MARKER

logger = logging.getLogger(__name__)

# ml-25m's README: 25,000,095 ratings by 162,541 users of 62,423 movies.
ML25M_USERS = 162_541
ML25M_MOVIES = 62_423
ML25M_RATINGS = 25_000_095
MIN_RATINGS_PER_USER = 20
FIRST_TIMESTAMP = 789_652_009  # 1995-01-09, ml-25m's first rating
LAST_TIMESTAMP = 1_574_327_703  # 2019-11-21, ml-25m's last rating

# Half-star levels and their share of ml-25m's ratings (approximately).
_STARS = np.arange(1, 11) / 2
_STAR_SHARES = np.array([1.6, 3.1, 1.6, 6.6, 5.0, 19.6, 12.6, 26.6, 8.5, 14.4])
_GENRES = (
    "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror IMAX Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
_TAG_WORDS = (
    "atmospheric",
    "funny",
    "twist ending",
    "visually stunning",
    "dark comedy",
    "based on a book",
    "classic",
    "thought-provoking",
    "quirky",
    "dystopia",
    "time travel",
    "heist",
)
_README = """SYNTHETIC DATA - NOT MOVIELENS

This folder was written by `recray data synth` ({json}).
It has the shape of MovieLens ml-25m ({users:,} users, {movies:,} movies,
{ratings:,} ratings) in the ml-25m CSV layout, but every user, movie, title,
rating, timestamp and tag is random. Use it to measure the data pipeline,
never to judge a model or to describe real viewers.
"""


@dataclass(frozen=True)
class SynthSpec:
    """Counts and seed of a synthetic dataset; `scaled` derives them from ml-25m."""

    users: int
    movies: int
    ratings: int
    seed: int = 0
    scale: float = 1.0

    @classmethod
    def scaled(cls, scale: float = 1.0, seed: int = 0) -> SynthSpec:
        """ml-25m's counts times `scale`.

        At least 10 users and 2,000 movies, so that even a tiny scale has
        room for heavy users (at most a third of the catalogue each).
        """
        if not 0 < scale <= 1:
            raise ValueError(
                f"`scale` must be in (0, 1], got {scale}; 1 is ml-25m's size, "
                "0.05 a twentieth of it."
            )
        users = max(10, round(ML25M_USERS * scale))
        movies = max(2_000, round(ML25M_MOVIES * scale))
        ratings = max(users * MIN_RATINGS_PER_USER, round(ML25M_RATINGS * scale))
        return cls(users=users, movies=movies, ratings=ratings, seed=seed, scale=scale)


def _user_counts(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user [users], heavy-tailed, summing to `spec.ratings`."""
    cap = max(MIN_RATINGS_PER_USER, min(20_000, spec.movies // 3))
    if spec.users * cap < spec.ratings:
        raise ValueError(
            f"{spec.ratings} ratings do not fit {spec.users} users rating at most "
            f"{cap} of {spec.movies} movies each; raise `scale`."
        )
    extra = rng.lognormal(mean=0.0, sigma=1.3, size=spec.users)
    wanted = spec.ratings - MIN_RATINGS_PER_USER * spec.users
    counts = MIN_RATINGS_PER_USER + np.floor(extra / extra.sum() * wanted)
    counts = np.minimum(counts, cap).astype(np.int64)
    # Hand out (or take back) what rounding and the cap left, a rating at a time.
    while (missing := spec.ratings - int(counts.sum())) != 0:
        room = counts < cap if missing > 0 else counts > MIN_RATINGS_PER_USER
        candidates = np.flatnonzero(room)
        chosen = rng.choice(candidates, min(abs(missing), candidates.size), False)
        counts[chosen] += 1 if missing > 0 else -1
    return counts


def _rated_movies(
    counts: np.ndarray, movies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct movie indices per user, Zipf-popular; sorted by (user, movie).

    Draws with replacement, then redraws the repeats of the users that have
    any until none is left (uniformly after a few rounds, which is quick as
    no user rates more than a third of the catalogue).

    Returns:
        User index [ratings] and movie index [ratings], both int64.
    """
    popularity = 1.0 / (np.arange(movies) + 10.0) ** 1.05
    popularity = 0.97 * popularity / popularity.sum() + 0.03 / movies
    # Movie 0 is not the most popular: popularity ranks are a random order.
    rank_to_movie = rng.permutation(movies)
    cdf = np.cumsum(popularity)
    cdf[-1] = 1.0

    users = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    picks = rank_to_movie[np.searchsorted(cdf, rng.random(users.size))]
    keys = users * movies + picks
    active = np.arange(keys.size)
    for round_ in range(100):
        order = np.argsort(keys[active], kind="stable")
        sorted_keys = keys[active][order]
        repeat = np.zeros(active.size, dtype=bool)
        repeat[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]
        redo = active[repeat]
        if redo.size == 0:
            break
        if round_ < 4:
            draws = rank_to_movie[np.searchsorted(cdf, rng.random(redo.size))]
        else:
            draws = rng.integers(0, movies, redo.size)
        keys[redo] = users[redo] * movies + draws
        # Only the users with a redraw can have a new repeat.
        redo_users = np.unique(users[redo])
        active = np.flatnonzero(np.isin(users, redo_users))
    else:  # pragma: no cover - would need a user rating most of the catalogue
        raise RuntimeError("Could not draw distinct movies per user.")
    keys.sort()
    return keys // movies, keys % movies


def write_synthetic(out_dir: Path, spec: SynthSpec) -> dict:
    """Write a synthetic ml-25m-shaped MovieLens folder.

    Args:
        out_dir: Folder to write; created, and files in it replaced.
        spec: Counts and seed, e.g. `SynthSpec.scaled(0.05)`.

    Returns:
        The parameters and counts written, also stored in `SYNTHETIC`.
    """
    rng = np.random.default_rng(spec.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    movie_ids = np.sort(
        rng.choice(np.arange(1, 4 * spec.movies), spec.movies, replace=False)
    ).astype(np.int64)
    counts = _user_counts(spec, rng)
    user_index, movie_index = _rated_movies(counts, spec.movies, rng)

    starts = rng.uniform(FIRST_TIMESTAMP, LAST_TIMESTAMP, spec.users)
    spans = rng.exponential(2 * 365 * 86_400.0, spec.users)
    ends = np.minimum(starts + spans, LAST_TIMESTAMP)
    offsets = rng.random(user_index.size)
    timestamps = starts[user_index] + offsets * (ends - starts)[user_index]
    stars = _STARS[
        np.searchsorted(
            np.cumsum(_STAR_SHARES / _STAR_SHARES.sum()), rng.random(user_index.size)
        )
    ]
    ratings = pa.table(
        {
            "userId": pa.array(user_index + 1),
            "movieId": pa.array(movie_ids[movie_index]),
            "rating": pa.array(np.minimum(stars, 5.0)),
            "timestamp": pa.array(timestamps.astype(np.int64)),
        }
    )
    del user_index, movie_index, timestamps, stars, offsets
    _write_csv(ratings, out_dir / "ratings.csv")
    del ratings

    years = np.clip(np.round(2019 - rng.exponential(15, spec.movies)), 1902, 2019)
    genre_count = rng.integers(1, 4, spec.movies)
    genre_picks = rng.integers(0, len(_GENRES), (spec.movies, 3))
    genres = [
        "|".join(sorted({_GENRES[g] for g in picks[:count]}))
        for picks, count in zip(genre_picks, genre_count, strict=True)
    ]
    no_genre = rng.random(spec.movies) < 0.01
    genres = [
        "(no genres listed)" if none else text
        for none, text in zip(no_genre, genres, strict=True)
    ]
    titles = [
        f"Synthetic movie {movie_id} ({int(year)})"
        for movie_id, year in zip(movie_ids, years, strict=True)
    ]
    _write_csv(
        pa.table({"movieId": movie_ids, "title": titles, "genres": genres}),
        out_dir / "movies.csv",
    )
    # No TMDB entry exists for a synthetic movie: `tmdbId` stays blank.
    _write_csv(
        pa.table(
            {
                "movieId": movie_ids,
                "imdbId": pa.array(movie_ids + 10_000_000),
                "tmdbId": pa.nulls(spec.movies, pa.int64()),
            }
        ),
        out_dir / "links.csv",
    )

    # "synthetic data" applied twice to every movie, so it is always among the
    # top tags of its text, plus one to three random words once each.
    extra = rng.integers(1, 4, spec.movies)
    tag_movies = np.concatenate([movie_ids, movie_ids, np.repeat(movie_ids, extra)])
    words = np.array(_TAG_WORDS, dtype=object)[
        rng.integers(0, len(_TAG_WORDS), int(extra.sum()))
    ]
    tag_texts = ["synthetic data"] * (2 * spec.movies) + list(words)
    _write_csv(
        pa.table(
            {
                "userId": pa.array(rng.integers(1, spec.users + 1, tag_movies.size)),
                "movieId": pa.array(tag_movies),
                "tag": pa.array(tag_texts, type=pa.string()),
                "timestamp": pa.array(
                    rng.integers(FIRST_TIMESTAMP, LAST_TIMESTAMP, tag_movies.size)
                ),
            }
        ),
        out_dir / "tags.csv",
    )

    summary = {
        "synthetic": True,
        "generator": "recray data synth",
        **asdict(spec),
        "max_ratings_per_user": int(counts.max()),
        "median_ratings_per_user": float(np.median(counts)),
        "tags": int(tag_movies.size),
    }
    (out_dir / SYNTHETIC_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "README.txt").write_text(
        _README.format(
            json=json.dumps(asdict(spec)),
            users=spec.users,
            movies=spec.movies,
            ratings=spec.ratings,
        )
    )
    logger.info(
        "Wrote SYNTHETIC MovieLens data to `%s`: %d users, %d movies, %d ratings.",
        out_dir,
        spec.users,
        spec.movies,
        spec.ratings,
    )
    return summary


def _write_csv(table: pa.Table, path: Path) -> None:
    """Write `table` as MovieLens does: a bare header line, quotes where needed."""
    with pa.OSFile(str(path), "wb") as sink:
        sink.write((",".join(table.column_names) + "\n").encode())
        pa_csv.write_csv(
            table,
            sink,
            write_options=pa_csv.WriteOptions(
                include_header=False, quoting_style="needed", batch_size=1 << 16
            ),
        )
