"""Reading TMDB metadata: overview, tagline, genres, keywords and cast.

Two layouts, both from The Movie Database API, whose `id` column joins
MovieLens `links.csv` `tmdbId`:

- the TMDB 5000 dump, `tmdb_5000_movies.csv`: `genres` and `keywords` hold
  JSON lists of `{"id": ..., "name": ...}` objects, of which recray keeps the
  names;
- "The Movies Dataset", `movies_metadata.csv` with `credits.csv` (and
  optionally `keywords.csv`) beside it: the lists are Python literals
  (single quotes), and the first `PROTAGONISTS` names of the `cast` (in
  billing order) are the movie's protagonists.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recray.config import TMDB_PATH_ENV
from recray.data.movielens import INTEGER_PATTERN, read_csv_text
from recray.data.report import DataReport

logger = logging.getLogger(__name__)

TMDB_SCHEMA = pa.schema(
    [
        pa.field("tmdb_id", pa.int64(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("overview", pa.string()),
        pa.field("tagline", pa.string()),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
        pa.field("keywords", pa.list_(pa.string()), nullable=False),
        # The protagonists, in billing order; empty in the TMDB 5000 dump.
        pa.field("cast", pa.list_(pa.string())),
    ]
)

TMDB_5000_FILE = "tmdb_5000_movies.csv"
MOVIES_DATASET_FILE = "movies_metadata.csv"
CREDITS_FILE = "credits.csv"
KEYWORDS_FILE = "keywords.csv"
# Cast members (in billing order) kept as a movie's protagonists.
PROTAGONISTS = 3
# `'name': 'Tom Hanks'` or `'name': "Tom O'Hanks"` in a Python-literal cell.
_NAME_PATTERN = re.compile(r"""'name': (?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")""")

# Columns read from the dump; `id` becomes `tmdb_id`, the rest keep their names.
_COLUMNS = ("id", "title", "overview", "tagline", "genres", "keywords")
_JSON_COLUMNS = ("genres", "keywords")
_TEXT_COLUMNS = ("title", "overview", "tagline")


def load_tmdb(path: Path, report: DataReport) -> pa.Table:
    """Read and validate TMDB metadata in either layout.

    `path` is `tmdb_5000_movies.csv`, `movies_metadata.csv` (The Movies
    Dataset, with `credits.csv` beside it) or a folder holding one of them.
    See `load_tmdb_5000` and `load_movies_dataset`.

    Raises:
        FileNotFoundError: `path` does not exist or holds neither layout.
        ValueError: A file lacks a required column or cannot be parsed.
    """
    if path.is_dir():
        for name in (TMDB_5000_FILE, MOVIES_DATASET_FILE):
            if (path / name).is_file():
                return load_tmdb(path / name, report)
        found = ", ".join(f"`{p.name}`" for p in sorted(path.iterdir())[:20])
        raise FileNotFoundError(
            f"TMDB folder `{path}` holds neither `{TMDB_5000_FILE}` (TMDB 5000) "
            f"nor `{MOVIES_DATASET_FILE}` with `{CREDITS_FILE}` (The Movies "
            f"Dataset); found {found or 'nothing'}. Pass `--tmdb-path` to one "
            "of those files."
        )
    if path.name == MOVIES_DATASET_FILE:
        return load_movies_dataset(path, report)
    return load_tmdb_5000(path, report)


