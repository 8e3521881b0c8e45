"""Reading and validating MovieLens ratings, movies, links and tags.

`load_movielens` finds which MovieLens layout a folder holds, reads its files
as text, checks every field and returns typed pyarrow tables under recray's
column names. Every row it drops is counted in a `DataReport` with the reason.

Only the CSV layout of ml-latest-small is known so far (ml-20m and ml-25m use
the same file and column names). Another release needs an entry in `_LAYOUTS`
and, where its files are not comma-separated with a header (ml-100k, ml-1m,
ml-10m), a reader of its own in place of `_read_csv`; the checks after reading
work on recray's column names and stay as they are.
"""

from __future__ import annotations

import csv
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recray.config import DATA_DIR_ENV
from recray.data.report import DataReport

logger = logging.getLogger(__name__)

RATINGS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("rating", pa.float32(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)
MOVIES_SCHEMA = pa.schema(
    [
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("year", pa.int32()),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
    ]
)
LINKS_SCHEMA = pa.schema(
    [
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("tmdb_id", pa.int64()),
    ]
)
TAGS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("tag", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)

MIN_RATING = 0.5
MAX_RATING = 5.0
RATING_STEP = 0.5

# MovieLens marks a movie without genres with this word instead of a blank.
NO_GENRES = "(no genres listed)"

# Up to 18 digits always fits in int64; a longer id is not a MovieLens id.
INTEGER_PATTERN = r"^-?\d{1,18}$"
# Decimal numbers as MovieLens writes them; "nan" and "inf" are not ratings.
_NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# A title ends with its release year in brackets, e.g. "Toy Story (1995)".
_TITLE_YEAR_PATTERN = r"^(?P<name>.+?)\s*\((?P<year>\d{4})\)$"


class _Kind(enum.Enum):
    """How a text field of a file is checked and converted."""

    INTEGER = "integer"
    NUMBER = "number"
    TEXT = "text"
    OPTIONAL_INTEGER = "optional integer"
    OPTIONAL_TEXT = "optional text"


@dataclass(frozen=True)
class _Column:
    source: str
    name: str
    kind: _Kind


@dataclass(frozen=True)
class _FileSpec:
    """One file of a layout: its name and the columns recray reads from it."""

    file_name: str
    columns: tuple[_Column, ...]

    def label(self, name: str) -> str:
        """Return the file's own header name of recray column `name`, quoted."""
        for column in self.columns:
            if column.name == name:
                return f"`{column.source}`"
        return f"`{name}`"


@dataclass(frozen=True)
class _Layout:
    """The files of one MovieLens release; links and tags may be absent."""

    name: str
    ratings: _FileSpec
    movies: _FileSpec
    links: _FileSpec
    tags: _FileSpec

    def describe(self) -> str:
        return (
            f"`{self.ratings.file_name}` and `{self.movies.file_name}`, "
            f"optionally `{self.links.file_name}` and `{self.tags.file_name}` "
            f"({self.name} layout)"
        )


_LATEST_CSV = _Layout(
    name="ml-latest-small",
    ratings=_FileSpec(
        "ratings.csv",
        (
            _Column("userId", "user_id", _Kind.INTEGER),
            _Column("movieId", "movie_id", _Kind.INTEGER),
            _Column("rating", "rating", _Kind.NUMBER),
            _Column("timestamp", "timestamp", _Kind.INTEGER),
        ),
    ),
    movies=_FileSpec(
        "movies.csv",
        (
            _Column("movieId", "movie_id", _Kind.INTEGER),
            _Column("title", "title", _Kind.TEXT),
            # A blank genres field means no genres, as "(no genres listed)".
            _Column("genres", "genres", _Kind.OPTIONAL_TEXT),
        ),
    ),
    links=_FileSpec(
        "links.csv",
        (
            _Column("movieId", "movie_id", _Kind.INTEGER),
            # MovieLens leaves tmdbId blank where TMDB has no entry.
            _Column("tmdbId", "tmdb_id", _Kind.OPTIONAL_INTEGER),
        ),
    ),
    tags=_FileSpec(
        "tags.csv",
        (
            _Column("userId", "user_id", _Kind.INTEGER),
            _Column("movieId", "movie_id", _Kind.INTEGER),
            _Column("tag", "tag", _Kind.TEXT),
            _Column("timestamp", "timestamp", _Kind.INTEGER),
        ),
    ),
)

# Tried in order; the first layout whose required files exist is read.
_LAYOUTS: tuple[_Layout, ...] = (_LATEST_CSV,)


@dataclass(frozen=True)
class MovieLensData:
    """Validated MovieLens tables, in the order rows appear in the files.

    Attributes:
        ratings: One rating per (user, movie), schema `RATINGS_SCHEMA`.
        movies: One row per movie, schema `MOVIES_SCHEMA`; `title` without the
            trailing year and with runs of whitespace made one space, `year`
            null where the title has none.
        links: TMDB id per movie, schema `LINKS_SCHEMA`; `tmdb_id` is null
            where MovieLens knows no TMDB entry. Empty without `links.csv`.
        tags: Tag applications, schema `TAGS_SCHEMA`. Empty without
            `tags.csv`.
    """

    ratings: pa.Table
    movies: pa.Table
    links: pa.Table
    tags: pa.Table


def load_movielens(data_dir: Path, report: DataReport) -> MovieLensData:
    """Read and validate the MovieLens files in `data_dir`.

    Rows with a missing or malformed field, a rating off the 0.5 to 5.0 scale
    in steps of 0.5, a negative timestamp or an unknown movie are dropped;
    of duplicate ratings by one user of one movie the latest is kept; of
    duplicate movies the first. Each drop is counted in `report`.

    Args:
        data_dir: Folder of one MovieLens release, e.g. ml-latest-small.
        report: Collects the rows read and dropped per file.

    Returns:
        The ratings, movies, links and tags tables.

    Raises:
        FileNotFoundError: `data_dir` or one of its required files is missing.
        ValueError: A file lacks a required column, is empty or cannot be
            parsed as UTF-8 CSV.
    """
    layout = _find_layout(data_dir)

    movies = _clean_movies(_read_csv(data_dir, layout.movies, report), layout, report)
    known_movies = movies["movie_id"]

    ratings = _read_csv(data_dir, layout.ratings, report)
    ratings = _clean_ratings(ratings, known_movies, layout, report)

    links = _read_optional(data_dir, layout.links, LINKS_SCHEMA, report)
    links = _drop_unknown_movies(links, known_movies, layout.links, layout, report)
    links = _filter(
        links,
        _first_of_each(links["movie_id"].to_numpy()),
        layout.links,
        f"duplicate {layout.links.label('movie_id')}, kept the first",
        report,
    )

    tags = _read_optional(data_dir, layout.tags, TAGS_SCHEMA, report)
    tags = _drop_negative_timestamps(tags, layout.tags, report)
    tags = _drop_unknown_movies(tags, known_movies, layout.tags, layout, report)

    data = MovieLensData(
        ratings=ratings.cast(RATINGS_SCHEMA),
        movies=movies.cast(MOVIES_SCHEMA),
        links=links.cast(LINKS_SCHEMA),
        tags=tags.cast(TAGS_SCHEMA),
    )
    logger.info(
        "Loaded MovieLens `%s` (%s layout): %d ratings by %d users of %d movies, "
        "%d links, %d tags.",
        data_dir,
        layout.name,
        data.ratings.num_rows,
        pc.count_distinct(data.ratings["user_id"]).as_py(),
        data.movies.num_rows,
        data.links.num_rows,
        data.tags.num_rows,
    )
    return data


def _find_layout(data_dir: Path) -> _Layout:
    """Return the first layout whose required files are all in `data_dir`."""
    fix = f"Pass `--data-dir` or set `{DATA_DIR_ENV}` to a MovieLens folder."
    expected = "; or ".join(layout.describe() for layout in _LAYOUTS)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"MovieLens folder `{data_dir}` does not exist or is not a folder; "
            f"expected a folder with {expected}. {fix}"
        )

    for layout in _LAYOUTS:
        required = (layout.ratings, layout.movies)
        if all((data_dir / spec.file_name).is_file() for spec in required):
            return layout

    found = sorted(path.name for path in data_dir.iterdir())
    shown = ", ".join(f"`{name}`" for name in found[:20]) or "nothing"
    if len(found) > 20:
        shown += f" and {len(found) - 20} more"
    raise FileNotFoundError(
        f"MovieLens folder `{data_dir}` lacks required files: found {shown}; "
        f"expected {expected}. {fix}"
    )


