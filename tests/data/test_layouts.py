"""Every published MovieLens layout, each from small files the test writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from recray.data.movielens import load_movielens
from recray.data.report import DataReport


def _ml100k(folder: Path) -> Path:
    folder.mkdir()
    (folder / "u.data").write_text(
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n"
    )
    flags_toy = ["0", "0", "0", "1", "1", "1"] + ["0"] * 13
    flags_none = ["1"] + ["0"] * 18  # only `unknown`: no genre
    (folder / "u.item").write_bytes(
        (
            "10|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_toy) + "\n"
            "20|Cité des enfants perdus, La (1995)|01-Jan-1995||http://y|"
            + "|".join(flags_none)
            + "\n"
        ).encode("latin-1")
    )
    return folder


def test_ml100k_tab_data_pipe_items_latin1_and_genre_flags(tmp_path: Path) -> None:
    report = DataReport()
    data = load_movielens(_ml100k(tmp_path / "ml-100k"), report)

    assert data.layout == "ml-100k"
    assert data.movies.to_pylist() == [
        {
            "movie_id": 10,
            "title": "Toy Story",
            "year": 1995,
            "genres": ["Animation", "Children's", "Comedy"],
        },
        {
            "movie_id": 20,
            "title": "Cité des enfants perdus, La",
            "year": 1995,
            "genres": [],
        },
    ]
    assert data.ratings.num_rows == 3
    assert data.ratings["rating"].to_pylist() == [5.0, 3.0, 4.0]
    assert report.dataset["layout"] == "ml-100k"
    assert report.total_dropped() == 0


def test_ml100k_half_stars_are_off_its_whole_star_scale(tmp_path: Path) -> None:
    folder = _ml100k(tmp_path / "ml-100k")
    with (folder / "u.data").open("a") as handle:
        handle.write("3\t10\t3.5\t881250952\n3\t20\t0.5\t881250953\n")
    report = DataReport()

    data = load_movielens(folder, report)

    assert data.ratings.num_rows == 3
    assert report.dropped == {
        ("u.data", "`rating` outside 1.0 to 5.0"): 1,
        ("u.data", "`rating` not a multiple of 1.0"): 1,
    }


def _dat(folder: Path, *, users: bool, tags: bool) -> Path:
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        b"1::Toy Story (1995)::Animation|Children's|Comedy\n"
        b'2::"Great Performances" Cats (1998)::Musical\n'
        b"3::Caf\xe9 Society: A::Drama\n"
        b"4::Nothing (2000)::(no genres listed)\n"
    )
    (folder / "ratings.dat").write_text(
        "1::1::5::978300760\n1::2::3::978302109\n2::3::4::978301968\n"
        + ("2::4::4.5::978301969\n" if tags else "")
    )
    if users:
        (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    if tags:
        (folder / "tags.dat").write_text("1::1::pixar::1139045764\n")
    return folder


def test_ml1m_double_colon_latin1(tmp_path: Path) -> None:
    report = DataReport()
    data = load_movielens(_dat(tmp_path / "ml-1m", users=True, tags=False), report)

    assert data.layout == "ml-1m"
    titles = data.movies["title"].to_pylist()
    assert titles == [
        "Toy Story",
        '"Great Performances" Cats',
        "Café Society: A",
        "Nothing",
    ]
    assert data.movies["genres"].to_pylist()[3] == []
    assert data.ratings.num_rows == 3
    assert data.tags.num_rows == 0
    assert report.rows_read == {"movies.dat": 4, "ratings.dat": 3}


def test_ml10m_double_colon_with_half_stars_and_tags(tmp_path: Path) -> None:
    report = DataReport()
    data = load_movielens(_dat(tmp_path / "ml-10M100K", users=False, tags=True), report)

    assert data.layout == "ml-10m"
    assert data.ratings["rating"].to_pylist()[-1] == 4.5
    assert data.tags.to_pylist() == [
        {"user_id": 1, "movie_id": 1, "tag": "pixar", "timestamp": 1139045764}
    ]
    assert report.total_dropped() == 0


@pytest.mark.parametrize("release", ["ml-20m", "ml-25m", "ml-32m", "ml-latest"])
def test_csv_releases_are_named_in_the_report(tmp_path: Path, release: str) -> None:
    folder = tmp_path / release
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Animation\n"
        "2,Nothing (2000),(no genres listed)\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.5,1147880044\n1,2,0.5,1147880045\n"
    )
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,1,\n")
    (folder / "genome-scores.csv").write_text("movieId,tagId,relevance\n")
    report = DataReport()

    data = load_movielens(folder, report)

    assert data.layout == f"{release} CSV"
    assert data.movies["genres"].to_pylist() == [["Animation"], []]
    assert data.links["tmdb_id"].to_pylist() == [862, None]
    assert report.to_dict()["dataset"]["layout"] == f"{release} CSV"


def test_unknown_layout_lists_found_and_every_expected_layout(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n")
    (tmp_path / "notes.txt").write_text("hi")

    with pytest.raises(FileNotFoundError) as err:
        load_movielens(tmp_path, DataReport())

    message = str(err.value)
    assert "found `notes.txt`, `ratings.dat`" in message
    for expected in ("`u.data` and `u.item`", "`users.dat`", "`ratings.csv`", "ml-10m"):
        assert expected in message


def test_release_one_level_down_is_pointed_at(tmp_path: Path) -> None:
    _dat(tmp_path / "ml-1m", users=True, tags=False)
    with pytest.raises(FileNotFoundError, match="one level down, in `.*ml-1m`"):
        load_movielens(tmp_path, DataReport())
