"""Reading and validating MovieLens ratings, movies, links and tags.

`load_movielens` finds which MovieLens layout a folder holds, reads its files
as text, checks every field and returns typed pyarrow tables under recray's
column names. Every row it drops is counted in a `DataReport` with the reason.

Layouts, detected from the files in the folder (`LAYOUTS`, tried in order):

- ml-100k: tab-separated `u.data` and pipe-separated `u.item` (latin-1, no
  header, 19 genre flags); whole-star ratings 1 to 5.
- ml-1m: `::`-separated `ratings.dat`, `movies.dat` and `users.dat`
  (latin-1, no header); whole-star ratings 1 to 5.
- ml-10m: `::`-separated `ratings.dat`, `movies.dat` and `tags.dat`
  (latin-1, no header); half-star ratings 0.5 to 5.
- ml-20m, ml-25m, ml-32m, ml-latest and ml-latest-small: comma-separated
  UTF-8 `ratings.csv`, `movies.csv`, `links.csv` and `tags.csv` with a header.

Whole-file problems are errors that name the file and, where it has one, the
line or byte offset: a wrong separator, invalid UTF-8, a truncated last line,
timestamps in milliseconds. Row problems drop the row and are counted.
"""

from __future__ import annotations

import codecs
import csv
import enum
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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

# Separators worth naming when a file does not split on its own one.
_SEPARATOR_NAMES = {
    ",": "commas",
    "\t": "tabs",
    "|": "pipes",
    ";": "semicolons",
    "::": "`::`",
}
# A byte that never occurs in MovieLens text, standing in for `::`, which
# pyarrow cannot split on (it takes one-byte delimiters only).
_UNIT_SEPARATOR = "\x1f"
# Timestamps are Unix seconds. Above this (the year 2286 in seconds) a
# timestamp is taken for milliseconds; MovieLens starts in 1995.
_MAX_SECONDS = 10**10
# Slack for clocks: a timestamp up to a day ahead is not "in the future".
_FUTURE_SLACK_S = 86_400

# The 19 genre flags of ml-100k `u.item`, in file order (`u.genre`).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


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
    """One file of a layout: its name, format and the columns recray reads.

    Attributes:
        file_name: Name in the MovieLens folder.
        columns: Columns recray reads; `source` is the header name, or for a
            file without header the name its release README gives.
        separator: Field separator; `::` is read by replacing it first.
        header: Whether the first line names the columns.
        encoding: Text encoding of the file.
        field_names: Every field of a line in a file without header, in order
            (the file's field count); empty for files with a header.
    """

    file_name: str
    columns: tuple[_Column, ...]
    separator: str = ","
    header: bool = True
    encoding: str = "utf-8"
    field_names: tuple[str, ...] = ()

    def label(self, name: str) -> str:
        """Return the file's own header name of recray column `name`, quoted."""
        for column in self.columns:
            if column.name == name:
                return f"`{column.source}`"
        return f"`{name}`"

    def describe_format(self) -> str:
        sep = _SEPARATOR_NAMES.get(self.separator, f"`{self.separator}`")
        header = "with a header line" if self.header else "without header"
        count = f", {len(self.field_names)} fields" if self.field_names else ""
        return f"{sep}-separated {self.encoding} {header}{count}"


@dataclass(frozen=True)
class _Layout:
    """The files of one MovieLens release; links and tags may be absent.

    Attributes:
        name: Release name(s), for messages and the data report.
        ratings: The ratings file.
        movies: The movies file.
        links: TMDB links, `None` where the release has none.
        tags: Tag applications, `None` where the release has none.
        markers: Files that must also exist to pick this layout (ml-1m's
            `users.dat` tells it from ml-10m).
        min_rating: Lowest published rating.
        rating_step: Published step between ratings.
    """

    name: str
    ratings: _FileSpec
    movies: _FileSpec
    links: _FileSpec | None = None
    tags: _FileSpec | None = None
    markers: tuple[str, ...] = ()
    min_rating: float = 0.5
    rating_step: float = 0.5

    def required(self) -> tuple[str, ...]:
        return (self.ratings.file_name, self.movies.file_name, *self.markers)

    def describe(self) -> str:
        required = " and ".join(f"`{name}`" for name in self.required())
        optional = [spec.file_name for spec in (self.links, self.tags) if spec]
        also = (
            ", optionally " + " and ".join(f"`{name}`" for name in optional)
            if optional
            else ""
        )
        return f"{required}{also} ({self.name})"