def _read_optional(
    data_dir: Path, spec: _FileSpec, schema: pa.Schema, report: DataReport
) -> pa.Table:
    """Read an optional file, or return an empty table when it is absent."""
    if not (data_dir / spec.file_name).is_file():
        logger.info("No `%s` in `%s`; going on without it.", spec.file_name, data_dir)
        return schema.empty_table()
    return _read_csv(data_dir, spec, report)


def read_csv_text(
    path: Path,
    columns: Sequence[str],
    report: DataReport,
    *,
    what: str,
    newlines_in_values: bool = False,
) -> pa.Table:
    """Read `columns` of a CSV file with a header line as trimmed text.

    Lines with the wrong number of fields are skipped and counted in `report`
    under the file's name, as are the data rows read.

    Args:
        path: CSV file whose first line names the columns.
        columns: Header names to read; other columns are ignored.
        report: Collects the rows read and the malformed lines dropped.
        what: What the file should be, for error messages, e.g.
            "a MovieLens file with its header line".
        newlines_in_values: Quoted fields may span lines (slower to parse).

    Returns:
        A table of the `columns`, as strings with surrounding whitespace
        removed; a blank field is the empty string.

    Raises:
        ValueError: The header lacks one of `columns`, or the file is not
            UTF-8 CSV.
    """
    header = _read_header(path)
    missing = [name for name in columns if name not in header]
    if missing:
        seen = (
            "header has " + ", ".join(f"`{name}`" for name in header)
            if header
            else "the file is empty"
        )
        raise ValueError(
            f"`{path}` lacks column(s) {', '.join(f'`{m}`' for m in missing)}: "
            f"{seen}; expected {', '.join(f'`{c}`' for c in columns)}. "
            f"Check that the file is {what}."
        )

    malformed: list[pa_csv.InvalidRow] = []

    def skip_row(row: pa_csv.InvalidRow) -> str:
        malformed.append(row)
        return "skip"

    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=newlines_in_values, invalid_row_handler=skip_row
            ),
            # All text first, so that a bad field drops its row, not the read.
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(columns),
                column_types={name: pa.string() for name in columns},
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise ValueError(
            f"Could not parse `{path}` as UTF-8 CSV: {err}. Check that the file "
            f"is {what}, complete and saved as UTF-8."
        ) from err

    report.read(path.name, table.num_rows + len(malformed))
    if malformed:
        first = min(malformed, key=lambda row: row.number or 0)
        where = f"line {first.number}: " if first.number else ""
        report.drop(
            path.name,
            f"malformed line, expected {first.expected_columns} fields",
            len(malformed),
            example=f"{where}{first.text[:200]!r}",
        )
    return pa.table({name: pc.utf8_trim_whitespace(table[name]) for name in columns})


