"""Tests of the TMDB 5000 reader."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pytest

from recray.data.report import DataReport
from recray.data.tmdb import TMDB_SCHEMA, load_tmdb

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
        "cast",
    ]
    assert table.schema.types == [
        pa.int64(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.list_(pa.string()),
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


# ---- "The Movies Dataset" layout ------------------------------------------------

METADATA_HEADER = ["adult", "genres", "id", "overview", "tagline", "title", "video"]
CAST = (
    "[{'cast_id': 14, 'character': 'Woody (voice)', 'name': 'Tom Hanks', "
    "'order': 0}, {'cast_id': 15, 'character': 'Buzz', 'name': 'Tim Allen', "
    "'order': 1}, {'cast_id': 16, 'character': 'Mr. Potato Head', "
    """'name': "Don O'Rickles", 'order': 2}, {'cast_id': 17, 'character': 'Hamm', """
    "'name': 'John Ratzenberger', 'order': 3}]"
)


def write_movies_dataset(folder: Path, credits: bool = True) -> Path:
    folder.mkdir(exist_ok=True)
    genres = "[{'id': 16, 'name': 'Animation'}, {'id': 35, 'name': 'Comedy'}]"
    write_tmdb(
        folder / "movies_metadata.csv",
        [
            [
                "False",
                genres,
                "862",
                "Woody and Buzz.\nToys.",
                "",
                "Toy Story",
                "False",
            ],
            ["False", "[]", "1997-08-20", "A date in the id column.", "", "X", "F"],
            ["False", "[{'id': 1, 'na", "949", "A heist.", "Crime saga", "Heat", "F"],
            ["False", "[]", "862", "Duplicate.", "", "Toy Story", "False"],
        ],
        header=METADATA_HEADER,
    )
    if credits:
        write_tmdb(
            folder / "credits.csv",
            [[CAST, "[]", "862"], ["[]", "[]", "949"], ["oops", "[]", "5"]],
            header=["cast", "crew", "id"],
        )
    write_tmdb(
        folder / "keywords.csv",
        [["862", "[{'id': 931, 'name': 'jealousy'}, {'id': 4290, 'name': 'toy'}]"]],
        header=["id", "keywords"],
    )
    return folder / "movies_metadata.csv"


def test_movies_dataset_cast_gives_the_protagonists(tmp_path: Path) -> None:
    report = DataReport()

    table = load_tmdb(write_movies_dataset(tmp_path), report)

    assert table.schema == TMDB_SCHEMA
    rows = {row["tmdb_id"]: row for row in table.to_pylist()}
    assert rows[862]["cast"] == ["Tom Hanks", "Tim Allen", "Don O'Rickles"]
    assert rows[862]["genres"] == ["Animation", "Comedy"]
    assert rows[862]["keywords"] == ["jealousy", "toy"]
    assert rows[862]["overview"] == "Woody and Buzz.\nToys."
    assert rows[949] == {
        "tmdb_id": 949,
        "title": "Heat",
        "overview": "A heist.",
        "tagline": "Crime saga",
        "genres": [],
        "keywords": [],
        "cast": [],
    }
    assert report.dropped == {
        ("movies_metadata.csv", "missing or non-integer `id`"): 1,
        ("movies_metadata.csv", "duplicate `id`, kept the first"): 1,
        ("movies_metadata.csv", "malformed list in `genres`, field emptied"): 1,
        ("credits.csv", "malformed `cast`, field emptied"): 1,
    }
    assert report.dataset["tmdb_layout"] == "The Movies Dataset"


def test_movies_dataset_folder_without_credits(tmp_path: Path) -> None:
    write_movies_dataset(tmp_path, credits=False)

    table = load_tmdb(tmp_path, DataReport())  # a folder works too

    assert table.column("cast").to_pylist() == [[], []]


def test_movies_dataset_text_has_protagonists_and_unknown_ids_keep_movielens(
    tmp_path: Path,
) -> None:
    from recray.data.movielens import load_movielens
    from recray.data.texts import build_movie_texts

    tmdb = load_tmdb(write_movies_dataset(tmp_path / "tmdb"), DataReport())
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Animation\n"
        "2,Lost (2001),Drama\n3,Blank (2002),(no genres listed)\n"
    )
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    (ml / "links.csv").write_text("movieId,imdbId,tmdbId\n1,1,862\n2,2,123456\n3,3,\n")
    movielens = load_movielens(ml, DataReport())

    texts = build_movie_texts(movielens, tmdb, top_tags=0)["text"].to_pylist()

    assert texts[0] == (
        "Toy Story (1995). Genres: Animation. Overview: Woody and Buzz. Toys. "
        "Starring: Tom Hanks, Tim Allen, Don O'Rickles. Keywords: jealousy, toy."
    )
    assert texts[1:] == ["Lost (2001). Genres: Drama.", "Blank (2002)."]


def test_folder_without_either_layout_lists_both(tmp_path: Path) -> None:
    (tmp_path / "other.csv").write_text("a\n")
    with pytest.raises(
        FileNotFoundError,
        match="neither `tmdb_5000_movies.csv`.*"
        "`movies_metadata.csv` with `credits.csv`.*`other.csv`",
    ):
        load_tmdb(tmp_path, DataReport())
