"""Tests of the movie texts built from MovieLens and TMDB."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recray.data.movielens import (
    LINKS_SCHEMA,
    MOVIES_SCHEMA,
    RATINGS_SCHEMA,
    TAGS_SCHEMA,
    MovieLensData,
    load_movielens,
)
from recray.data.report import DataReport
from recray.data.texts import build_movie_texts, log_examples
from recray.data.tmdb import TMDB_SCHEMA, load_tmdb


def small_movielens(tags: list[tuple[int, str]]) -> MovieLensData:
    """Three movies: Heat joins TMDB, Jumanji has a link TMDB lacks, one has none."""
    movies = pa.Table.from_pylist(
        [
            # Out of order on purpose: texts come back sorted by movie id.
            {
                "movie_id": 6,
                "title": "Heat",
                "year": 1995,
                "genres": ["Action", "Crime"],
            },
            {"movie_id": 2, "title": "Jumanji", "year": 1995, "genres": ["Fantasy"]},
            {"movie_id": 9, "title": "Black Mirror", "year": None, "genres": []},
        ],
        schema=MOVIES_SCHEMA,
    )
    links = pa.Table.from_pylist(
        [{"movie_id": 6, "tmdb_id": 949}, {"movie_id": 2, "tmdb_id": 8844}],
        schema=LINKS_SCHEMA,
    )
    tag_rows = [
        {"user_id": 1, "movie_id": movie_id, "tag": tag, "timestamp": 0}
        for movie_id, tag in tags
    ]
    return MovieLensData(
        ratings=RATINGS_SCHEMA.empty_table(),
        movies=movies,
        links=links,
        tags=pa.Table.from_pylist(tag_rows, schema=TAGS_SCHEMA),
    )


def small_tmdb() -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "tmdb_id": 949,
                "title": "Heat",
                "overview": "Obsessive master thief\n Neil McCauley leads a crew.",
                "tagline": "A Los Angeles crime saga",
                "genres": ["Action", "Crime", "Drama", "Thriller"],
                "keywords": ["robbery", "detective"],
            },
            {
                "tmdb_id": 1,
                "title": "Unlinked",
                "overview": "Nobody links here.",
                "tagline": None,
                "genres": [],
                "keywords": [],
            },
        ],
        schema=TMDB_SCHEMA,
    )


def texts_by_id(texts: pa.Table) -> dict[int, str]:
    return dict(
        zip(texts["movie_id"].to_pylist(), texts["text"].to_pylist(), strict=True)
    )


def test_text_reads_as_one_paragraph() -> None:
    movielens = small_movielens(
        [
            (6, "Pacino"),
            (6, "pacino"),
            (6, "  Heist "),
            (6, "De Niro"),
            (6, "atmospheric"),
            (2, "Board Game"),
            (9, "dark"),
            (9, "Dark"),
        ]
    )

    texts = build_movie_texts(movielens, small_tmdb(), top_tags=3)

    assert texts.schema.names == ["movie_id", "title", "text", "year", "genres"]
    assert texts["movie_id"].to_pylist() == [2, 6, 9]
    assert texts["title"].to_pylist() == [
        "Jumanji (1995)",
        "Heat (1995)",
        "Black Mirror",
    ]
    # What the towers read of year and genres, beside the text.
    assert texts["year"].to_pylist() == [1995, 1995, None]
    assert texts["genres"].to_pylist() == [["Fantasy"], ["Action", "Crime"], []]
    assert texts_by_id(texts) == {
        # Tags: "pacino" twice wins, then ties alphabetically, case-folded.
        6: "Heat (1995). Genres: Action, Crime. "
        "Tagline: A Los Angeles crime saga. "
        "Overview: Obsessive master thief Neil McCauley leads a crew. "
        "Keywords: robbery, detective. "
        "Tags: pacino, atmospheric, de niro.",
        # A link whose TMDB id is not in the dump: MovieLens text only.
        2: "Jumanji (1995). Genres: Fantasy. Tags: board game.",
        # No year, no genres, no link: title and tags.
        9: "Black Mirror. Tags: dark.",
    }


def test_without_tmdb_or_tags_the_title_remains() -> None:
    movielens = small_movielens([(6, "heist")])

    texts = build_movie_texts(movielens, tmdb=None, top_tags=0)

    assert texts_by_id(texts) == {
        2: "Jumanji (1995). Genres: Fantasy.",
        6: "Heat (1995). Genres: Action, Crime.",
        9: "Black Mirror.",
    }


def test_negative_top_tags_is_refused() -> None:
    with pytest.raises(ValueError, match="`top_tags` must be 0 or more, got -1"):
        build_movie_texts(small_movielens([]), None, top_tags=-1)


def test_log_examples_logs_spread_texts(caplog: pytest.LogCaptureFixture) -> None:
    texts = build_movie_texts(small_movielens([]), None, top_tags=0)
    logger = logging.getLogger("test_texts")

    with caplog.at_level(logging.INFO, logger="test_texts"):
        log_examples(texts, logger, count=2)

    assert [record.getMessage() for record in caplog.records] == [
        "Text of movie 2: Jumanji (1995). Genres: Fantasy.",
        "Text of movie 9: Black Mirror.",
    ]


# ---- the real data --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_texts(movielens_small: Path, tmdb_5000: Path) -> pa.Table:
    report = DataReport()
    movielens = load_movielens(movielens_small, report)
    return build_movie_texts(movielens, load_tmdb(tmdb_5000, report), top_tags=5)


def test_real_one_nonempty_text_per_movie(real_texts: pa.Table) -> None:
    movie_ids = real_texts["movie_id"].to_pylist()

    assert real_texts.num_rows == 9_742
    assert movie_ids == sorted(set(movie_ids))
    assert pc.min(pc.utf8_length(real_texts["text"])).as_py() > 0
    assert real_texts["text"].null_count == 0
    for title, text in zip(
        real_texts["title"].to_pylist(), real_texts["text"].to_pylist(), strict=True
    ):
        assert text.startswith(title)


def test_real_toy_story_has_overview_keywords_and_tags(real_texts: pa.Table) -> None:
    toy_story = texts_by_id(real_texts)[1]

    assert toy_story.startswith(
        "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. "
        "Overview: Led by Woody, Andy's toys live happily"
    )
    assert "Keywords: jealousy, toy, boy," in toy_story
    # tags.csv has "pixar" twice and "fun" once for Toy Story.
    assert toy_story.endswith("Tags: pixar, fun.")


def test_real_movie_without_tmdb_gets_title_genres_and_tags(
    real_texts: pa.Table,
) -> None:
    texts = texts_by_id(real_texts)

    # Jumanji's TMDB id (8844) is not among the 5000 movies of the dump.
    assert texts[2] == (
        "Jumanji (1995). Genres: Adventure, Children, Fantasy. "
        "Tags: fantasy, game, magic board game, robin williams."
    )
    joined = pc.sum(pc.match_substring(real_texts["text"], "Overview: ")).as_py()
    # 3,537 movies join TMDB (data README); a few of them lack an overview.
    assert 3_500 <= joined <= 3_537