_RATING_COLUMNS = (
    _Column("userId", "user_id", _Kind.INTEGER),
    _Column("movieId", "movie_id", _Kind.INTEGER),
    _Column("rating", "rating", _Kind.NUMBER),
    _Column("timestamp", "timestamp", _Kind.INTEGER),
)
_TAG_COLUMNS = (
    _Column("userId", "user_id", _Kind.INTEGER),
    _Column("movieId", "movie_id", _Kind.INTEGER),
    _Column("tag", "tag", _Kind.TEXT),
    _Column("timestamp", "timestamp", _Kind.INTEGER),
)
_MOVIE_COLUMNS = (
    _Column("movieId", "movie_id", _Kind.INTEGER),
    _Column("title", "title", _Kind.TEXT),
    # A blank genres field means no genres, as "(no genres listed)".
    _Column("genres", "genres", _Kind.OPTIONAL_TEXT),
)

LATEST_CSV = _Layout(
    name="ml-20m, ml-25m, ml-32m or ml-latest(-small) CSV",
    ratings=_FileSpec("ratings.csv", _RATING_COLUMNS),
    movies=_FileSpec("movies.csv", _MOVIE_COLUMNS),
    links=_FileSpec(
        "links.csv",
        (
            _Column("movieId", "movie_id", _Kind.INTEGER),
            # MovieLens leaves tmdbId blank where TMDB has no entry.
            _Column("tmdbId", "tmdb_id", _Kind.OPTIONAL_INTEGER),
        ),
    ),
    tags=_FileSpec("tags.csv", _TAG_COLUMNS),
)


def _dat_file(name: str, columns: tuple[_Column, ...]) -> _FileSpec:
    return _FileSpec(
        name,
        columns,
        separator="::",
        header=False,
        encoding="latin-1",
        field_names=tuple(column.source for column in columns),
    )


_DAT_RATINGS = _dat_file("ratings.dat", _RATING_COLUMNS)
_DAT_MOVIES = _dat_file("movies.dat", _MOVIE_COLUMNS)

ML_1M = _Layout(
    name="ml-1m",
    ratings=_DAT_RATINGS,
    movies=_DAT_MOVIES,
    markers=("users.dat",),
    min_rating=1.0,
    rating_step=1.0,
)
ML_10M = _Layout(
    name="ml-10m",
    ratings=_DAT_RATINGS,
    movies=_DAT_MOVIES,
    tags=_dat_file("tags.dat", _TAG_COLUMNS),
)
ML_100K = _Layout(
    name="ml-100k",
    ratings=_FileSpec(
        "u.data",
        (
            _Column("user id", "user_id", _Kind.INTEGER),
            _Column("item id", "movie_id", _Kind.INTEGER),
            _Column("rating", "rating", _Kind.NUMBER),
            _Column("timestamp", "timestamp", _Kind.INTEGER),
        ),
        separator="\t",
        header=False,
        encoding="latin-1",
        field_names=("user id", "item id", "rating", "timestamp"),
    ),
    movies=_FileSpec(
        "u.item",
        (
            _Column("movie id", "movie_id", _Kind.INTEGER),
            _Column("movie title", "title", _Kind.TEXT),
            # Made by the reader from the 19 genre flags.
            _Column("genres", "genres", _Kind.OPTIONAL_TEXT),
        ),
        separator="|",
        header=False,
        encoding="latin-1",
        field_names=(
            "movie id",
            "movie title",
            "release date",
            "video release date",
            "IMDb URL",
            *ML100K_GENRES,
        ),
    ),
    min_rating=1.0,
    rating_step=1.0,
)

