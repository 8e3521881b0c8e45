"""`recray data download NAME` and `recray data synth`: data, fetched or made.

recray data download ml-25m --cache-dir .cache/movielens
recray data synth --out data/synthetic-ml-25m --scale 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from recray.cli import configure_logging


def _parser() -> argparse.ArgumentParser:
    from recray.data.download import (
        CACHE_DIR_ENV,
        DEFAULT_CACHE_DIR,
        RELEASES,
    )

    parser = argparse.ArgumentParser(
        prog="recray data", description="Fetch or make MovieLens data."
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="action", required=True)

    download = commands.add_parser(
        "download",
        help="fetch a GroupLens release zip, check its MD5 and unpack it",
    )
    download.add_argument("name", choices=sorted(RELEASES), help="release name")
    download.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"unpack here (env {CACHE_DIR_ENV}; default {DEFAULT_CACHE_DIR})",
    )
    download.add_argument(
        "--base-url",
        default=None,
        help="folder URL of the zips (env RECRAY_MOVIELENS_URL; default GroupLens)",
    )
    download.add_argument("--md5", default=None, help="expected MD5 of the zip")
    download.add_argument("--timeout-s", type=float, default=60.0)

    synth = commands.add_parser(
        "synth", help="write a SYNTHETIC dataset of ml-25m's shape (CSV layout)"
    )
    synth.add_argument("--out", type=Path, required=True, help="folder to write")
    synth.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of ml-25m's users, movies and ratings (default 1)",
    )
    synth.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str], command: str = "data") -> int:
    """Run `recray data ACTION ...`; print the folder written."""
    import os

    args = _parser().parse_args(list(argv))
    configure_logging(args.log_level)
    if args.action == "download":
        from recray.data.download import (
            CACHE_DIR_ENV,
            DEFAULT_CACHE_DIR,
            DownloadError,
            download_movielens,
        )

        cache_dir = args.cache_dir or Path(
            os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
        )
        try:
            folder = download_movielens(
                args.name,
                cache_dir,
                base_url=args.base_url,
                md5=args.md5,
                timeout_s=args.timeout_s,
            )
        except DownloadError as err:
            logging.getLogger("recray.data").error("%s", err)
            print(f"recray data download: {err}", file=sys.stderr)
            return 1
        print(folder)
        return 0

    from recray.data.synth import SynthSpec, write_synthetic

    summary = write_synthetic(args.out, SynthSpec.scaled(args.scale, args.seed))
    print(json.dumps(summary))
    print(args.out)
    return 0
