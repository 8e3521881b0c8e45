"""Tune: a Ray Tune search over the towers, with ASHA on validation HR@100.

Reuses the run folder `runs/<name>` (runs ingest, embed and histories first
if they are missing), trains every trial through the TensorflowTrainer, and
writes `runs/<name>/tune/<search-name>/report.html` and `best.yaml`:

    python jobs/tune.py --num-samples 4 --max-concurrent 2
    python jobs/tune.py --num-samples 4 --max-concurrent 2 --resume

On a running cluster (absolute paths: the job runs in a copy of this folder):

    ray job submit --address http://127.0.0.1:8275 --working-dir . -- \
        python jobs/tune.py --runs-dir /abs/runs --data-dir /abs/ml-latest-small
"""

import sys

from recray.commands.tune import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