# Tried in order; the first layout whose required files exist is read.
LAYOUTS: tuple[_Layout, ...] = (LATEST_CSV, ML_1M, ML_10M, ML_100K)
# Release folder names for the CSV layout, to name it in the data report.
_CSV_RELEASES = ("ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest")


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
        layout: Name of the layout read, e.g. "ml-1m".
        synthetic: Whether the folder is marked synthetic (`recray data
            synth` writes a `SYNTHETIC` file).
    """

    ratings: pa.Table
    movies: pa.Table
    links: pa.Table
    tags: pa.Table
    layout: str = field(default="ml-latest-small")
    synthetic: bool = False


# Name of the file that marks a folder as synthetic data.
SYNTHETIC_MARKER = "SYNTHETIC"


def load_movielens(data_dir: Path, report: DataReport) -> MovieLensData:
    """Read and validate the MovieLens files in `data_dir`.

    Rows with a missing or malformed field, a rating off the release's
    published scale and step, a negative, millisecond or future timestamp or
    an unknown movie are dropped; of duplicate ratings by one user of one
    movie the latest is kept; of duplicate movies the first. Each drop is
    counted in `report`, which also records the layout read.

    Args:
        data_dir: Folder of one MovieLens release, e.g. ml-latest-small.
        report: Collects the rows read and dropped per file.

    Returns:
        The ratings, movies, links and tags tables.

    Raises:
        FileNotFoundError: `data_dir` or one of its required files is missing.
        ValueError: A file lacks a required column, is empty, is truncated,
            uses another separator, is not valid in its encoding, or has
            every timestamp in milliseconds.
    """
    layout = _find_layout(data_dir)
    synthetic = (data_dir / SYNTHETIC_MARKER).is_file()
    layout_name = layout.name
    if layout is LATEST_CSV:
        release = next(
            (name for name in _CSV_RELEASES if data_dir.name.startswith(name)), None
        )
        layout_name = f"{release} CSV" if release else "MovieLens CSV"
    if synthetic:
        layout_name += " (SYNTHETIC data)"
    report.dataset.update(
        {"data_dir": str(data_dir), "layout": layout_name, "synthetic": synthetic}
    )

    movies = _read_file(data_dir, layout.movies, report)
    movies = _clean_movies(movies, layout, report)
    known_movies = movies["movie_id"]

    ratings = _read_file(data_dir, layout.ratings, report)
    ratings = _clean_ratings(ratings, known_movies, layout, report)

    links = _read_optional(data_dir, layout.links, LINKS_SCHEMA, report)
    if layout.links is not None and links.num_rows:
        links = _drop_unknown_movies(links, known_movies, layout.links, layout, report)
        links = _filter(
            links,
            _first_of_each(links["movie_id"].to_numpy()),
            layout.links,
            f"duplicate {layout.links.label('movie_id')}, kept the first",
            report,
        )

    tags = _read_optional(data_dir, layout.tags, TAGS_SCHEMA, report)
    if layout.tags is not None and tags.num_rows:
        tags = _drop_bad_timestamps(tags, layout.tags, report)
        tags = _drop_unknown_movies(tags, known_movies, layout.tags, layout, report)

    data = MovieLensData(
        ratings=ratings.cast(RATINGS_SCHEMA),
        movies=movies.cast(MOVIES_SCHEMA),
        links=links.cast(LINKS_SCHEMA),
        tags=tags.cast(TAGS_SCHEMA),
        layout=layout_name,
        synthetic=synthetic,
    )
    logger.info(
        "Loaded MovieLens `%s` (%s layout%s): %d ratings by %d users of %d movies, "
        "%d links, %d tags.",
        data_dir,
        layout_name,
        ", SYNTHETIC data" if synthetic else "",
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
    expected = "; or ".join(layout.describe() for layout in LAYOUTS)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"MovieLens folder `{data_dir}` does not exist or is not a folder; "
            f"expected a folder with {expected}. {fix}"
        )

    for layout in LAYOUTS:
        if all((data_dir / name).is_file() for name in layout.required()):
            return layout

    found = sorted(path.name for path in data_dir.iterdir())
    shown = ", ".join(f"`{name}`" for name in found[:20]) or "nothing"
    if len(found) > 20:
        shown += f" and {len(found) - 20} more"
    hint = ""
    if len(found) == 1 and (data_dir / found[0]).is_dir():
        hint = f" The release may be one level down, in `{data_dir / found[0]}`."
    raise FileNotFoundError(
        f"MovieLens folder `{data_dir}` lacks required files: found {shown}; "
        f"expected {expected}.{hint} {fix}"
    )


def _read_optional(
    data_dir: Path, spec: _FileSpec | None, schema: pa.Schema, report: DataReport
) -> pa.Table:
    """Read an optional file, or return an empty table when it is absent."""
    if spec is None:
        return schema.empty_table()
    if not (data_dir / spec.file_name).is_file():
        logger.info("No `%s` in `%s`; going on without it.", spec.file_name, data_dir)
        return schema.empty_table()
    return _read_file(data_dir, spec, report)


def first_invalid_byte(path: Path, encoding: str = "utf-8") -> tuple[int, int] | None:
    """Find the first byte of `path` that is not valid `encoding`.

    Reads the file in chunks, so its size does not matter.

    Returns:
        (byte offset from 0, line number from 1) of the first invalid byte,
        or None when the whole file decodes.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    newlines = 0
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(1 << 24)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # `err.object` is the bytes the decoder held back plus `chunk`.
                held = len(err.object) - len(chunk)
                position = offset - held + err.start
                newlines += err.object[: err.start].count(b"\n")
                return position, newlines + 1
            if not chunk:
                return None
            # Bytes held back carry no newline (a newline is a whole character).
            newlines += chunk.count(b"\n")
            offset += len(chunk)


