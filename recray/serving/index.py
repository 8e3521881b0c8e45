"""Exporting a trained run's candidate model and candidate index.

The index holds one candidate embedding per catalogue movie, trained and
added alike, each computed by the exported candidate model from the movie's
text vector; `movies.parquet` beside it keeps the movie ids and titles in the
index's row order. The train stage calls `export_serving`; `recray add-movies`
calls `build_index` after it extends the catalogue.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recray.model.export import (
    ExportedCandidateModel,
    IndexKind,
    export_candidate_model,
    export_index,
)
from recray.serving.catalogue import Catalogue, ServingPaths, load_catalogue

logger = logging.getLogger(__name__)

INDEX_MODEL = "saved_model"
INDEX_MOVIES = "movies.parquet"
INDEX_CANDIDATES = "candidate_embeddings.npy"
INDEX_INFO = "index.json"


def export_serving(candidate_model, run_dir: Path, kind: IndexKind = "auto") -> None:
    """Export the candidate model and the index of a freshly trained run.

    Movies added to the run before (`recray add-movies`) stay in the index,
    re-embedded by the new candidate model.

    Args:
        candidate_model: The trained `recray.model.towers.CandidateModel`.
        run_dir: The run folder.
        kind: Index kind, see `recray.model.export.export_index`.
    """
    paths = ServingPaths(run_dir)
    _replace_folder(paths.candidate_model, export_candidate_model, candidate_model)
    build_index(paths, load_catalogue(paths), kind)
    logger.info(
        "Exported the candidate model to %s and the index to %s",
        paths.candidate_model,
        paths.index,
    )


def _replace_folder(target: Path, write, *args) -> None:
    """Write a folder next to `target`, then swap it in, so that a failed write
    leaves the old one whole."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(*args, staging / "out")
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        (staging / "out").rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_index(
    paths: ServingPaths, catalogue: Catalogue, kind: IndexKind = "auto"
) -> str:
    """Embed every catalogue movie with the candidate model; write the index.

    Returns:
        The kind of index written.
    """
    candidate_model = ExportedCandidateModel(paths.candidate_model)
    candidates = np.concatenate(
        [
            candidate_model(
                catalogue.inputs[start : start + 8192],
                catalogue.rows[start : start + 8192],
            )
            for start in range(0, len(catalogue), 8192)
        ]
    )  # [num_movies, embedding_dim]
    written: dict[str, str] = {}

    def write(folder: Path) -> None:
        folder.mkdir()
        written["kind"] = export_index(
            candidates, catalogue.movie_ids, folder / INDEX_MODEL, kind
        )
        pq.write_table(catalogue.to_table(), folder / INDEX_MOVIES)
        np.save(folder / INDEX_CANDIDATES, candidates)
        info = {
            "kind": written["kind"],
            "movies": len(catalogue),
            "added_movies": int(catalogue.added.sum()),
            "embedding_dim": int(candidates.shape[1]),
        }
        (folder / INDEX_INFO).write_text(json.dumps(info, indent=2) + "\n")

    _replace_folder(paths.index, write)
    logger.info(
        "Indexed %d movies (%d added) with a %s index",
        len(catalogue),
        int(catalogue.added.sum()),
        written["kind"],
    )
    return written["kind"]
