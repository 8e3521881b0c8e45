"""Saving the query model for serving and loading it in a fresh process.

The query model is written as a TensorFlow SavedModel with one signature,
`serving_default`, that takes `history_ids` (int32) and `history_ratings`
(float32), both [batch, length] with any length, and returns
`query_embedding` [batch, output_dim]. Loading it needs TensorFlow only, not
recray's layer classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from recray.schema import HISTORY_IDS, HISTORY_RATINGS

QUERY_EMBEDDING = "query_embedding"


def export_query_model(query_model: tf.keras.Model, path: Path) -> None:
    """Write `query_model` as a SavedModel with a `serving_default` signature."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name=HISTORY_IDS),
            tf.TensorSpec([None, None], tf.float32, name=HISTORY_RATINGS),
        ]
    )
    def serve(history_ids: tf.Tensor, history_ratings: tf.Tensor) -> dict:
        features = {HISTORY_IDS: history_ids, HISTORY_RATINGS: history_ratings}
        return {QUERY_EMBEDDING: query_model(features, training=False)}

    tf.saved_model.save(query_model, str(path), signatures={"serving_default": serve})


class ExportedQueryModel:
    """A query model loaded from `export_query_model`'s SavedModel."""

    def __init__(self, path: Path) -> None:
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(
                f"No SavedModel at `{path}`; train a run first "
                "(`python jobs/pipeline.py`)."
            )
        self._serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def __call__(
        self,
        history_ids: np.ndarray,
        history_ratings: np.ndarray,
        batch_size: int = 2048,
    ) -> np.ndarray:
        """Query embeddings [n, output_dim] of padded histories [n, length]."""
        outputs = []
        for start in range(0, len(history_ids), batch_size):
            chunk = slice(start, start + batch_size)
            result = self._serve(
                history_ids=tf.constant(history_ids[chunk], tf.int32),
                history_ratings=tf.constant(history_ratings[chunk], tf.float32),
            )
            outputs.append(result[QUERY_EMBEDDING].numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