def _invalid_encoding_error(path: Path, encoding: str, cause: str) -> ValueError:
    where = first_invalid_byte(path, encoding)
    at = (
        f" at byte offset {where[0]} (line {where[1]})"
        if where
        else ""  # pragma: no cover - pyarrow and Python disagree
    )
    return ValueError(
        f"`{path}` is not valid {encoding.upper()}{at}: {cause}. Save the file "
        f"as {encoding.upper()} (e.g. `iconv -f latin1 -t utf-8`), or check that "
        "it is complete."
    )


def _last_line(path: Path) -> tuple[bytes, bool]:
    """Return the file's last line (without its line end) and whether it ends one."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - 65536))
        tail = handle.read()
    ends_with_newline = tail.endswith(b"\n")
    return tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1], ends_with_newline


def _count_lines(path: Path) -> int:
    """Lines in `path`, a last line without line end included."""
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _check_separator(
    path: Path, fields: list[str], expected_count: int, spec_separator: str
) -> None:
    """Raise when line 1 does not split into fields on the file's separator."""
    if len(fields) >= expected_count:
        return
    line = _SEPARATOR_NAMES.get(spec_separator, spec_separator)
    text = spec_separator.join(fields)
    for separator, name in _SEPARATOR_NAMES.items():
        if separator != spec_separator and text.count(separator) >= 1:
            if len(text.split(separator)) >= expected_count:
                raise ValueError(
                    f"`{path}` line 1 is separated by {name}, expected {line}: "
                    f"{text[:120]!r}. Save the file {line}-separated, as its "
                    "MovieLens release publishes it."
                )


def _row_bytes(row: pa_csv.InvalidRow, separator: str) -> bytes:
    """The line of a malformed row as in the file (`::` put back)."""
    text = row.text.rstrip("\r\n")
    if len(separator) > 1:
        text = text.replace(_UNIT_SEPARATOR, separator)
    return text.encode("utf-8", "replace")


def _raise_if_truncated(
    path: Path, malformed: list[pa_csv.InvalidRow], separator: str, encoding: str
) -> None:
    """Raise when the file's last line is cut short and lacks its line end."""
    last, ends_with_newline = _last_line(path)
    if ends_with_newline:
        return
    last_text = last.decode(encoding, "replace").encode("utf-8", "replace")
    for row in malformed:
        if _row_bytes(row, separator) == last_text.rstrip(b"\r"):
            raise ValueError(
                f"`{path}` is truncated: line {_count_lines(path)}, its last, has "
                f"{row.actual_columns} of {row.expected_columns} fields and no "
                f"line end ({last[-80:]!r}). Copy or download the file again."
            )