def load_tmdb_5000(path: Path, report: DataReport) -> pa.Table:
    """Read and validate the TMDB 5000 movies CSV.

    Rows with a missing or non-integer `id` are dropped, of rows with the
    same `id` the first is kept; both counted in `report`. A `genres` or
    `keywords` cell that is not a JSON list of objects with a `name` becomes
    an empty list and is counted as an emptied field; the row stays.

    Args:
        path: The TMDB 5000 movies CSV, e.g. `tmdb_5000_movies.csv`.
        report: Collects the rows read and dropped.

    Returns:
        One row per TMDB id with schema `TMDB_SCHEMA`, in file order. Blank
        `title`, `overview` and `tagline` are null; texts are trimmed.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: The file lacks a required column or cannot be parsed.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"TMDB file `{path}` does not exist. Pass `--tmdb-path` (or set "
            f"`{TMDB_PATH_ENV}`) to the TMDB 5000 movies CSV, or pass "
            f"`--tmdb-path None` (or set `{TMDB_PATH_ENV}=`) to use MovieLens "
            "text only."
        )
    file = path.name
    table = read_csv_text(
        path,
        list(_COLUMNS),
        report,
        what="the TMDB 5000 movies CSV (`tmdb_5000_movies.csv`)",
        # Overviews may span lines inside quotes.
        newlines_in_values=True,
    )

    valid = pc.match_substring_regex(table["id"], INTEGER_PATTERN).to_numpy(
        zero_copy_only=False
    )
    _count_drops(table, valid, file, "missing or non-integer `id`", report)
    table = table.filter(pa.array(valid))
    tmdb_ids = pc.cast(table["id"], pa.int64())

    first = np.zeros(len(tmdb_ids), dtype=bool)
    first[np.unique(tmdb_ids.to_numpy(), return_index=True)[1]] = True
    _count_drops(table, first, file, "duplicate `id`, kept the first", report)
    table = table.filter(pa.array(first))
    tmdb_ids = tmdb_ids.filter(pa.array(first))

    columns: dict[str, pa.Array | pa.ChunkedArray] = {"tmdb_id": tmdb_ids}
    for name in _TEXT_COLUMNS:
        text = table[name]
        columns[name] = pc.if_else(pc.equal(text, ""), None, text)
    for name in _JSON_COLUMNS:
        columns[name] = _names_from_json(table[name], file, name, report)

    columns["cast"] = pa.array([[]] * len(tmdb_ids), type=pa.list_(pa.string()))
    result = pa.table(columns).cast(TMDB_SCHEMA)
    report.dataset["tmdb_layout"] = "TMDB 5000"
    logger.info("Loaded TMDB `%s`: %d movies.", path, result.num_rows)
    return result


def load_movies_dataset(path: Path, report: DataReport) -> pa.Table:
    """Read "The Movies Dataset": metadata, cast from credits, keywords.

    Rows with a missing or non-integer `id` (the dump has a few dates there)
    are dropped and of duplicate ids the first is kept, in every file, each
    counted in `report`. A list cell that does not parse becomes an empty list
    and is counted as an emptied field. Without `credits.csv` or
    `keywords.csv` those columns are empty lists.

    Args:
        path: `movies_metadata.csv`; `credits.csv` and `keywords.csv` are
            read from the same folder.
        report: Collects the rows read and dropped.

    Returns:
        One row per TMDB id with schema `TMDB_SCHEMA`, in file order.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: A file lacks a required column or cannot be parsed.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"TMDB file `{path}` does not exist. Pass `--tmdb-path` to "
            f"`{MOVIES_DATASET_FILE}` of The Movies Dataset, or `--tmdb-path None` "
            "to use MovieLens text only."
        )
    what = "`movies_metadata.csv` of The Movies Dataset"
    table = read_csv_text(
        path,
        ["id", "title", "overview", "tagline", "genres"],
        report,
        what=what,
        newlines_in_values=True,
    )
    table, tmdb_ids = _valid_unique_ids(table, path.name, report)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {"tmdb_id": tmdb_ids}
    for name in _TEXT_COLUMNS:
        text = table[name]
        columns[name] = pc.if_else(pc.equal(text, ""), None, text)
    columns["genres"] = _names_from_literal(
        table["genres"], path.name, "genres", report
    )

    keywords = _side_file(path.parent / KEYWORDS_FILE, "keywords", report)
    columns["keywords"] = _lookup(tmdb_ids, keywords, "keywords", report)
    credits = _side_file(path.parent / CREDITS_FILE, "cast", report)
    columns["cast"] = _lookup(tmdb_ids, credits, "cast", report)

    result = pa.table(columns).cast(TMDB_SCHEMA)
    report.dataset["tmdb_layout"] = "The Movies Dataset"
    logger.info(
        "Loaded TMDB `%s` (The Movies Dataset): %d movies, %d with cast.",
        path,
        result.num_rows,
        int(pc.sum(pc.greater(pc.list_value_length(result["cast"]), 0)).as_py() or 0),
    )
    return result


def _valid_unique_ids(
    table: pa.Table, file: str, report: DataReport
) -> tuple[pa.Table, pa.Array]:
    """Drop rows with a bad `id` and later duplicates; return them and the ids."""
    valid = pc.match_substring_regex(table["id"], INTEGER_PATTERN).to_numpy(
        zero_copy_only=False
    )
    _count_drops(table, valid, file, "missing or non-integer `id`", report)
    table = table.filter(pa.array(valid))
    tmdb_ids = pc.cast(table["id"], pa.int64()).combine_chunks()
    first = np.zeros(len(tmdb_ids), dtype=bool)
    first[np.unique(tmdb_ids.to_numpy(), return_index=True)[1]] = True
    _count_drops(table, first, file, "duplicate `id`, kept the first", report)
    return table.filter(pa.array(first)), tmdb_ids.filter(pa.array(first))


