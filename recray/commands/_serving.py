"""What the serving commands share: the `--run` flag, logging, error exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path


def parser(command: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with `--run` and `--log-level`."""
    parsed = argparse.ArgumentParser(prog=f"recray {command}", description=description)
    parsed.add_argument(
        "--run", type=Path, required=True, help="a trained run folder, runs/NAME"
    )
    parsed.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    return parsed


def run(command: str, args: argparse.Namespace, body: Callable[[], None]) -> int:
    """Configure logging, run `body`; a user error prints one line, exits 2."""
    # TensorFlow's C++ start-up lines would bury the answer.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        body()
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"recray {command}: error: {err}", file=sys.stderr)
        return 2
    return 0
