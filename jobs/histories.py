"""Histories: cut ratings into padded next-movie examples, split by user.

Runs one stage of the main job on the run folder `runs/<name>`; the stages
before it must have run for that name (see jobs/pipeline.py):

    python jobs/histories.py --name default
"""

from recray.cli import main

if __name__ == "__main__":
    main(stages=["histories"], description=__doc__)
