"""Loading exported SavedModels: what an older export gets told."""

from __future__ import annotations

import pytest
import tensorflow as tf

from recray.model.export import MOVIE_VECTORS, ExportedCandidateModel


def test_a_candidate_model_without_movie_rows_asks_for_retraining(tmp_path):
    # The candidate model as recray exported it before the movie bias:
    # table rows in, embeddings out, no vocabulary rows.
    module = tf.Module()

    @tf.function(
        input_signature=[tf.TensorSpec([None, 4], tf.float32, name=MOVIE_VECTORS)]
    )
    def serve(movie_vectors):
        return {"candidate_embedding": movie_vectors}

    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": serve})
    with pytest.raises(ValueError, match=r"\['movie_rows'\].*rerun the `train` stage"):
        ExportedCandidateModel(tmp_path)
