"""HR@100 on a seeded sample of validation examples, after every epoch.

ASHA compares trials on validation HR@100, so each trial needs it per epoch,
and cheaply: a fixed sample of validation examples, the same for every trial,
is scored against the whole catalogue with the metrics of
`recray.evaluation.metrics`, on world rank 0 of the trial's Ray Train run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from recray.evaluation.metrics import rank_in_chunks, ranking_metrics, seeded_sample
from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID

PREFIX = "val_"
QUERY_BATCH = 512


@dataclass(frozen=True)
class ValidationSample:
    """Validation examples to rank the catalogue for, callable on a model.

    Attributes:
        history_ids: [num, max_history] vocabulary rows, 0 padding.
        history_ratings: [num, max_history] centred ratings.
        targets: [num] vocabulary row of each example's next movie.
        excluded: Per example, the rows its user rated before the target.
        vocab_size: Rows of the embedding table, padding included.
        ks: Hit-rate cut-offs.
    """

    history_ids: np.ndarray
    history_ratings: np.ndarray
    targets: np.ndarray
    excluded: list[np.ndarray]
    vocab_size: int
    ks: tuple[int, ...] = (10, 100)

    def __len__(self) -> int:
        return len(self.targets)

    def __call__(self, model) -> dict[str, float]:
        """`val_hr@k`, `val_ndcg@k` of a `RetrievalModel` on the sample."""
        import tensorflow as tf

        queries = np.concatenate(
            [
                model.query_model(
                    {
                        HISTORY_IDS: tf.constant(self.history_ids[start:stop]),
                        HISTORY_RATINGS: tf.constant(self.history_ratings[start:stop]),
                    },
                    training=False,
                ).numpy()
                for start, stop in _chunks(len(self), QUERY_BATCH)
            ]
        )  # [num, embedding_dim]
        rows = tf.range(self.vocab_size, dtype=tf.int32)
        candidates = model.candidate_model(rows, training=False).numpy()
        ranks = rank_in_chunks(
            lambda chunk: queries[chunk] @ candidates.T,  # [chunk, vocab_size]
            self.targets,
            self.excluded,
        )
        metrics = ranking_metrics(ranks, self.ks)
        return {
            PREFIX + name: float(value)
            for name, value in metrics.items()
            if name != "examples"
        }


def _chunks(total: int, size: int):
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def sample_validation(
    paths, size: int, seed: int, vocab_size: int, ks=(10, 100)
) -> ValidationSample:
    """Draw `size` validation examples (all if fewer) of a run folder.

    Args:
        paths: The run's `RunPaths`; its histories stage must have run.
        size: Examples to keep.
        seed: Seeds the choice.
        vocab_size: Rows of the run's embedding table.
        ks: Hit-rate cut-offs.

    Raises:
        ValueError: The run has no validation example.
    """
    from recray.data.histories import rated_before, read_examples
    from recray.data.vocabulary import MovieVocabulary

    dataset = read_examples(paths.examples / "validation")
    examples = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    total = len(examples[TARGET_ID])
    if total == 0:
        raise ValueError(
            f"`{paths.examples / 'validation'}` holds no example; hold out more "
            "users (`--validation-fraction` or `--validation-users`) or use "
            "more data."
        )
    examples = seeded_sample(examples, size, seed)
    texts = pq.read_table(paths.movie_texts, columns=["movie_id"])
    vocabulary = MovieVocabulary(texts["movie_id"].to_numpy())
    excluded = rated_before(pq.read_table(paths.ratings), vocabulary, examples)
    return ValidationSample(
        history_ids=examples[HISTORY_IDS].astype(np.int32),
        history_ratings=examples[HISTORY_RATINGS].astype(np.float32),
        targets=examples[TARGET_ID].astype(np.int64),
        excluded=list(excluded),
        vocab_size=vocab_size,
        ks=tuple(ks),
    )
