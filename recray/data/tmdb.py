"""Reading the TMDB 5000 movies dump: overview, tagline, genres and keywords.

The dump comes from The Movie Database API; its `id` column joins MovieLens
`links.csv` `tmdbId`. `genres` and `keywords` hold JSON lists of
`{"id": ..., "name": ...}` objects, of which recray keeps the names.
"""

from __future__ import annotations

import json
import logging
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
    ]
)

# Columns read from the dump; `id` becomes `tmdb_id`, the rest keep their names.
_COLUMNS = ("id", "title", "overview", "tagline", "genres", "keywords")
_JSON_COLUMNS = ("genres", "keywords")
_TEXT_COLUMNS = ("title", "overview", "tagline")


def load_tmdb(path: Path, report: DataReport) -> pa.Table:
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

    result = pa.table(columns).cast(TMDB_SCHEMA)
    logger.info("Loaded TMDB `%s`: %d movies.", path, result.num_rows)
    return result


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
    """Parse JSON lists of `{"id", "name"}` objects into lists of names.

    A blank cell is an empty list. A cell that does not parse, or is not a
    list of objects with a string `name`, becomes an empty list and is counted.
    """
    names: list[list[str]] = []
    malformed = 0
    example = None
    # One json.loads per cell: a few thousand cells, and JSON has no vectorised
    # parser in pyarrow that accepts a column of documents.
    for cell in cells.to_pylist():
        text = (cell or "").strip()
        if not text:
            names.append([])
            continue
        try:
            items = json.loads(text)
            if not isinstance(items, list):
                raise TypeError("not a JSON list")
            names.append([_name_of(item) for item in items])
        except (ValueError, TypeError, KeyError):
            malformed += 1
            example = example or text[:200]
            names.append([])
    report.drop(
        file,
        f"malformed JSON in `{column}`, field emptied",
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
