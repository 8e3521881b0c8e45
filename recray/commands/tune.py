"""`recray tune` (and jobs/tune.py): a Ray Tune search over the towers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import tyro

from recray import cli
from recray.config import TuneConfig

DESCRIPTION = """\
A Ray Tune search over the towers (attention heads, key size, dense units,
dropout, pooling, learning rate, trainable embeddings) with ASHA on validation
HR@100, on the run folder runs/<name> (prepared first if needed).

Search flags are listed here; every flag of `recray run` (--name,
--data-dir, --epochs, --batch-size, --cpus-per-worker, --use-gpu True,
--gpu-workers N, --clearml, --config FILE, ...) is accepted too. --resume finishes an
interrupted search of the same --name and --search-name."""


def parse(argv: Sequence[str]):
    """Split `argv` into the search settings, `--resume` and the run's config.

    Returns:
        (TuneConfig, resume, PipelineConfig, log level).
    """
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--resume", action="store_true")
    known, rest = early.parse_known_args(list(argv))
    settings, rest = tyro.cli(
        TuneConfig,
        args=rest,
        description=DESCRIPTION,
        return_unknown_args=True,
    )
    config, log_level = cli.parse(rest, DESCRIPTION)
    return settings, known.resume, config, log_level


def main(argv: Sequence[str], command: str = "tune") -> int:
    """Run or resume a search; print where its report and best config are."""
    from recray.tuning.search import METRIC, run_search

    settings, resume, config, log_level = parse(argv)
    cli.configure_logging(log_level)
    result = run_search(config, settings, resume=resume)

    print(f"\n{len(result.trials)} trials; best {METRIC} = {result.best_metric:.4f}")
    for name, value in result.best_parameters.items():
        print(f"  {name}: {value}")
    print(f"\nReport:      {result.report}")
    print(f"Best config: {result.best_config}")
    print(f"  train it:  python jobs/pipeline.py --config {result.best_config}")
    print(f"TensorBoard: tensorboard --logdir {result.experiment_dir}")
    return 0
