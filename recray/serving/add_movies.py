"""Adding new movies to a trained run, without retraining.

The towers of a servable run (frozen `text` movie features) read a movie
only through its text embedding, so a new movie needs nothing but its text:
it is written the way the ingest stage writes every movie's text
(`recray.data.build_movie_texts`), embedded with the run's embedder,
appended to the run's catalogue of text vectors, and its candidate
embedding, from the exported candidate model, goes into the index.

Input: a CSV file (a header row, list fields as `a|b`, as MovieLens writes
genres), a JSON file holding a list of objects, or JSON lines. Fields:

    title     required, e.g. "Arrival" or "Arrival (2016)"
    year      optional, four digits (or in the title's brackets)
    genres    optional list, e.g. "Drama|Sci-Fi"
    tagline, overview   optional text
    keywords, cast, tags  optional lists (cast: leading actors, billing order)
    movie_id  optional; new ids count on from the largest id of the run
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.data.movie_features import warn_of_unknown_genres
from recray.serving.catalogue import (
    ADDED_SCHEMA,
    ServingPaths,
    load_catalogue,
    load_run_config,
)
from recray.serving.titles import fold, split_year

logger = logging.getLogger(__name__)

FIELDS = (
    "movie_id",
    "title",
    "year",
    "genres",
    "tagline",
    "overview",
    "keywords",
    "cast",
    "tags",
)
_LIST_FIELDS = ("genres", "keywords", "cast", "tags")
_TEXT_FIELDS = ("tagline", "overview")
_YEARS = (1870, 2100)


@dataclass(frozen=True)
class NewMovie:
    """One validated movie of an input file."""

    movie_id: int | None
    title: str
    year: int | None
    genres: list[str]
    tagline: str | None
    overview: str | None
    keywords: list[str]
    cast: list[str]
    tags: list[str]

    @property
    def full_title(self) -> str:
        return self.title if self.year is None else f"{self.title} ({self.year})"


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, fields) of every record of a CSV or JSON file."""
    if not path.is_file():
        raise FileNotFoundError(f"Movie file `{path}` does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            # Line numbers count the header as line 1.
            return [(f"line {reader.line_num}", dict(row)) for row in reader]
    if suffix in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8")
        try:
            if suffix == ".jsonl":
                lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)]
                return [
                    (f"line {n}", json.loads(line)) for n, line in lines if line.strip()
                ]
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"`{path}` is not valid JSON: {err}.") from err
        if not isinstance(values, list):
            raise ValueError(
                f"`{path}` must hold a JSON list of movie objects, got a "
                f"{type(values).__name__}."
            )
        return [(f"item {n}", value) for n, value in enumerate(values, 1)]
    raise ValueError(
        f"Cannot read `{path}`: give a `.csv`, `.json` (a list of objects) or "
        "`.jsonl` file."
    )


def _text(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise TypeError(f"expected text, got {type(value).__name__} {value!r}")
    text = " ".join(str(value).split())
    return text or None


def _list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings or `a|b`, got {value!r}")
    return [item for item in (" ".join(v.split()) for v in value) if item]


def _integer(value, field: str) -> int | None:
    text = _text(value)
    if text is None:
        return None
    if isinstance(value, float) or not re.fullmatch(r"\d{1,18}", text):
        raise TypeError(f"`{field}` must be a whole number, got {value!r}")
    return int(text)


def _movie(where: str, fields: object) -> NewMovie:
    """Validate one record.

    Raises:
        ValueError: Naming `where` and the field.
    """
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: expected an object of fields, got {fields!r}.")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown fields {unknown}; the fields are {list(FIELDS)}."
        )
    try:
        title = _text(fields.get("title"))
        if title is None:
            raise TypeError("`title` is required and must not be blank")
        title, title_year = split_year(title)
        year = _integer(fields.get("year"), "year")
        if year is not None and title_year is not None and year != title_year:
            raise TypeError(f"`year` {year} differs from the title's ({title_year})")
        year = year if year is not None else title_year
        if year is not None and not _YEARS[0] <= year <= _YEARS[1]:
            raise TypeError(f"`year` must be between {_YEARS[0]} and {_YEARS[1]}")
        lists = {}
        for name in _LIST_FIELDS:
            try:
                lists[name] = _list(fields.get(name))
            except TypeError as err:
                raise TypeError(f"`{name}`: {err}") from err
        texts = {}
        for name in _TEXT_FIELDS:
            try:
                texts[name] = _text(fields.get(name))
            except TypeError as err:
                raise TypeError(f"`{name}`: {err}") from err
        movie_id = _integer(fields.get("movie_id"), "movie_id")
    except TypeError as err:
        raise ValueError(f"{where}: {err}.") from err
    return NewMovie(movie_id, title, year, **lists, **texts)


def read_new_movies(path: Path) -> list[NewMovie]:
    """Read and validate a file of new movies.

    Raises:
        FileNotFoundError: No such file.
        ValueError: An unreadable file, an empty one, or a bad record (the
            message names the file, the line or item, and the field).
    """
    try:
        movies = [_movie(where, fields) for where, fields in _records(path)]
    except ValueError as err:
        raise ValueError(f"`{path}`, {err}") from err
    if not movies:
        raise ValueError(f"`{path}` holds no movies.")
    return movies