def _read_header(path: Path) -> list[str]:
    try:
        # utf-8-sig: a byte order mark must not become part of the first name.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            first_line = handle.readline()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"`{path}` is not UTF-8 text ({err}). Save it as UTF-8 CSV."
        ) from err
    row = next(csv.reader([first_line]), [])
    return [name.strip() for name in row]


def _read_csv(data_dir: Path, spec: _FileSpec, report: DataReport) -> pa.Table:
    """Read one MovieLens CSV file, drop rows whose fields do not parse.

    Returns:
        A table with recray's column names: integers as int64, numbers as
        float64, text as trimmed strings (optional text empty where blank),
        optional integers null where blank.
    """
    table = read_csv_text(
        data_dir / spec.file_name,
        [column.source for column in spec.columns],
        report,
        what="a MovieLens file with its header line",
    )
    for column in spec.columns:
        table = _parse_column(table, column, spec, report)
    return table.rename_columns([column.name for column in spec.columns])


def _parse_column(
    table: pa.Table, column: _Column, spec: _FileSpec, report: DataReport
) -> pa.Table:
    """Drop the rows whose `column` does not parse and convert the rest."""
    values = table[column.source]
    label = f"`{column.source}`"

    if column.kind is _Kind.INTEGER:
        valid = pc.match_substring_regex(values, INTEGER_PATTERN)
        reason = f"missing or non-integer {label}"
    elif column.kind is _Kind.NUMBER:
        valid = pc.match_substring_regex(values, _NUMBER_PATTERN)
        reason = f"missing or non-numeric {label}"
    elif column.kind is _Kind.TEXT:
        valid = pc.not_equal(values, "")
        reason = f"missing {label}"
    elif column.kind is _Kind.OPTIONAL_INTEGER:
        valid = pc.or_(
            pc.equal(values, ""), pc.match_substring_regex(values, INTEGER_PATTERN)
        )
        reason = f"non-integer {label}"
    else:
        return table

    table = _filter(table, valid, spec, reason, report)
    values = table[column.source]
    if column.kind is _Kind.INTEGER:
        converted = pc.cast(values, pa.int64())
    elif column.kind is _Kind.NUMBER:
        converted = pc.cast(values, pa.float64())
    elif column.kind is _Kind.OPTIONAL_INTEGER:
        blank = pc.equal(values, "")
        converted = pc.cast(pc.if_else(blank, None, values), pa.int64())
    else:
        converted = values
    index = table.schema.get_field_index(column.source)
    return table.set_column(index, column.source, converted)


