"""Title matching and history parsing, on real MovieLens titles."""

from __future__ import annotations

import pandas as pd
import pytest

from recray.serving.titles import (
    TitleMatcher,
    UnknownTitleError,
    fold,
    parse_history,
    split_year,
)


@pytest.fixture(scope="module")
def matcher(movielens_small) -> TitleMatcher:
    return TitleMatcher(pd.read_csv(movielens_small / "movies.csv").title.tolist())


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("Toy Story (1995)", "Toy Story (1995)"),
        ("toy story", "Toy Story (1995)"),
        ("The Matrix", "Matrix, The (1999)"),
        ("matrix, the (1999)", "Matrix, The (1999)"),
        ("  THE  MATRIX!! ", "Matrix, The (1999)"),
        ("City of Lost Children", None),  # answered below: alt title dropped
        ("Les Miserables (1995)", "Misérables, Les (1995)"),
        (
            "star wars episode iv a new hope",
            "Star Wars: Episode IV - A New Hope (1977)",
        ),
    ],
)
def test_forgiving_matches(matcher, typed, expected):
    title = matcher.titles[matcher.row(typed)]
    if expected is None:
        assert title.startswith("City of Lost Children, The (")
    else:
        assert title == expected


def test_a_missing_year_that_fits_several_movies_asks_for_it(matcher):
    # ml-latest-small has two movies titled "Hamlet" from different years.
    hamlets = [t for t in matcher.titles if split_year(t)[0] == "Hamlet"]
    assert len({split_year(t)[1] for t in hamlets}) > 1
    with pytest.raises(UnknownTitleError, match=r"`Hamlet` fits .* Add the year"):
        matcher.row("Hamlet")
    assert matcher.titles[matcher.row(hamlets[0])] == hamlets[0]


def test_unknown_title_lists_the_closest(matcher):
    with pytest.raises(UnknownTitleError) as caught:
        matcher.row("Toy Stroy (1995)")
    message = str(caught.value)
    assert "No movie titled `Toy Stroy (1995)`" in message
    assert "`Toy Story (1995)`" in message
    # A wrong year is no match either, but the right one is suggested.
    with pytest.raises(UnknownTitleError, match=r"`Heat \(1995\)`"):
        matcher.row("Heat (1996)")


def test_fold():
    assert fold("Matrix, The") == fold("the matrix") == "matrix"
    assert fold("Haine, La") == "haine"
    assert fold("Fast & Furious") == "fast and furious"
    assert fold("The") == "the"  # a title that is only an article stays


def test_parse_history_keeps_commas_and_colons_in_titles():
    items = parse_history(
        "Matrix, The (1999):4.5, Star Wars: Episode IV - A New Hope (1977): 5,Heat:1"
    )
    assert [(i.title, i.rating) for i in items] == [
        ("Matrix, The (1999)", 4.5),
        ("Star Wars: Episode IV - A New Hope (1977)", 5.0),
        ("Heat", 1.0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Toy Story (1995)", "write each movie as `Title \\(year\\):rating`"),
        ("Toy Story (1995):6", "outside 0.5-5.0"),
        ("Toy Story (1995):0", "outside 0.5-5.0"),
        ("   ", "history is empty"),
        ("Heat (1995):4, Toy Story", "from `Toy Story`"),
    ],
)
def test_parse_history_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_history(text)
