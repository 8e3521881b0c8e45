"""Validation rules of the MovieLens reader, each with a small file it writes.

Row rules (off-scale ratings, missing fields, duplicates, unknown movies,
negative timestamps) are in test_movielens.py; here are the file-level rules
and the timestamp rules, with the message each gives.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recray.data.movielens import first_invalid_byte, load_movielens
from recray.data.report import DataReport

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat (1995),Action\n"
HEADER = "userId,movieId,rating,timestamp\n"


def _write(folder: Path, ratings: str | bytes, movies: str | bytes = MOVIES) -> Path:
    for name, text in (("ratings.csv", ratings), ("movies.csv", movies)):
        data = text.encode() if isinstance(text, str) else text
        (folder / name).write_bytes(data)
    return folder


def test_wrong_separator_names_the_file_line_and_separator(tmp_path: Path) -> None:
    _write(tmp_path, "userId;movieId;rating;timestamp\n1;1;4.0;100\n")
    with pytest.raises(
        ValueError, match=r"ratings\.csv` line 1 is separated by semicolons, expected"
    ):
        load_movielens(tmp_path, DataReport())


def test_wrong_separator_in_a_dat_file(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (tmp_path / "ratings.dat").write_text("1\t1\t5\t978300760\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    with pytest.raises(
        ValueError, match=r"ratings\.dat` line 1 is separated by tabs, expected `::`"
    ):
        load_movielens(tmp_path, DataReport())


def test_invalid_utf8_gives_file_and_byte_offset(tmp_path: Path) -> None:
    movies = MOVIES.encode() + b"3,Caf\xe9 (1999),Drama\n"
    _write(tmp_path, HEADER + "1,1,4.0,100\n", movies)
    offset = len(MOVIES.encode()) + len(b"3,Caf")

    with pytest.raises(ValueError) as err:
        load_movielens(tmp_path, DataReport())

    assert f"movies.csv` is not valid UTF-8 at byte offset {offset} (line 4)" in str(
        err.value
    )


def test_first_invalid_byte_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    # A two-byte character split over the 16 MiB chunk boundary, then a bad byte.
    body = b"a" * ((1 << 24) - 1) + "é".encode() + b"\nok\n" + b"\xff"
    path.write_bytes(body)
    assert first_invalid_byte(path) == (len(body) - 1, 3)
    path.write_bytes(b"fine\n")
    assert first_invalid_byte(path) is None


def test_truncated_file_gives_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path, HEADER + "1,1,4.0,100\n1,2,3.0,101\n2,1,")
    with pytest.raises(
        ValueError, match=r"ratings\.csv` is truncated: line 4, its last, has 3 of 4"
    ):
        load_movielens(tmp_path, DataReport())


def test_truncated_dat_file_gives_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n1::1")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    with pytest.raises(ValueError, match=r"ratings\.dat` is truncated: line 2"):
        load_movielens(tmp_path, DataReport())


def test_wrong_column_count_lines_are_counted_with_line_number(tmp_path: Path) -> None:
    _write(tmp_path, HEADER + "1,1,4.0,100\n1,2,3.0,101,extra\n2,1,3.0,102\n")
    report = DataReport()

    data = load_movielens(tmp_path, report)

    assert data.ratings.num_rows == 2
    key = ("ratings.csv", "malformed line, expected 4 fields")
    assert report.dropped[key] == 1
    assert report.examples[key].startswith("line 3: ")
    assert report.to_dict()["dropped"][0]["example"].startswith("line 3: ")


def test_millisecond_and_future_timestamps_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    future = int(time.time()) + 30 * 86_400
    _write(
        tmp_path,
        HEADER
        + "1,1,4.0,1147880044\n"
        + "1,2,4.0,1147880044000\n"  # milliseconds
        + f"2,1,4.0,{future}\n"  # a month ahead
        + "2,2,4.0,-5\n",
    )
    report = DataReport()

    data = load_movielens(tmp_path, report)

    assert data.ratings["timestamp"].to_pylist() == [1147880044]
    assert report.dropped == {
        ("ratings.csv", "negative `timestamp`"): 1,
        (
            "ratings.csv",
            "`timestamp` in milliseconds (10 or more digits), expected Unix seconds",
        ): 1,
        ("ratings.csv", "`timestamp` in the future"): 1,
    }


def test_a_file_all_in_milliseconds_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, HEADER + "1,1,4.0,1147880044000\n1,2,4.0,1147880045000\n")
    with pytest.raises(
        ValueError, match=r"every `timestamp` is in milliseconds.*Divide the column"
    ):
        load_movielens(tmp_path, DataReport())


def test_every_rule_is_counted_in_the_report(tmp_path: Path) -> None:
    _write(
        tmp_path,
        HEADER
        + "1,1,4.0,100\n"
        + "1,1,3.0,200\n"  # duplicate, later: kept
        + "1,9,3.0,200\n"  # unknown movie
        + "1,2,7.0,200\n"  # off scale
        + "1,2,3.25,200\n"  # off step
        + "1,2,,200\n"  # missing
        + "2,2,3.0\n",  # wrong column count
    )
    report = DataReport()

    data = load_movielens(tmp_path, report)

    assert data.ratings.to_pylist() == [
        {"user_id": 1, "movie_id": 1, "rating": 3.0, "timestamp": 200}
    ]
    reasons = {reason for _, reason in report.dropped}
    assert reasons == {
        "malformed line, expected 4 fields",
        "missing or non-numeric `rating`",
        "`rating` outside 0.5 to 5.0",
        "`rating` not a multiple of 0.5",
        "`movieId` not in `movies.csv`",
        "duplicate (`userId`, `movieId`) rating, kept the latest by `timestamp`",
    }
    assert report.to_dict()["total_dropped"] == 6
    assert report.rows_read["ratings.csv"] == 7
