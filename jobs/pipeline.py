"""The main job: MovieLens files to an evaluated two-tower model, on Ray.

Runs ingest, embed, histories, train and evaluate in order, writes everything
to `runs/<name>/` and prints the validation metrics table. Locally:

    python jobs/pipeline.py --data-dir ../shared/data/movielens/ml-latest-small

On a running cluster (here a local `ray start --head`), with absolute paths
because the job runs in a copy of this folder:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pipeline.py --data-dir /abs/ml-latest-small \
        --tmdb-path /abs/tmdb_5000_movies.csv --runs-dir /abs/runs \
        --cache-dir /abs/.cache/embeddings

(`make ray-up-local` starts such a head on port 8275; `make submit` submits.)
"""

from recray.cli import main
from recray.pipeline import STAGES

if __name__ == "__main__":
    main(stages=STAGES, description=__doc__)
