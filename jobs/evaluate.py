"""Evaluate: rank the catalogue for validation users; model against popularity.

Runs one stage of the main job on the run folder `runs/<name>`; the stages
before it must have run for that name (see jobs/pipeline.py):

    python jobs/evaluate.py --name default
"""

from recray.cli import main

if __name__ == "__main__":
    main(stages=["evaluate"], description=__doc__)
