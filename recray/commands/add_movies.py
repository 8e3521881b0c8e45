"""`recray add-movies`: make new movies recommendable without retraining.

recray add-movies --run runs/NAME new_movies.csv
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from recray.commands import _serving


def main(argv: Sequence[str], command: str = "add-movies") -> int:
    """Embed the movies of FILE and add them to the run's index."""
    from recray.serving import add_movies

    parser = _serving.parser(
        command, "Add the movies of FILE to a trained run.\n\n" + add_movies.__doc__
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", type=Path, help="a .csv, .json or .jsonl file")
    args = parser.parse_args(argv)

    def body() -> None:
        added = add_movies.add_movies(args.run, args.file)
        print(f"Added {added.num_rows} movies to {args.run}:")
        for movie_id, title in zip(
            added["movie_id"].to_pylist(), added["title"].to_pylist(), strict=True
        ):
            print(f"  {movie_id}  {title}")

    return _serving.run(command, args, body)