def movie_texts(movies: list[NewMovie], movie_ids: list[int], top_tags: int):
    """The texts of new movies, written as the ingest stage writes them.

    Returns:
        A table of `MOVIE_TEXTS_SCHEMA` (`movie_id`, `title`, `text`, `year`,
        `genres`), in the order of `movies`.
    """
    from recray.data import (
        LINKS_SCHEMA,
        MOVIES_SCHEMA,
        RATINGS_SCHEMA,
        TAGS_SCHEMA,
        TMDB_SCHEMA,
        MovieLensData,
        build_movie_texts,
    )

    # Each movie joins a TMDB-shaped row of its own (tmdb id = its position),
    # so that tagline, overview and keywords land where ingest puts them.
    positions = list(range(1, len(movies) + 1))
    tag_ids = [i for m, i in zip(movies, movie_ids, strict=True) for _ in m.tags]
    data = MovieLensData(
        ratings=RATINGS_SCHEMA.empty_table(),
        movies=pa.table(
            {
                "movie_id": movie_ids,
                "title": [m.title for m in movies],
                "year": [m.year for m in movies],
                "genres": [m.genres for m in movies],
            },
            schema=MOVIES_SCHEMA,
        ),
        links=pa.table({"movie_id": movie_ids, "tmdb_id": positions}, LINKS_SCHEMA),
        tags=pa.table(
            {
                "user_id": [0 for m in movies for _ in m.tags],
                "movie_id": tag_ids,
                "tag": [tag for m in movies for tag in m.tags],
                "timestamp": [0 for m in movies for _ in m.tags],
            },
            schema=TAGS_SCHEMA,
        ),
    )
    tmdb = pa.table(
        {
            "tmdb_id": positions,
            "title": [m.title for m in movies],
            "overview": [m.overview for m in movies],
            "tagline": [m.tagline for m in movies],
            "genres": [[] for _ in movies],
            "keywords": [m.keywords for m in movies],
            "cast": [m.cast for m in movies],
        },
        schema=TMDB_SCHEMA,
    )
    texts = build_movie_texts(data, tmdb, top_tags)  # sorted by movie id
    order = np.argsort(np.argsort(movie_ids, kind="stable"), kind="stable")
    return texts.take(pa.array(order))


def add_movies(run_dir: Path, path: Path) -> pa.Table:
    """Embed the movies of `path` and add them to the run's catalogue and index.

    Returns:
        The added movies: `movie_id`, `title`, `text`, `year`, `genres`.

    Raises:
        ValueError: A bad file, a movie already in the run (by id, or by
            title and year), or vectors of another size than the run's.
    """
    from recray.embeddings import embed_movie_texts
    from recray.serving.index import build_index

    paths = ServingPaths(Path(run_dir))
    config = load_run_config(paths)
    movies = read_new_movies(path)
    catalogue = load_catalogue(paths)

    # Titles and ids must be new, to the run and within the file.
    known_titles = {fold(t): t for t in catalogue.titles}
    known_ids = set(catalogue.movie_ids.tolist())
    next_id = int(catalogue.movie_ids.max()) + 1
    movie_ids: list[int] = []
    seen_titles: set[str] = set()
    for movie in movies:
        key = fold(movie.full_title)
        if key in known_titles:
            raise ValueError(
                f"`{path}`: `{movie.full_title}` is already in the run as "
                f"`{known_titles[key]}`; leave it out of the file."
            )
        if key in seen_titles:
            raise ValueError(f"`{path}`: `{movie.full_title}` appears twice; keep one.")
        seen_titles.add(key)
        movie_id = movie.movie_id
        if movie_id is None:
            while next_id in known_ids:
                next_id += 1
            movie_id = next_id
        elif movie_id in known_ids:
            raise ValueError(
                f"`{path}`: `movie_id` {movie_id} of `{movie.full_title}` is "
                "taken; leave `movie_id` out to get a new one."
            )
        known_ids.add(movie_id)
        movie_ids.append(movie_id)

    texts = movie_texts(movies, movie_ids, config.data.top_tags)
    if catalogue.features is not None and catalogue.features.genre_features:
        warn_of_unknown_genres(texts["genres"].to_pylist())
    result = embed_movie_texts(texts, config.embedding)
    if result.dim != catalogue.vectors.shape[1]:
        raise ValueError(
            f"`{config.embedding.embedding_model}` gave {result.dim}-dim vectors, "
            f"the run's are {catalogue.vectors.shape[1]}-dim: the run's embedder "
            "settings changed; restore them in its `config.yaml`."
        )

    added = texts.cast(ADDED_SCHEMA)
    vectors = result.vectors.astype(np.float32)
    if paths.added_movies.exists():
        old = pq.read_table(paths.added_movies)
        added = pa.concat_tables([old, added])
        vectors = np.concatenate([catalogue.vectors[catalogue.added], vectors])
    # The index first: a failure there leaves the run's files as they were.
    extended = catalogue.extended(texts, result.vectors)
    build_index(paths, extended)
    np.savez(
        paths.added_embeddings,
        movie_id=added["movie_id"].to_numpy(),
        vectors=vectors,
    )
    pq.write_table(added, paths.added_movies)
    logger.info(
        "Added %d movies to %s (%d added in all)",
        texts.num_rows,
        paths.root,
        added.num_rows,
    )
    return texts