def _filter(
    table: pa.Table,
    keep: pa.Array | pa.ChunkedArray | np.ndarray,
    spec: _FileSpec,
    reason: str,
    report: DataReport,
) -> pa.Table:
    """Keep the rows where `keep` is true; count the others under `reason`."""
    if not isinstance(keep, np.ndarray):
        keep = pc.fill_null(keep, False).to_numpy(zero_copy_only=False)
    keep = np.asarray(keep, dtype=bool)
    dropped = int(keep.size - np.count_nonzero(keep))
    if dropped == 0:
        return table
    first = int(np.argmin(keep))
    report.drop(spec.file_name, reason, dropped, example=_row_text(table, first))
    return table.filter(pa.array(keep))


def _row_text(table: pa.Table, index: int) -> str:
    """Return row `index` of `table` as `name=value` pairs, to find it again."""
    row = table.slice(index, 1).to_pylist()[0]
    return ", ".join(f"{name}={value!r}" for name, value in row.items())


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """Return a mask that is true at the first occurrence of each key."""
    keep = np.zeros(keys.size, dtype=bool)
    keep[np.unique(keys, return_index=True)[1]] = True
    return keep


def _drop_negative_timestamps(
    table: pa.Table, spec: _FileSpec, report: DataReport
) -> pa.Table:
    keep = pc.greater_equal(table["timestamp"], 0)
    return _filter(table, keep, spec, f"negative {spec.label('timestamp')}", report)


def _drop_unknown_movies(
    table: pa.Table,
    known_movies: pa.ChunkedArray,
    spec: _FileSpec,
    layout: _Layout,
    report: DataReport,
) -> pa.Table:
    keep = pc.is_in(table["movie_id"], value_set=known_movies.combine_chunks())
    reason = f"{spec.label('movie_id')} not in `{layout.movies.file_name}`"
    return _filter(table, keep, spec, reason, report)


