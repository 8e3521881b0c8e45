"""Embed: turn every movie text into a vector with the configured embedder (cached).

Runs one stage of the main job on the run folder `runs/<name>`; the stages
before it must have run for that name (see jobs/pipeline.py):

    python jobs/embed.py --name default
"""

from recray.cli import main

if __name__ == "__main__":
    main(stages=["embed"], description=__doc__)
