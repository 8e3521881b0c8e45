"""The `recray` command: one entry point, one module per subcommand.

    recray run --name try1              # the main job (jobs/pipeline.py)
    recray train --config best.yaml     # one stage of it
    recray <command> --help

Each subcommand lives in the module named in `COMMANDS` and exposes
`main(argv)`; it is imported only when called, so `recray data ...` never
loads TensorFlow. This is the entry-point layer: it may print.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# Subcommand -> (module with `main(argv)`, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("recray.commands.stages", "run the main job, every stage in order"),
    "ingest": ("recray.commands.stages", "stage: validate MovieLens and TMDB"),
    "embed": ("recray.commands.stages", "stage: embed every movie text"),
    "histories": ("recray.commands.stages", "stage: cut padded examples"),
    "train": ("recray.commands.stages", "stage: fit the towers with Ray Train"),
    "evaluate": ("recray.commands.stages", "stage: score held-out users"),
    "data": ("recray.commands.data", "download a MovieLens release or synthesize one"),
    "recommend": ("recray.commands.recommend", "movies for a typed history"),
    "similar": ("recray.commands.similar", "closest movies by text embedding"),
    "add-movies": ("recray.commands.add_movies", "add new movies to a run's index"),
    "tune": ("recray.commands.tune", "Ray Tune search over the towers (ASHA)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: recray COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`recray COMMAND --help` lists a command's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `recray COMMAND ARGS...` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"recray: unknown command `{name}`.\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, command=name) or 0
