"""Reading files of new movies: CSV, JSON and JSON lines, with clear errors."""

from __future__ import annotations

import json

import pytest

from recray.serving.add_movies import movie_texts, read_new_movies


def test_csv_json_and_jsonl_read_the_same(tmp_path):
    (tmp_path / "new.csv").write_text(
        "title,year,genres,overview,keywords\n"
        'Arrival,2016,Drama|Sci-Fi,"A linguist meets, and talks to, aliens.",'
        "language|time\n"
        'Paddington 2 (2017),,Comedy,,""\n'
    )
    records = [
        {
            "title": "Arrival",
            "year": 2016,
            "genres": ["Drama", "Sci-Fi"],
            "overview": "A linguist meets, and talks to, aliens.",
            "keywords": "language|time",
        },
        {"title": "Paddington 2 (2017)", "genres": "Comedy"},
    ]
    (tmp_path / "new.json").write_text(json.dumps(records))
    (tmp_path / "new.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")

    read = [
        read_new_movies(tmp_path / f"new.{kind}") for kind in ("csv", "json", "jsonl")
    ]
    assert read[0] == read[1] == read[2]
    arrival, paddington = read[0]
    assert (arrival.full_title, arrival.genres) == (
        "Arrival (2016)",
        ["Drama", "Sci-Fi"],
    )
    assert arrival.keywords == ["language", "time"]
    assert (paddington.title, paddington.year, paddington.overview) == (
        "Paddington 2",
        2017,
        None,
    )


def test_texts_are_written_as_the_ingest_stage_writes_them(tmp_path):
    (tmp_path / "new.json").write_text(
        json.dumps(
            [
                {"title": "B", "year": 2001, "tags": ["Fun", "fun", "dull"]},
                {
                    "title": "Arrival",
                    "year": 2016,
                    "genres": ["Drama", "Sci-Fi"],
                    "tagline": "Why are they here",
                    "overview": "A linguist meets aliens.",
                    "keywords": ["language"],
                    "cast": ["Amy Adams", "Jeremy Renner"],
                },
            ]
        )
    )
    movies = read_new_movies(tmp_path / "new.json")
    texts = movie_texts(movies, [900, 800], top_tags=5).to_pylist()
    assert [row["movie_id"] for row in texts] == [900, 800]  # file order kept
    assert texts[0] == {
        "movie_id": 900,
        "title": "B (2001)",
        "text": "B (2001). Tags: fun, dull.",
        "year": 2001,
        "genres": [],
    }
    assert (texts[1]["year"], texts[1]["genres"]) == (2016, ["Drama", "Sci-Fi"])
    assert texts[1]["text"] == (
        "Arrival (2016). Genres: Drama, Sci-Fi. Tagline: Why are they here. "
        "Overview: A linguist meets aliens. Starring: Amy Adams, Jeremy Renner. "
        "Keywords: language."
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "title,yaer\nArrival,2016\n", r"line 2: unknown fields \['yaer'\]"),
        ("a.csv", "title,year\n,2016\n", "line 2: `title` is required"),
        ("a.csv", "title,year\nArrival,20x6\n", "line 2: `year` must be a whole"),
        ("a.csv", "title,year\nArrival,1066\n", "`year` must be between"),
        ("a.csv", "title,year\nArrival (2016),2015\n", "differs from the title's"),
        ("a.json", '{"title": "Arrival"}', "must hold a JSON list"),
        ("a.json", '[{"title": "Arrival"}, "Heat"]', "item 2: expected an object"),
        ("a.json", '[{"title": "A", "genres": [1]}]', "item 1: `genres`: expected"),
        ("a.json", '[{"title": "A", "overview": {"x": 1}}]', "`overview`: expected"),
        ("a.json", "[{", "is not valid JSON"),
        ("a.json", "[]", "holds no movies"),
        ("a.txt", "Arrival", "give a `.csv`, `.json`"),
    ],
)
def test_bad_files_name_the_file_row_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_new_movies(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="new.csv"):
        read_new_movies(tmp_path / "new.csv")
