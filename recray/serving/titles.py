"""Finding movies by the titles people type, and reading a typed history.

MovieLens writes titles as "Matrix, The (1999)" or "City of Lost Children,
The (Cité des enfants perdus, La) (1995)". A typed title matches a movie when
both agree after folding case and accents, dropping punctuation, a leading or
trailing article and the year; a year, when given, must agree too. The
bracketed alternative title may be left out. A title that matches nothing is
an error that lists the closest titles (difflib's ratio on the folded form).
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Articles MovieLens moves behind the title ("Haine, La"), in its languages.
_ARTICLES = frozenset(
    "the a an la le les l el los las il lo gli i das der die den det en et".split()
)
_YEAR = re.compile(r"\(\s*(\d{4})\s*\)\s*$")
_BRACKETS = re.compile(r"\([^()]*\)")
_TRAILING_ARTICLE = re.compile(r",\s*([^\W\d_]+'?)\s*$")
_MAX_SUGGESTIONS = 5
MIN_RATING = 0.5
MAX_RATING = 5.0


class UnknownTitleError(ValueError):
    """A typed title matches no movie, or more than one."""


def split_year(title: str) -> tuple[str, int | None]:
    """The name and the year of "Name (1995)"; the year is None without one."""
    found = _YEAR.search(title)
    if found is None:
        return title.strip(), None
    return title[: found.start()].strip(), int(found.group(1))


def fold(name: str) -> str:
    """The form titles are compared in: "Matrix, The" and "the matrix" -> "matrix".

    Folds case and accents, turns `&` into "and", moves a trailing article
    (", The") to the front, drops a leading article and every punctuation mark.
    """
    text = unicodedata.normalize("NFKD", name)
    text = "".join(char for char in text if not unicodedata.combining(char))
    text = text.casefold().replace("&", " and ")
    article = _TRAILING_ARTICLE.search(text)
    if article and article.group(1).rstrip("'") in _ARTICLES:
        text = f"{article.group(1)} {text[: article.start()]}"
    words = re.sub(r"[\W_]+", " ", text).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def _keys(name: str) -> set[str]:
    """Folded forms a movie answers to: with and without bracketed alt titles."""
    keys = {fold(name)}
    plain = _BRACKETS.sub(" ", name).strip()
    if plain and plain != name:
        keys.add(fold(plain))
    return {key for key in keys if key}


class TitleMatcher:
    """Looks up catalogue rows by forgivingly matched titles."""

    def __init__(self, titles: Sequence[str]) -> None:
        """Index the titles.

        Args:
            titles: Title with year of each catalogue row, e.g. "Heat (1995)".
        """
        self.titles = list(titles)
        self._years: list[int | None] = []
        self._rows_by_key: dict[str, list[int]] = {}
        for row, title in enumerate(self.titles):
            name, year = split_year(title)
            self._years.append(year)
            for key in _keys(name):
                self._rows_by_key.setdefault(key, []).append(row)

    def closest(self, title: str, count: int = _MAX_SUGGESTIONS) -> list[str]:
        """Up to `count` catalogue titles closest to `title`, best first."""
        name, _ = split_year(title)
        keys = difflib.get_close_matches(
            fold(name), list(self._rows_by_key), n=count, cutoff=0.5
        )
        found: list[str] = []
        for key in keys:
            for row in self._rows_by_key[key]:
                if self.titles[row] not in found:
                    found.append(self.titles[row])
        return found[:count]

    def row(self, title: str) -> int:
        """The catalogue row of a typed title.

        Raises:
            UnknownTitleError: No movie matches (the message lists the closest
                titles), or the title without a year fits several years.
        """
        name, year = split_year(title)
        rows = self._rows_by_key.get(fold(name), [])
        if year is not None:
            rows = [row for row in rows if self._years[row] == year]
        years = {self._years[row] for row in rows}
        if len(years) > 1:
            choices = ", ".join(f"`{self.titles[row]}`" for row in rows)
            raise UnknownTitleError(
                f"`{title}` fits {len(rows)} movies: {choices}. Add the year, "
                f"e.g. `{self.titles[rows[0]]}`."
            )
        if rows:
            if len(rows) > 1:
                logger.warning(
                    "`%s` fits %d catalogue rows with one title; using the first.",
                    title,
                    len(rows),
                )
            return rows[0]
        suggestions = self.closest(title)
        hint = (
            "Closest titles: " + ", ".join(f"`{t}`" for t in suggestions) + "."
            if suggestions
            else "No title is close; `recray similar` and the run's "
            "`movie_texts.parquet` list the catalogue."
        )
        raise UnknownTitleError(f"No movie titled `{title}` in this run. {hint}")


@dataclass(frozen=True)
class HistoryItem:
    """One typed entry of a watch history."""

    title: str
    rating: float


# "Title:4.5" up to the next comma that follows a rating, or the end. The title
# is matched lazily, so "Star Wars: Episode IV (1977):5" keeps its colon.
_ITEM = re.compile(r"\s*(?P<title>.+?)\s*:\s*(?P<rating>[-+]?\d+(?:\.\d+)?)\s*(?:,|$)")


def parse_history(text: str) -> list[HistoryItem]:
    """Read "Toy Story (1995):5, Heat (1995):4" into titles and ratings.

    Entries are oldest first. Titles may hold commas and colons; each entry
    ends with `:rating`, a number from 0.5 to 5.

    Raises:
        ValueError: Empty, an entry without a rating, or a rating out of range.
    """
    items: list[HistoryItem] = []
    position = 0
    text = text.strip()
    while position < len(text):
        found = _ITEM.match(text, position)
        if found is None:
            raise ValueError(
                f"Cannot read the history from `{text[position:].strip()}`: write each "
                "movie as `Title (year):rating`, separated by commas, e.g. "
                "`Toy Story (1995):5, Heat (1995):4`."
            )
        rating = float(found.group("rating"))
        if not MIN_RATING <= rating <= MAX_RATING:
            raise ValueError(
                f"Rating {found.group('rating')} of `{found.group('title')}` is "
                f"outside {MIN_RATING}-{MAX_RATING}, the MovieLens star range."
            )
        items.append(HistoryItem(found.group("title"), rating))
        position = found.end()
    if not items:
        raise ValueError(
            "The history is empty; give at least one `Title (year):rating`."
        )
    return items
