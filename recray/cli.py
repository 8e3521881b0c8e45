"""Command-line front of the job stages, shared by the scripts in jobs/.

Flags come from the fields of `recray.config.PipelineConfig` (tyro builds
them, e.g. `--data-dir`, `--epochs`, `--num-heads`); `--config FILE` first
loads a YAML file of the same shape as a run's `config.yaml`, and flags then
override it. `--log-level` sets the logging level. This is the entry-point
layer: it configures logging and prints the results table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import tyro

from recray import pipeline
from recray.config import PipelineConfig, load_yaml

USAGE_NOTE = (
    "Also: --config FILE (YAML defaults, e.g. a run's config.yaml; flags "
    "override it) and --log-level {DEBUG,INFO,WARNING,ERROR}."
)


def parse(argv: Sequence[str], description: str) -> tuple[PipelineConfig, str]:
    """Build the config from `--config`, then the other flags; return it and
    the log level."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", type=Path)
    early.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    known, rest = early.parse_known_args(argv)
    base = load_yaml(PipelineConfig, known.config) if known.config else PipelineConfig()
    config = tyro.cli(
        PipelineConfig,
        args=rest,
        default=base,
        description=f"{description}\n\n{USAGE_NOTE}",
        config=(tyro.conf.OmitArgPrefixes, tyro.conf.FlagConversionOff),
    )
    return config, known.log_level


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(stages: Sequence[str], description: str, argv: Sequence[str] | None = None):
    """Parse flags, run `stages`, print the metrics table if evaluated."""
    config, log_level = parse(sys.argv[1:] if argv is None else argv, description)
    configure_logging(log_level)
    paths = pipeline.run(config, stages)
    if config.embedding.dry_run and "embed" in stages:
        plan = json.loads(paths.embedding_plan.read_text())
        from recray.embeddings import EmbeddingPlan

        print(f"\nDry run, nothing embedded ({paths.embedding_plan}):")
        print(EmbeddingPlan(**plan).summary())
        return
    if "evaluate" in stages:
        metrics = pipeline.load_metrics(paths)
        print(f"\nValidation metrics ({paths.metrics}):")
        print(pipeline.format_metrics_table(metrics))
    print(f"\nRun folder: {paths.root}")
