"""Train: fit the query and candidate towers with Ray Train, export them.

Runs one stage of the main job on the run folder `runs/<name>`; the stages
before it must have run for that name (see jobs/pipeline.py):

    python jobs/train.py --name default
"""

from recray.cli import main

if __name__ == "__main__":
    main(stages=["train"], description=__doc__)