def _clean_movies(movies: pa.Table, layout: _Layout, report: DataReport) -> pa.Table:
    """Keep the first row per movie, split title and year, split the genres."""
    spec = layout.movies
    movies = _filter(
        movies,
        _first_of_each(movies["movie_id"].to_numpy()),
        spec,
        f"duplicate {spec.label('movie_id')}, kept the first",
        report,
    )

    # A few titles have doubled spaces inside; one space reads the same.
    titles = pc.replace_substring_regex(movies["title"], r"\s+", " ")
    parts = pc.extract_regex(titles, _TITLE_YEAR_PATTERN)
    # Where the title has no "(YYYY)" the struct is null and the title stays.
    title = pc.coalesce(pc.struct_field(parts, "name"), titles)
    year = pc.cast(pc.struct_field(parts, "year"), pa.int32())

    genres = pc.if_else(pc.equal(movies["genres"], NO_GENRES), "", movies["genres"])
    genres = _split_list(genres.combine_chunks(), "|")

    return pa.table(
        {
            "movie_id": movies["movie_id"],
            "title": title,
            "year": year,
            "genres": genres,
        }
    )


def _split_list(values: pa.StringArray, separator: str) -> pa.ListArray:
    """Split each string on `separator` into a list of trimmed, non-empty items."""
    lists = pc.split_pattern(values, separator)
    items = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.not_equal(items, "").to_numpy(zero_copy_only=False)

    # Rebuild the offsets from how many items each row keeps.
    counts = np.bincount(parents[keep], minlength=len(values))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), items.filter(pa.array(keep)))


def _clean_ratings(
    ratings: pa.Table,
    known_movies: pa.ChunkedArray,
    layout: _Layout,
    report: DataReport,
) -> pa.Table:
    """Drop off-scale ratings, negative timestamps, unknown movies, duplicates."""
    spec = layout.ratings
    rating = spec.label("rating")

    in_range = pc.and_(
        pc.greater_equal(ratings["rating"], MIN_RATING),
        pc.less_equal(ratings["rating"], MAX_RATING),
    )
    ratings = _filter(
        ratings,
        in_range,
        spec,
        f"{rating} outside {MIN_RATING} to {MAX_RATING}",
        report,
    )

    steps = ratings["rating"].to_numpy() / RATING_STEP
    ratings = _filter(
        ratings,
        steps == np.round(steps),
        spec,
        f"{rating} not a multiple of {RATING_STEP}",
        report,
    )

    ratings = _drop_negative_timestamps(ratings, spec, report)
    ratings = _drop_unknown_movies(ratings, known_movies, spec, layout, report)

    return _filter(
        ratings,
        _latest_of_each_pair(ratings),
        spec,
        f"duplicate ({spec.label('user_id')}, {spec.label('movie_id')}) rating, "
        f"kept the latest by {spec.label('timestamp')}",
        report,
    )


def _latest_of_each_pair(ratings: pa.Table) -> np.ndarray:
    """Return a mask true at the latest rating of each (user, movie).

    Of ratings with the same timestamp the one further down the file wins, as
    a later line is the likelier correction.
    """
    users = ratings["user_id"].to_numpy()
    movies = ratings["movie_id"].to_numpy()
    timestamps = ratings["timestamp"].to_numpy()
    rows = np.arange(users.size)

    # Sort by user, movie, then newest first; np.lexsort's last key is primary.
    order = np.lexsort((-rows, -timestamps, movies, users))
    sorted_users, sorted_movies = users[order], movies[order]
    first = np.ones(users.size, dtype=bool)
    first[1:] = (sorted_users[1:] != sorted_users[:-1]) | (
        sorted_movies[1:] != sorted_movies[:-1]
    )

    keep = np.zeros(users.size, dtype=bool)
    keep[order[first]] = True
    return keep