def _line_number(path: Path, line: bytes, encoding: str) -> int | None:
    """Number (from 1) of the first line of `path` equal to `line`, or None."""
    wanted = line.decode("utf-8", "replace").encode(encoding, "replace")
    with path.open("rb") as handle:
        for number, text in enumerate(handle, start=1):
            if text.rstrip(b"\r\n") == wanted:
                return number
    return None


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
    under the file's name with the first one's line number, as are the data
    rows read.

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
        ValueError: The header lacks one of `columns`, is separated by another
            character, the file is not UTF-8 (with the byte offset) or its last
            line is cut short (with the line number).
    """
    header = _read_header(path)
    missing = [name for name in columns if name not in header]
    if missing:
        _check_separator(path, header, len(columns), ",")
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
    return _read_delimited(
        path,
        list(columns),
        report,
        what=what,
        parse_options={"newlines_in_values": newlines_in_values},
        read_options={},
    )


def _read_delimited(
    path: Path | io.BytesIO,
    columns: list[str],
    report: DataReport,
    *,
    what: str,
    parse_options: dict,
    read_options: dict,
    source: Path | None = None,
    encoding: str = "utf-8",
    separator: str = ",",
) -> pa.Table:
    """Read `columns` as trimmed strings with pyarrow; count malformed lines."""
    file_path = source or path
    malformed: list[pa_csv.InvalidRow] = []

    def skip_row(row: pa_csv.InvalidRow) -> str:
        malformed.append(row)
        return "skip"

    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(**read_options),
            parse_options=pa_csv.ParseOptions(
                invalid_row_handler=skip_row, **parse_options
            ),
            # All text first, so that a bad field drops its row, not the read.
            convert_options=pa_csv.ConvertOptions(
                include_columns=columns,
                column_types={name: pa.string() for name in columns},
            ),
        )
    except UnicodeDecodeError as err:
        raise _invalid_encoding_error(file_path, encoding, str(err)) from err
    except pa.ArrowInvalid as err:
        if "UTF8" in str(err) or "utf8" in str(err).lower():
            raise _invalid_encoding_error(file_path, encoding, str(err)) from err
        raise ValueError(
            f"Could not parse `{file_path}` as CSV: {err}. Check that the file "
            f"is {what} and complete."
        ) from err

    name = file_path.name
    report.read(name, table.num_rows + len(malformed))
    if malformed:
        _raise_if_truncated(file_path, malformed, separator, encoding)
        # pyarrow numbers rows only when reading on one thread; find the line.
        first = min(malformed, key=lambda row: row.number or 0)
        number = first.number or _line_number(
            file_path, _row_bytes(first, separator), encoding
        )
        where = f"line {number}: " if number else ""
        report.drop(
            name,
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
        raise _invalid_encoding_error(path, "utf-8", str(err)) from err
    row = next(csv.reader([first_line]), [])
    return [name.strip() for name in row]


def _read_headerless(path: Path, spec: _FileSpec, report: DataReport) -> pa.Table:
    """Read a file without header (ml-100k, ml-1m, ml-10m) as trimmed text."""
    names = list(spec.field_names)
    with path.open("rb") as handle:
        first_line = handle.readline().decode(spec.encoding, "replace")
    first_line = first_line.rstrip("\r\n")
    if not first_line:
        raise ValueError(
            f"`{path}` is empty; expected {spec.describe_format()} "
            f"({', '.join(f'`{n}`' for n in names)})."
        )
    _check_separator(path, first_line.split(spec.separator), len(names), spec.separator)

    read_options = {"column_names": names, "encoding": spec.encoding}
    source: Path | io.BytesIO = path
    separator = spec.separator
    if len(separator) > 1:
        # pyarrow splits on one byte; `::` becomes a byte MovieLens never uses.
        data = path.read_bytes().decode(spec.encoding)
        source = io.BytesIO(data.replace(separator, _UNIT_SEPARATOR).encode())
        del data
        separator = _UNIT_SEPARATOR
        read_options["encoding"] = "utf-8"
    wanted = [column.source for column in spec.columns if column.source in names]
    table = _read_delimited(
        source,
        wanted if spec.file_name != "u.item" else names,
        report,
        what=f"{spec.describe_format()}",
        # MovieLens .dat titles hold bare quotes, e.g. `"Great Performances"`.
        parse_options={"delimiter": separator, "quote_char": False},
        read_options=read_options,
        source=path,
        encoding=spec.encoding,
        separator=spec.separator,
    )
    if spec.file_name == "u.item":
        table = _genres_from_flags(table)
    return table.select([column.source for column in spec.columns])


def _genres_from_flags(table: pa.Table) -> pa.Table:
    """Join ml-100k's 19 genre flag columns into one `|`-separated `genres`.

    The `unknown` flag means no genre, like "(no genres listed)". A flag is
    set where it reads `1`; anything else counts as not set.
    """
    flags = np.stack(
        [
            pc.equal(table[name], "1").to_numpy(zero_copy_only=False)
            for name in ML100K_GENRES
        ],
        axis=1,
    )
    flags[:, 0] = False  # `unknown`
    names = np.array(ML100K_GENRES, dtype=object)
    genres = ["|".join(names[row]) for row in flags]
    return table.append_column("genres", pa.array(genres, type=pa.string()))


def _read_file(data_dir: Path, spec: _FileSpec, report: DataReport) -> pa.Table:
    """Read one MovieLens file, drop rows whose fields do not parse.

    Returns:
        A table with recray's column names: integers as int64, numbers as
        float64, text as trimmed strings (optional text empty where blank),
        optional integers null where blank.
    """
    path = data_dir / spec.file_name
    if spec.header:
        table = read_csv_text(
            path,
            [column.source for column in spec.columns],
            report,
            what="a MovieLens file with its header line",
        )
    else:
        table = _read_headerless(path, spec, report)
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


def _drop_bad_timestamps(
    table: pa.Table, spec: _FileSpec, report: DataReport
) -> pa.Table:
    """Drop negative, millisecond and future timestamps, each counted.

    Raises:
        ValueError: Every timestamp of the file is in milliseconds, so the
            file as a whole needs converting rather than its rows dropping.
    """
    label = spec.label("timestamp")
    table = _filter(
        table,
        pc.greater_equal(table["timestamp"], 0),
        spec,
        f"negative {label}",
        report,
    )
    timestamps = table["timestamp"].to_numpy()
    in_ms = timestamps >= _MAX_SECONDS
    if timestamps.size and in_ms.all():
        raise ValueError(
            f"`{spec.file_name}`: every {label} is in milliseconds (e.g. "
            f"{int(timestamps[0])}); MovieLens uses Unix seconds. Divide the "
            f"column by 1000 and save the file again."
        )
    table = _filter(
        table,
        ~in_ms,
        spec,
        f"{label} in milliseconds (10 or more digits), expected Unix seconds",
        report,
    )
    now = int(time.time()) + _FUTURE_SLACK_S
    return _filter(
        table,
        pc.less_equal(table["timestamp"], now),
        spec,
        f"{label} in the future",
        report,
    )


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
        pc.greater_equal(ratings["rating"], layout.min_rating),
        pc.less_equal(ratings["rating"], MAX_RATING),
    )
    ratings = _filter(
        ratings,
        in_range,
        spec,
        f"{rating} outside {layout.min_rating} to {MAX_RATING}",
        report,
    )

    steps = ratings["rating"].to_numpy() / layout.rating_step
    ratings = _filter(
        ratings,
        steps == np.round(steps),
        spec,
        f"{rating} not a multiple of {layout.rating_step}",
        report,
    )

    ratings = _drop_bad_timestamps(ratings, spec, report)
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
