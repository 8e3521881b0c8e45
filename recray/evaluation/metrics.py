"""Ranking metrics over the full catalogue, in numpy.

Every validation example ranks every movie. Movies the user rated before the
target are excluded (they can never outrank it), ties are broken in favour of
the lower movie row, so a constant scorer is not flattered, and the target's
rank is counted from 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recray.schema import PAD_ID


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, excluded: Sequence[np.ndarray]
) -> np.ndarray:
    """Zero-based rank of each target among the movies not excluded.

    Args:
        scores: [num_examples, vocab_size] higher is better; column `PAD_ID`
            is never a movie and never ranks.
        targets: [num_examples] vocabulary row of each example's target.
        excluded: For each example, the rows the user had already rated.

    Returns:
        [num_examples] int ranks; 0 means the target came first.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[:, PAD_ID] = -np.inf
    for row, rated in enumerate(excluded):
        scores[row, rated] = -np.inf

    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, np.newaxis]
    columns = np.arange(scores.shape[1])[np.newaxis, :]
    higher = (scores > target_scores).sum(axis=1)
    tied_before = ((scores == target_scores) & (columns < targets[:, np.newaxis])).sum(
        axis=1
    )
    return higher + tied_before


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of examples whose target is in the top `k`."""
    return float(np.mean(ranks < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Normalised DCG at `k` with one relevant movie per example."""
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """`hr@k` for every k, `ndcg@k` for the smallest, and `examples`."""
    metrics: dict[str, float] = {f"hr@{k}": hit_rate(ranks, k) for k in ks}
    metrics[f"ndcg@{min(ks)}"] = ndcg(ranks, min(ks))
    metrics["examples"] = int(len(ranks))
    return metrics


def rank_in_chunks(
    score_chunk: Callable[[slice], np.ndarray],
    targets: np.ndarray,
    excluded: Sequence[np.ndarray],
    chunk_size: int = 1024,
) -> np.ndarray:
    """Ranks of all targets, scoring `chunk_size` examples at a time.

    Args:
        score_chunk: Returns the [len(chunk), vocab_size] scores of a slice
            of the examples; the full matrix never has to fit in memory.
        targets: [num_examples] target rows.
        excluded: Per example, rows already rated.
        chunk_size: Examples scored at once.
    """
    ranks = []
    for start in range(0, len(targets), chunk_size):
        chunk = slice(start, min(start + chunk_size, len(targets)))
        ranks.append(target_ranks(score_chunk(chunk), targets[chunk], excluded[chunk]))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def seeded_sample(
    examples: dict[str, np.ndarray], size: int | None, seed: int
) -> dict[str, np.ndarray]:
    """At most `size` of the examples, chosen with `seed`, in their order.

    The evaluate stage, Tune's per-epoch validation and the ablations all
    sample this way, so with one seed and size they score the same examples.

    Args:
        examples: Columns of equal length.
        size: Examples to keep; all of them when unset or not fewer.
        seed: Seeds the choice.
    """
    total = len(next(iter(examples.values()))) if examples else 0
    if size is None or size >= total:
        return examples
    chosen = np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    return {name: column[chosen] for name, column in examples.items()}
