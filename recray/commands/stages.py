"""`recray run` and `recray <stage>`: the main job, whole or one stage."""

from __future__ import annotations

from collections.abc import Sequence

from recray import cli
from recray.pipeline import STAGES


def main(argv: Sequence[str], command: str = "run") -> int:
    """Run every stage (`run`) or the one stage named by `command`."""
    stages = STAGES if command == "run" else (command,)
    description = (
        "The main job: MovieLens files to an evaluated two-tower model."
        if command == "run"
        else f"The `{command}` stage of the main job on run folder runs/<name>."
    )
    cli.main(stages=stages, description=description, argv=list(argv))
    return 0