def _side_file(path: Path, column: str, report: DataReport) -> pa.Table | None:
    """`id` and the parsed names of `column` of `credits.csv` or `keywords.csv`."""
    if not path.is_file():
        logger.warning(
            "No `%s` beside `%s`; movies get no %s.",
            path.name,
            MOVIES_DATASET_FILE,
            column,
        )
        return None
    table = read_csv_text(
        path,
        ["id", column],
        report,
        what=f"`{path.name}` of The Movies Dataset",
        newlines_in_values=True,
    )
    if "title" not in table.column_names:
        table = table.append_column("title", table["id"])
    table, tmdb_ids = _valid_unique_ids(table, path.name, report)
    if column == "cast":
        names = _protagonists(table[column], path.name, report)
    else:
        names = _names_from_literal(table[column], path.name, column, report)
    return pa.table({"tmdb_id": tmdb_ids, column: names})


def _lookup(
    tmdb_ids: pa.Array, side: pa.Table | None, column: str, report: DataReport
) -> pa.Array:
    """`column` of `side` per TMDB id; an empty list where the id is absent."""
    empty = pa.array([[]] * len(tmdb_ids), type=pa.list_(pa.string()))
    if side is None:
        return empty
    rows = pc.index_in(tmdb_ids, value_set=side["tmdb_id"])
    values = side[column].combine_chunks().take(rows)
    return pc.if_else(pc.is_null(rows), empty, values)


def _protagonists(cells: pa.ChunkedArray, file: str, report: DataReport) -> pa.Array:
    """The first `PROTAGONISTS` cast names of each Python-literal `cast` cell.

    A regular expression over the names is far faster than evaluating the
    whole literal (credits.csv is about 190 MB); a cell without any name that
    is not an empty list is counted as an emptied field.
    """
    names: list[list[str]] = []
    malformed = 0
    example = None
    for cell in cells.to_pylist():
        text = (cell or "").strip()
        found = [
            (single or double).replace("\\'", "'").strip()
            for single, double in _NAME_PATTERN.findall(text)[:PROTAGONISTS]
        ]
        if not found and text not in ("", "[]"):
            malformed += 1
            example = example or text[:200]
        names.append(found)
    report.drop(file, "malformed `cast`, field emptied", malformed, example=example)
    return pa.array(names, type=pa.list_(pa.string()))


def _count_drops(
    table: pa.Table, keep: np.ndarray, file: str, reason: str, report: DataReport
) -> None:
    dropped = int(keep.size - np.count_nonzero(keep))
    if dropped:
        row = table.slice(int(np.argmin(keep)), 1).to_pylist()[0]
        example = f"id={row['id']!r}, title={row['title']!r}"
        report.drop(file, reason, dropped, example=example)


def _names_from_json(
    cells: pa.ChunkedArray, file: str, column: str, report: DataReport
) -> pa.Array:
    """Parse JSON lists of `{"id", "name"}` objects into lists of names (TMDB 5000)."""
    return _names(cells, file, column, report, json.loads, "JSON")


def _names_from_literal(
    cells: pa.ChunkedArray, file: str, column: str, report: DataReport
) -> pa.Array:
    """Parse Python-literal lists of `{"id", "name"}` dicts into names (The
    Movies Dataset writes its lists with Python's `repr`)."""
    return _names(cells, file, column, report, ast.literal_eval, "list")


def _names(
    cells: pa.ChunkedArray,
    file: str,
    column: str,
    report: DataReport,
    parse: Callable[[str], object],
    kind: str,
) -> pa.Array:
    """Lists of names from cells that `parse` reads as lists of `{"name"}`s.

    A blank cell is an empty list. A cell that does not parse, or is not a
    list of objects with a string `name`, becomes an empty list and is counted.
    """
    names: list[list[str]] = []
    malformed = 0
    example = None
    # One parse per cell: a few thousand cells, and pyarrow has no vectorised
    # parser that accepts a column of documents.
    for cell in cells.to_pylist():
        text = (cell or "").strip()
        if not text:
            names.append([])
            continue
        try:
            items = parse(text)
            if not isinstance(items, list):
                raise TypeError("not a list")
            names.append([_name_of(item) for item in items])
        except (ValueError, TypeError, KeyError, SyntaxError, MemoryError):
            malformed += 1
            example = example or text[:200]
            names.append([])
    report.drop(
        file,
        f"malformed {kind} in `{column}`, field emptied",
        malformed,
        example=example,
    )
    return pa.array(names, type=pa.list_(pa.string()))


def _name_of(item: object) -> str:
    if not isinstance(item, dict):
        raise TypeError("list item is not a JSON object")
    name = item["name"]
    if not isinstance(name, str):
        raise TypeError("`name` is not a string")
    return name.strip()
