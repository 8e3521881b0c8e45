"""Tests of the MovieLens reader and of the drop report it fills."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recray.data.movielens import load_movielens
from recray.data.report import DataReport

MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children\n"
    '2,"American President, The (1995)",Comedy|Drama|Romance\n'
    "3,Black Mirror,(no genres listed)\n"
)
RATINGS_HEADER = "userId,movieId,rating,timestamp\n"
TAGS_HEADER = "userId,movieId,tag,timestamp\n"
LINKS_HEADER = "movieId,imdbId,tmdbId\n"


def write_movielens(
    folder: Path,
    ratings: str,
    movies: str = MOVIES,
    links: str | None = None,
    tags: str | None = None,
) -> Path:
    """Write a small MovieLens folder; `links` and `tags` only when given."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings)
    (folder / "movies.csv").write_text(movies)
    if links is not None:
        (folder / "links.csv").write_text(links)
    if tags is not None:
        (folder / "tags.csv").write_text(tags)
    return folder


def assert_rows_add_up(report: DataReport, file: str, kept: int) -> None:
    """Every row read is either kept or counted as dropped."""
    dropped = sum(count for (name, _), count in report.dropped.items() if name == file)
    assert report.rows_read[file] == kept + dropped


# ---- the real ml-latest-small ---------------------------------------------


@pytest.fixture(scope="module")
def real(movielens_small: Path) -> tuple:
    report = DataReport()
    return load_movielens(movielens_small, report), report


def test_real_counts_match_the_dataset_readme(real: tuple) -> None:
    data, report = real

    assert data.ratings.num_rows == 100_836
    assert pc.count_distinct(data.ratings["user_id"]).as_py() == 610
    assert data.movies.num_rows == 9_742
    assert data.links.num_rows == 9_742
    assert data.tags.num_rows == 3_683
    assert report.rows_read == {
        "movies.csv": 9_742,
        "ratings.csv": 100_836,
        "links.csv": 9_742,
        "tags.csv": 3_683,
    }
    # ml-latest-small as published is clean: any drop here is a reader bug.
    assert report.dropped == {}
    assert report.total_dropped() == 0


def test_real_schemas(real: tuple) -> None:
    data, _ = real

    assert data.ratings.schema.names == ["user_id", "movie_id", "rating", "timestamp"]
    assert data.ratings.schema.types == [
        pa.int64(),
        pa.int64(),
        pa.float32(),
        pa.int64(),
    ]
    assert data.movies.schema.names == ["movie_id", "title", "year", "genres"]
    assert data.movies.schema.types == [
        pa.int64(),
        pa.string(),
        pa.int32(),
        pa.list_(pa.string()),
    ]
    assert data.links.schema.names == ["movie_id", "tmdb_id"]
    assert data.links.schema.types == [pa.int64(), pa.int64()]
    assert data.tags.schema.names == ["user_id", "movie_id", "tag", "timestamp"]
    assert data.tags.schema.types == [pa.int64(), pa.int64(), pa.string(), pa.int64()]


def test_real_titles_years_and_genres(real: tuple) -> None:
    data, _ = real
    movies = {row["movie_id"]: row for row in data.movies.to_pylist()}

    assert movies[1] == {
        "movie_id": 1,
        "title": "Toy Story",
        "year": 1995,
        "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
    }
    # The file has a space after the year here.
    dusk = [
        m for m in movies.values() if m["title"].startswith("From Dusk Till Dawn 2")
    ]
    assert [(m["title"], m["year"]) for m in dusk] == [
        ("From Dusk Till Dawn 2: Texas Blood Money", 1999)
    ]
    # Doubled spaces inside a title read as one.
    vidocq = [m for m in movies.values() if m["title"].startswith("Dark Portals")]
    assert [(m["title"], m["year"]) for m in vidocq] == [
        ("Dark Portals: The Chronicles of Vidocq (Vidocq)", 2001)
    ]
    # No year in the title: the title stays whole and the year is null.
    assert movies[176601]["title"] == "Black Mirror"
    assert movies[176601]["year"] is None
    assert movies[176601]["genres"] == []
    assert data.movies["year"].null_count == 13
    assert (
        pc.sum(pc.equal(pc.list_value_length(data.movies["genres"]), 0)).as_py() == 34
    )


