"""One descriptive paragraph per movie, the text that the embedding model reads.

A movie's text starts with its MovieLens title, year and genres. Where
`links.csv` joins the movie to TMDB, the tagline, overview, protagonists (The
Movies Dataset's cast) and TMDB keywords follow; last come the movie's most
frequent user tags. A blank or unknown `tmdbId` leaves the MovieLens text
only. For example:

    Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy.
    Overview: Led by Woody, Andy's toys live happily in his room ... Starring:
    Tom Hanks, Tim Allen, Don Rickles. Keywords: jealousy, toy, boy. Tags:
    pixar, fun.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recray.data.movielens import MovieLensData

logger = logging.getLogger(__name__)

MOVIE_TEXTS_SCHEMA = pa.schema(
    [
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        # Structured copies of what the text says, for the towers' year and
        # genre features (recray.data.movie_features).
        pa.field("year", pa.int32()),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
    ]
)


def build_movie_texts(
    movielens: MovieLensData, tmdb: pa.Table | None, top_tags: int
) -> pa.Table:
    """Build the descriptive text of every MovieLens movie.

    Args:
        movielens: Validated MovieLens tables from `load_movielens`.
        tmdb: TMDB table from `load_tmdb`, or None to use MovieLens text only.
        top_tags: Number of most frequent user tags to add per movie
            (case-folded; ties go to the alphabetically first); 0 for none.

    Returns:
        One row per movie of `movielens.movies`, sorted by `movie_id`, with
        schema `MOVIE_TEXTS_SCHEMA`: `title` with the year, e.g.
        "Toy Story (1995)", the non-empty `text`, and the MovieLens `year`
        (null when the title has none) and `genres`.

    Raises:
        ValueError: `top_tags` is negative.
    """
    if top_tags < 0:
        raise ValueError(
            f"`top_tags` must be 0 or more, got {top_tags}. Set `top_tags` to 0 "
            "to leave user tags out of the movie texts."
        )
    movies = movielens.movies.sort_by("movie_id")
    movie_ids = movies["movie_id"].to_pylist()

    titles = [
        _title_with_year(title, year)
        for title, year in zip(
            movies["title"].to_pylist(), movies["year"].to_pylist(), strict=True
        )
    ]
    genres = movies["genres"].to_pylist()
    taglines, overviews, keywords, cast = _tmdb_columns(movies, movielens.links, tmdb)
    tags = _top_tags(movielens.tags, top_tags)

    texts = []
    for index, movie_id in enumerate(movie_ids):
        parts = [
            _sentence(titles[index]),
            _labelled("Genres", ", ".join(genres[index])),
            _labelled("Tagline", taglines[index]),
            _labelled("Overview", overviews[index]),
            _labelled("Starring", ", ".join(cast[index] or [])),
            _labelled("Keywords", ", ".join(keywords[index] or [])),
            _labelled("Tags", ", ".join(tags.get(movie_id, []))),
        ]
        texts.append(" ".join(part for part in parts if part))

    return pa.table(
        {
            "movie_id": movie_ids,
            "title": titles,
            "text": texts,
            "year": movies["year"],
            "genres": genres,
        },
        schema=MOVIE_TEXTS_SCHEMA,
    )


def log_examples(texts: pa.Table, logger: logging.Logger, count: int = 3) -> None:
    """Log `count` movie texts at INFO, spread over the table.

    Args:
        texts: Output of `build_movie_texts`.
        logger: Logger of the caller, so the lines carry its name.
        count: Number of texts to log.
    """
    if texts.num_rows == 0 or count <= 0:
        return
    # Spread over the catalogue: the first movies all join TMDB, later ones
    # often do not, and both kinds are worth a look.
    rows = np.unique(np.linspace(0, texts.num_rows - 1, num=count).astype(int))
    for row in texts.take(pa.array(rows)).to_pylist():
        logger.info("Text of movie %d: %s", row["movie_id"], row["text"])


def _title_with_year(title: str, year: int | None) -> str:
    return title if year is None else f"{title} ({year})"


def _sentence(text: str | None) -> str:
    """Return `text` with whitespace collapsed and a full stop unless it has one."""
    text = " ".join((text or "").split())
    if not text:
        return ""
    return text if text[-1] in ".!?…" else f"{text}."


def _labelled(label: str, text: str | None) -> str:
    text = _sentence(text)
    return f"{label}: {text}" if text else ""


def _tmdb_columns(
    movies: pa.Table, links: pa.Table, tmdb: pa.Table | None
) -> tuple[list, list, list, list]:
    """Return tagline, overview, keywords and cast per movie; None without TMDB."""
    if tmdb is None or tmdb.num_rows == 0 or links.num_rows == 0:
        nothing: list[None] = [None] * movies.num_rows
        return nothing, nothing, nothing, nothing
    if "cast" not in tmdb.column_names:
        tmdb = tmdb.append_column(
            "cast", pa.nulls(tmdb.num_rows, pa.list_(pa.string()))
        )

    # Row of each movie in `links`, then row of its TMDB id in `tmdb`; null
    # where the movie has no link, a blank `tmdbId` or no TMDB entry.
    link_rows = pc.index_in(movies["movie_id"], value_set=links["movie_id"])
    tmdb_rows_of_links = pc.index_in(links["tmdb_id"], value_set=tmdb["tmdb_id"])
    tmdb_rows = pc.take(tmdb_rows_of_links, link_rows)

    joined = tmdb.select(["tagline", "overview", "keywords", "cast"]).take(tmdb_rows)
    joined_count = len(tmdb_rows) - tmdb_rows.null_count
    logger.info(
        "%d of %d movies join a TMDB entry; the rest get MovieLens text only.",
        joined_count,
        movies.num_rows,
    )
    return (
        joined["tagline"].to_pylist(),
        joined["overview"].to_pylist(),
        joined["keywords"].to_pylist(),
        joined["cast"].to_pylist(),
    )


def _top_tags(tags: pa.Table, top_tags: int) -> dict[int, list[str]]:
    """Return each movie's `top_tags` most frequent case-folded tags."""
    if top_tags == 0 or tags.num_rows == 0:
        return {}

    # Fold each distinct tag once rather than each tag application.
    encoded = pc.dictionary_encode(tags["tag"].combine_chunks())
    folded = pa.array(
        [" ".join(tag.casefold().split()) for tag in encoded.dictionary.to_pylist()],
        type=pa.string(),
    )
    folded_tags = pc.take(folded, encoded.indices)

    counts = (
        pa.table({"movie_id": tags["movie_id"], "tag": folded_tags})
        .group_by(["movie_id", "tag"])
        .aggregate([([], "count_all")])
        .sort_by(
            [
                ("movie_id", "ascending"),
                ("count_all", "descending"),
                ("tag", "ascending"),
            ]
        )
    )

    # Position of each row within its movie's block, to keep the first few.
    movie_ids = counts["movie_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, movie_ids[1:] != movie_ids[:-1]])
    block_sizes = np.diff(np.r_[starts, movie_ids.size])
    positions = np.arange(movie_ids.size) - np.repeat(starts, block_sizes)
    kept = counts.filter(pa.array(positions < top_tags))

    top: dict[int, list[str]] = {}
    for movie_id, tag in zip(
        kept["movie_id"].to_pylist(), kept["tag"].to_pylist(), strict=True
    ):
        top.setdefault(movie_id, []).append(tag)
    return top
