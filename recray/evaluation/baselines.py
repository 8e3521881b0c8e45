"""Baselines scored on the same validation examples as the model."""

from __future__ import annotations

import numpy as np


def popularity_scores(training_targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """Each movie's score is how often training users rated it, [vocab_size].

    Args:
        training_targets: Vocabulary rows of the training users' ratings.
        vocab_size: Rows of the embedding table, padding included.
    """
    return np.bincount(training_targets, minlength=vocab_size).astype(np.float64)
