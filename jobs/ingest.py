"""Ingest: read and validate MovieLens and TMDB, write clean ratings and movie texts.

Runs one stage of the main job on the run folder `runs/<name>`; the stages
before it must have run for that name (see jobs/pipeline.py):

    python jobs/ingest.py --name default
"""

from recray.cli import main

if __name__ == "__main__":
    main(stages=["ingest"], description=__doc__)
