"""Tests of the TMDB 5000 reader."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pytest

from recray.data.report import DataReport
from recray.data.tmdb import load_tmdb

HEADER = ["budget", "genres", "id", "keywords", "overview", "tagline", "title"]
GENRES = '[{"id": 28, "name": "Action"}, {"id": 80, "name": "Crime"}]'
KEYWORDS = '[{"id": 1, "name": "robbery"}, {"id": 2, "name": "detective"}]'


def write_tmdb(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    """Write a TMDB-like CSV, quoting as the real dump does."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def row(
    tmdb_id: str,
    title: str = "Heat",
    genres: str = GENRES,
    keywords: str = KEYWORDS,
    overview: str = "A thief and a detective.",
    tagline: str = "A Los Angeles crime saga",
) -> list[str]:
    return ["0", genres, tmdb_id, keywords, overview, tagline, title]


# ---- the real dump ------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmdb_5000: Path) -> tuple[pa.Table, DataReport]:
    report = DataReport()
    return load_tmdb(tmdb_5000, report), report


def test_real_dump_reads_whole_and_clean(real: tuple[pa.Table, DataReport]) -> None:
    table, report = real

    assert table.num_rows == 4_803
    assert report.rows_read == {"tmdb_5000_movies.csv": 4_803}
    assert report.dropped == {}
    assert table.schema.names == [
        "tmdb_id",
        "title",
        "overview",
        "tagline",
        "genres",
        "keywords",
    ]
    assert table.schema.types == [
        pa.int64(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.list_(pa.string()),
        pa.list_(pa.string()),
    ]


def test_real_toy_story_and_avatar(real: tuple[pa.Table, DataReport]) -> None:
    table, _ = real
    movies = {movie["tmdb_id"]: movie for movie in table.to_pylist()}

    toy_story = movies[862]
    assert toy_story["title"] == "Toy Story"
    assert toy_story["overview"].startswith("Led by Woody, Andy's toys live happily")
    # The dump has no tagline for Toy Story: blank reads as null, not "".
    assert toy_story["tagline"] is None
    assert toy_story["genres"] == ["Animation", "Comedy", "Family"]
    assert toy_story["keywords"][:3] == ["jealousy", "toy", "boy"]

    avatar = movies[19995]
    assert avatar["tagline"] == "Enter the World of Pandora."
    assert avatar["genres"] == ["Action", "Adventure", "Fantasy", "Science Fiction"]
    assert len(avatar["keywords"]) == 21


# ---- errors -------------------------------------------------------------------


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "tmdb.csv"

    with pytest.raises(FileNotFoundError) as caught:
        load_tmdb(missing, DataReport())

    message = str(caught.value)
    assert str(missing) in message
    assert "`--tmdb-path`" in message
    assert "`RECRAY_TMDB_PATH`" in message
    assert "MovieLens text only" in message


def test_header_without_keywords_names_file_and_columns(tmp_path: Path) -> None:
    header = [name for name in HEADER if name != "keywords"]
    path = write_tmdb(tmp_path / "tmdb.csv", [], header=header)

    with pytest.raises(ValueError) as caught:
        load_tmdb(path, DataReport())

    message = str(caught.value)
    assert "tmdb.csv" in message
    assert "lacks column(s) `keywords`" in message
    assert "header has `budget`, `genres`, `id`, `overview`" in message
    assert "`tmdb_5000_movies.csv`" in message


# ---- row and field validation -------------------------------------------------


def test_bad_and_duplicate_ids_drop_rows(tmp_path: Path) -> None:
    rows = [
        row("949", title="Heat"),
        row("", title="No id"),
        row("abc", title="Bad id"),
        row("949", title="Heat again"),
        row("862", title="Toy Story"),
    ]
    report = DataReport()

    table = load_tmdb(write_tmdb(tmp_path / "tmdb.csv", rows), report)

    assert table["tmdb_id"].to_pylist() == [949, 862]
    assert table["title"].to_pylist() == ["Heat", "Toy Story"]
    assert report.rows_read == {"tmdb.csv": 5}
    assert report.dropped == {
        ("tmdb.csv", "missing or non-integer `id`"): 2,
        ("tmdb.csv", "duplicate `id`, kept the first"): 1,
    }
    assert (
        "Heat again" in report.examples[("tmdb.csv", "duplicate `id`, kept the first")]
    )


def test_malformed_json_empties_the_field_and_keeps_the_row(tmp_path: Path) -> None:
    rows = [
        row("1", keywords='[{"id": 1, "name": "heist"'),  # cut short
        row("2", genres='{"id": 28, "name": "Action"}'),  # not a list
        row("3", keywords='[{"id": 1}]'),  # no name
        row("4", genres="", keywords="[]"),  # blank and empty: not malformed
        row("5"),
    ]
    report = DataReport()

    table = load_tmdb(write_tmdb(tmp_path / "tmdb.csv", rows), report)

    assert table["tmdb_id"].to_pylist() == [1, 2, 3, 4, 5]
    assert table["keywords"].to_pylist() == [
        [],
        ["robbery", "detective"],
        [],
        [],
        ["robbery", "detective"],
    ]
    assert table["genres"].to_pylist() == [
        ["Action", "Crime"],
        [],
        ["Action", "Crime"],
        [],
        ["Action", "Crime"],
    ]
    assert report.dropped == {
        ("tmdb.csv", "malformed JSON in `genres`, field emptied"): 1,
        ("tmdb.csv", "malformed JSON in `keywords`, field emptied"): 2,
    }


def test_blank_texts_are_null_and_multiline_overviews_read(tmp_path: Path) -> None:
    rows = [
        row("1", overview="First line.\nSecond line.", tagline="  "),
        row("2", overview="", tagline="Short."),
    ]

    table = load_tmdb(write_tmdb(tmp_path / "tmdb.csv", rows), DataReport())

    assert table["overview"].to_pylist() == ["First line.\nSecond line.", None]
    assert table["tagline"].to_pylist() == [None, "Short."]