def test_real_blank_tmdb_ids_are_kept_as_null(real: tuple) -> None:
    data, _ = real
    links = {row["movie_id"]: row["tmdb_id"] for row in data.links.to_pylist()}

    assert links[1] == 862
    assert data.links["tmdb_id"].null_count == 8


# ---- missing files and headers ----------------------------------------------


def test_missing_folder_names_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(FileNotFoundError) as caught:
        load_movielens(missing, DataReport())

    message = str(caught.value)
    assert str(missing) in message
    assert "`--data-dir`" in message
    assert "`RECRAY_DATA_DIR`" in message
    assert "`ratings.csv`" in message


def test_missing_ratings_lists_found_and_expected_files(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(MOVIES)
    (tmp_path / "notes.txt").write_text("hello")

    with pytest.raises(FileNotFoundError) as caught:
        load_movielens(tmp_path, DataReport())

    message = str(caught.value)
    assert "found `movies.csv`, `notes.txt`" in message
    assert "expected `ratings.csv` and `movies.csv`" in message
    assert "`--data-dir`" in message
    assert "`RECRAY_DATA_DIR`" in message


def test_header_without_rating_names_file_and_columns(tmp_path: Path) -> None:
    folder = write_movielens(tmp_path, "userId,movieId,score,timestamp\n1,1,4.0,5\n")

    with pytest.raises(ValueError) as caught:
        load_movielens(folder, DataReport())

    message = str(caught.value)
    assert "ratings.csv" in message
    assert "lacks column(s) `rating`" in message
    assert "header has `userId`, `movieId`, `score`, `timestamp`" in message
    assert "expected `userId`, `movieId`, `rating`, `timestamp`" in message


def test_empty_movies_file_is_a_missing_header(tmp_path: Path) -> None:
    folder = write_movielens(tmp_path, RATINGS_HEADER, movies="")

    with pytest.raises(ValueError, match=r"movies\.csv.*the file is empty"):
        load_movielens(folder, DataReport())


def test_optional_files_absent_give_empty_tables(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_movielens(tmp_path, RATINGS_HEADER + "1,1,4.0,10\n")

    with caplog.at_level(logging.INFO, logger="recray.data.movielens"):
        data = load_movielens(folder, DataReport())

    assert data.links.num_rows == 0
    assert data.links.schema.names == ["movie_id", "tmdb_id"]
    assert data.tags.num_rows == 0
    assert data.tags.schema.names == ["user_id", "movie_id", "tag", "timestamp"]
    assert "No `links.csv`" in caplog.text
    assert "No `tags.csv`" in caplog.text


# ---- row validation ---------------------------------------------------------


def test_bad_fields_drop_their_rows_and_are_counted(tmp_path: Path) -> None:
    ratings = (
        RATINGS_HEADER
        + "1,1,4.0,100\n"  # kept
        + "x,1,4.0,100\n"  # non-integer user
        + ",2,4.0,100\n"  # missing user
        + "2,1,good,100\n"  # non-numeric rating
        + "2,2,3.5,\n"  # missing timestamp
        + "2,3,3.5\n"  # too few fields
        + "3,3,2.0,100\n"  # kept
    )
    report = DataReport()

    data = load_movielens(write_movielens(tmp_path, ratings), report)

    assert data.ratings.to_pylist() == [
        {"user_id": 1, "movie_id": 1, "rating": 4.0, "timestamp": 100},
        {"user_id": 3, "movie_id": 3, "rating": 2.0, "timestamp": 100},
    ]
    assert report.dropped == {
        ("ratings.csv", "malformed line, expected 4 fields"): 1,
        ("ratings.csv", "missing or non-integer `userId`"): 2,
        ("ratings.csv", "missing or non-numeric `rating`"): 1,
        ("ratings.csv", "missing or non-integer `timestamp`"): 1,
    }
    assert (
        "userId='x'"
        in report.examples[("ratings.csv", "missing or non-integer `userId`")]
    )
    assert_rows_add_up(report, "ratings.csv", kept=2)


def test_ratings_off_the_scale_are_dropped(tmp_path: Path) -> None:
    ratings = (
        RATINGS_HEADER
        + "1,1,0.5,1\n"  # lowest rating: kept
        + "1,2,5.0,1\n"  # highest rating: kept
        + "2,1,0.0,1\n"
        + "2,2,5.5,1\n"
        + "3,1,3.3,1\n"
        + "3,2,-1,1\n"
    )
    report = DataReport()

    data = load_movielens(write_movielens(tmp_path, ratings), report)

    assert data.ratings["rating"].to_pylist() == [0.5, 5.0]
    assert report.dropped == {
        ("ratings.csv", "`rating` outside 0.5 to 5.0"): 3,
        ("ratings.csv", "`rating` not a multiple of 0.5"): 1,
    }


def test_negative_timestamps_are_dropped(tmp_path: Path) -> None:
    ratings = RATINGS_HEADER + "1,1,4.0,-5\n1,2,4.0,0\n"
    tags = TAGS_HEADER + "1,1,fun,-1\n1,1,pixar,3\n"
    report = DataReport()

    data = load_movielens(write_movielens(tmp_path, ratings, tags=tags), report)

    assert data.ratings["timestamp"].to_pylist() == [0]
    assert data.tags["tag"].to_pylist() == ["pixar"]
    assert report.dropped == {
        ("ratings.csv", "negative `timestamp`"): 1,
        ("tags.csv", "negative `timestamp`"): 1,
    }


def test_duplicate_ratings_keep_the_latest(tmp_path: Path) -> None:
    ratings = (
        RATINGS_HEADER
        + "1,1,2.0,300\n"  # latest of user 1, movie 1
        + "1,1,3.0,100\n"
        + "1,1,4.0,200\n"
        + "2,1,1.0,50\n"  # same timestamp: the later line wins
        + "2,1,1.5,50\n"
        + "2,2,4.5,10\n"
    )
    report = DataReport()

    data = load_movielens(write_movielens(tmp_path, ratings), report)

    assert data.ratings.to_pylist() == [
        {"user_id": 1, "movie_id": 1, "rating": 2.0, "timestamp": 300},
        {"user_id": 2, "movie_id": 1, "rating": 1.5, "timestamp": 50},
        {"user_id": 2, "movie_id": 2, "rating": 4.5, "timestamp": 10},
    ]
    reason = "duplicate (`userId`, `movieId`) rating, kept the latest by `timestamp`"
    assert report.dropped == {("ratings.csv", reason): 3}
    assert_rows_add_up(report, "ratings.csv", kept=3)


def test_unknown_movies_are_dropped_from_ratings_tags_and_links(
    tmp_path: Path,
) -> None:
    ratings = RATINGS_HEADER + "1,1,4.0,1\n1,99,4.0,1\n2,98,3.0,1\n"
    tags = TAGS_HEADER + "1,1,pixar,1\n1,99,lost,1\n"
    links = LINKS_HEADER + "1,0114709,862\n2,0112346,9087\n3,,\n99,0000001,5\n"
    report = DataReport()

    data = load_movielens(
        write_movielens(tmp_path, ratings, links=links, tags=tags), report
    )

    assert data.ratings["movie_id"].to_pylist() == [1]
    assert data.tags["movie_id"].to_pylist() == [1]
    assert data.links.to_pylist() == [
        {"movie_id": 1, "tmdb_id": 862},
        {"movie_id": 2, "tmdb_id": 9087},
        {"movie_id": 3, "tmdb_id": None},
    ]
    assert report.dropped == {
        ("ratings.csv", "`movieId` not in `movies.csv`"): 2,
        ("tags.csv", "`movieId` not in `movies.csv`"): 1,
        ("links.csv", "`movieId` not in `movies.csv`"): 1,
    }


def test_bad_links_and_tags_rows_are_dropped(tmp_path: Path) -> None:
    links = LINKS_HEADER + "1,0114709,862\n1,0114709,863\n2,0112346,abc\n"
    tags = TAGS_HEADER + "1,1,,5\n1,1,  funny  ,6\n"
    report = DataReport()

    data = load_movielens(
        write_movielens(tmp_path, RATINGS_HEADER, links=links, tags=tags), report
    )

    assert data.links.to_pylist() == [{"movie_id": 1, "tmdb_id": 862}]
    assert data.tags["tag"].to_pylist() == ["funny"]
    assert report.dropped == {
        ("links.csv", "non-integer `tmdbId`"): 1,
        ("links.csv", "duplicate `movieId`, kept the first"): 1,
        ("tags.csv", "missing `tag`"): 1,
    }


def test_duplicate_movies_keep_the_first(tmp_path: Path) -> None:
    movies = MOVIES + "1,Toy Story Again (1999),Comedy\n"
    report = DataReport()

    data = load_movielens(write_movielens(tmp_path, RATINGS_HEADER, movies), report)

    assert data.movies["movie_id"].to_pylist() == [1, 2, 3]
    assert data.movies.to_pylist()[0]["title"] == "Toy Story"
    assert report.dropped == {("movies.csv", "duplicate `movieId`, kept the first"): 1}
    assert (
        "Toy Story Again"
        in report.examples[("movies.csv", "duplicate `movieId`, kept the first")]
    )


def test_titles_with_commas_and_without_year(tmp_path: Path) -> None:
    data = load_movielens(write_movielens(tmp_path, RATINGS_HEADER), DataReport())

    assert data.movies.to_pylist() == [
        {
            "movie_id": 1,
            "title": "Toy Story",
            "year": 1995,
            "genres": ["Adventure", "Animation", "Children"],
        },
        {
            "movie_id": 2,
            "title": "American President, The",
            "year": 1995,
            "genres": ["Comedy", "Drama", "Romance"],
        },
        {"movie_id": 3, "title": "Black Mirror", "year": None, "genres": []},
    ]


# ---- the report -------------------------------------------------------------


def test_report_counts_totals_and_json(caplog: pytest.LogCaptureFixture) -> None:
    report = DataReport()
    report.read("ratings.csv", 10)
    report.read("ratings.csv", 5)
    report.drop("ratings.csv", "negative `timestamp`", 2, example="userId=1")
    report.drop("ratings.csv", "negative `timestamp`", 1, example="userId=2")
    report.drop("ratings.csv", "nothing wrong", 0)
    report.drop("tags.csv", "missing `tag`", 4)

    assert report.rows_read == {"ratings.csv": 15}
    assert report.dropped == {
        ("ratings.csv", "negative `timestamp`"): 3,
        ("tags.csv", "missing `tag`"): 4,
    }
    assert report.total_dropped() == 7
    assert json.loads(json.dumps(report.to_dict())) == {
        "rows_read": {"ratings.csv": 15},
        "dropped": [
            {
                "file": "ratings.csv",
                "reason": "negative `timestamp`",
                "count": 3,
                "example": "userId=1",
            },
            {
                "file": "tags.csv",
                "reason": "missing `tag`",
                "count": 4,
                "example": None,
            },
        ],
        "total_dropped": 7,
    }

    logger = logging.getLogger("test_report")
    with caplog.at_level(logging.INFO, logger="test_report"):
        report.log_summary(logger)
    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert levels == [
        (
            logging.WARNING,
            "ratings.csv: dropped 3: negative `timestamp` (first: userId=1)",
        ),
        (logging.WARNING, "tags.csv: dropped 4: missing `tag`"),
        (logging.INFO, "Data report: read 15 rows from 1 files, dropped 7."),
    ]


def test_report_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        DataReport().drop("ratings.csv", "whatever", -1)
