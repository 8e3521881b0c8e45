"""The towers and the retrieval loss, in one process on tiny inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from recray.config import ModelConfig
from recray.model.towers import (
    HISTORY_IDS,
    HISTORY_RATINGS,
    MaskedPooling,
    QueryModel,
    RecencyEncoding,
    RetrievalModel,
    text_embedding_layer,
)


def _movie_vectors(vocab_size: int = 6, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(vocab_size, dim))
    vectors[0] = 0.0  # the padding / unknown row
    return vectors.astype(np.float32)


def _history(ids: list[list[int]], ratings: list[list[float]]) -> dict:
    return {
        HISTORY_IDS: tf.constant(ids, tf.int32),
        HISTORY_RATINGS: tf.constant(ratings, tf.float32),
    }


@pytest.mark.parametrize("pooling", ["average", "max"])
@pytest.mark.parametrize(
    ("use_attention", "attention_residual"),
    [(True, False), (True, True), (False, False)],
)
def test_padding_does_not_change_the_query_embedding(
    pooling, use_attention, attention_residual
):
    config = ModelConfig(
        pooling=pooling,
        use_attention=use_attention,
        attention_residual=attention_residual,
        num_heads=2,
    )
    model = QueryModel(text_embedding_layer(_movie_vectors(), "movies"), config)

    alone = model(_history([[3]], [[0.5]]))
    padded = model(_history([[3, 0, 0]], [[0.5, 0.0, 0.0]]))
    # Padding rows hold junk ratings in a malformed batch; the mask must win.
    junk = model(_history([[3, 0, 0]], [[0.5, 9.0, -9.0]]))

    np.testing.assert_allclose(alone.numpy(), padded.numpy(), atol=1e-6)
    np.testing.assert_allclose(alone.numpy(), junk.numpy(), atol=1e-6)


def test_history_content_changes_the_embedding():
    model = QueryModel(text_embedding_layer(_movie_vectors(), "movies"), ModelConfig())
    one = model(_history([[3, 4, 0]], [[0.5, -0.5, 0.0]]))
    other = model(_history([[3, 5, 0]], [[0.5, -0.5, 0.0]]))
    assert not np.allclose(one.numpy(), other.numpy(), atol=1e-4)


def test_residual_attention_keeps_the_movies_when_attention_adds_nothing():
    vectors = _movie_vectors()
    residual = QueryModel(
        text_embedding_layer(vectors, "movies"), ModelConfig(attention_residual=True)
    )
    no_attention = QueryModel(
        text_embedding_layer(vectors, "movies"), ModelConfig(use_attention=False)
    )
    history = _history([[3, 4, 0]], [[0.5, -0.5, 0.0]])
    residual(history)
    no_attention(history)
    for weight in residual.attention._output_dense.weights:
        weight.assign(tf.zeros_like(weight))  # attention now adds zeros
    for layer in ("hidden", "projection"):
        getattr(no_attention, layer).set_weights(getattr(residual, layer).get_weights())

    np.testing.assert_allclose(
        residual(history).numpy(), no_attention(history).numpy(), atol=1e-6
    )


def test_without_recency_the_tower_reads_a_history_as_a_set():
    # No position enters the tower (as in the seed's design): time order only
    # decides which `max_history` movies are kept.
    config = ModelConfig(recency_positions=0)
    model = QueryModel(text_embedding_layer(_movie_vectors(), "movies"), config)
    forward = model(_history([[3, 4, 5]], [[0.5, -0.5, 1.0]]))
    shuffled = model(_history([[5, 3, 4]], [[1.0, 0.5, -0.5]]))
    np.testing.assert_allclose(forward.numpy(), shuffled.numpy(), atol=1e-5)


def test_recency_vectors_by_hand():
    layer = RecencyEncoding(positions=3)
    sequence = tf.zeros([3, 4, 3])
    mask = tf.constant(
        [
            [True, True, True, False],
            [True, False, False, False],
            [True, False, True, True],  # a cold-start movie read as padding
        ]
    )
    layer.build(sequence.shape)
    latest, second, older = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [5.0, 5.0, 5.0]
    layer.table.assign([latest, second, older])
    pad = [0.0, 0.0, 0.0]

    out = layer(sequence, mask).numpy()

    # Oldest first: the last valid movie is the latest; every movie older
    # than `positions - 1` shares the last vector; holes shift nothing.
    np.testing.assert_allclose(out[0], [older, second, latest, pad])
    np.testing.assert_allclose(out[1], [latest, pad, pad, pad])
    np.testing.assert_allclose(out[2], [older, pad, second, latest])


def test_recency_makes_order_count_and_ignores_padding():
    model = QueryModel(
        text_embedding_layer(_movie_vectors(), "movies"),
        ModelConfig(recency_positions=3),
    )
    history = _history([[3, 4, 5]], [[0.5, -0.5, 1.0]])
    model(history)
    # Zero-initialised, recency changes nothing until it has learned.
    model.recency.table.assign(
        np.random.default_rng(0).normal(size=model.recency.table.shape)
    )

    forward = model(history).numpy()
    shuffled = model(_history([[5, 3, 4]], [[1.0, 0.5, -0.5]])).numpy()
    padded = model(_history([[3, 4, 5, 0, 0]], [[0.5, -0.5, 1.0, 0, 0]])).numpy()

    assert not np.allclose(forward, shuffled, atol=1e-4)
    np.testing.assert_allclose(forward, padded, atol=1e-5)


def test_masked_pooling_by_hand():
    sequence = tf.constant([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = tf.constant([[True, True, False]])

    average = MaskedPooling("average")(sequence, mask).numpy()
    maximum = MaskedPooling("max")(sequence, mask).numpy()
    empty = MaskedPooling("max")(sequence, tf.constant([[False, False, False]]))

    np.testing.assert_allclose(average, [[2.0, 1.0]])
    np.testing.assert_allclose(maximum, [[3.0, 4.0]])
    np.testing.assert_allclose(empty.numpy(), [[0.0, 0.0]])


def test_unknown_pooling_is_a_clear_error():
    with pytest.raises(ValueError, match="`average` or `max`"):
        MaskedPooling("sum")


def _fixed_towers(model: RetrievalModel, queries: np.ndarray, candidates: np.ndarray):
    """Replace both towers by lookups so the loss can be worked out by hand."""
    model.query_model = lambda features, training=False: tf.constant(queries)
    model.candidate_model = lambda ids, training=False: tf.gather(
        tf.constant(candidates), ids
    )


def _softmax_cross_entropy(logits: np.ndarray, label: int) -> float:
    return float(np.log(np.exp(logits).sum()) - logits[label])


def test_catalogue_loss_matches_a_full_softmax_worked_by_hand():
    # Catalogue of 3 movies (ids 1..3); two queries whose targets are 2 and 3.
    candidates = np.array(
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32
    )
    queries = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    config = ModelConfig(negatives="catalogue", temperature=0.5)
    model = RetrievalModel(_movie_vectors(4, 2), config)
    _fixed_towers(model, queries, candidates)

    loss = model.per_example_loss({}, tf.constant([2, 3])).numpy()

    # Scores against movies 1, 2, 3 divided by the temperature 0.5:
    # query 1: [1.0, 0.0, 0.6] / 0.5 = [2.0, 0.0, 1.2], target movie 2
    # query 2: [0.0, 2.0, 1.6] / 0.5 = [0.0, 4.0, 3.2], target movie 3
    expected = [
        _softmax_cross_entropy(np.array([2.0, 0.0, 1.2]), 1),
        _softmax_cross_entropy(np.array([0.0, 4.0, 3.2]), 2),
    ]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # On paper: log(e^2 + e^0 + e^1.2) - 0 = 2.4604 and
    # log(e^0 + e^4 + e^3.2) - 3.2 = 1.1837.
    np.testing.assert_allclose(loss, [2.4604, 1.1837], atol=1e-4)


def test_in_batch_loss_with_logq_and_accidental_hits_by_hand():
    candidates = np.array(
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32
    )
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    # Movie 1 was a target 3 times, movie 2 once, movie 3 never: with add-one
    # smoothing the sampling probabilities are [1, 4, 2, 1] / 8.
    frequencies = np.array([0, 3, 1, 0])
    config = ModelConfig(negatives="in_batch", temperature=1.0, logq_correction=True)
    model = RetrievalModel(_movie_vectors(4, 2), config, frequencies)
    _fixed_towers(model, queries, candidates)

    # Targets 1, 2, 1: the third example's target repeats the first's.
    loss = model.per_example_loss({}, tf.constant([1, 2, 1])).numpy()

    log_q = np.log(np.array([4, 2, 4]) / 8)
    scores = queries @ candidates[[1, 2, 1]].T - log_q  # [3 queries, 3 candidates]
    # The duplicate of a query's own target is an accidental hit, not a negative.
    row0 = np.array([scores[0, 0], scores[0, 1]])
    row1 = scores[1]
    row2 = np.array([scores[2, 1], scores[2, 2]])
    expected = [
        _softmax_cross_entropy(row0, 0),
        _softmax_cross_entropy(row1, 1),
        _softmax_cross_entropy(row2, 1),
    ]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_logq_without_frequencies_is_a_clear_error():
    config = ModelConfig(negatives="in_batch", logq_correction=True)
    with pytest.raises(ValueError, match="target_frequencies"):
        RetrievalModel(_movie_vectors(), config)


@pytest.mark.parametrize("negatives", ["catalogue", "in_batch"])
def test_a_few_steps_of_fit_lower_the_loss(negatives):
    tf.keras.utils.set_random_seed(0)
    config = dataclasses.replace(
        ModelConfig(), negatives=negatives, dropout=0.0, temperature=0.2
    )
    vectors = _movie_vectors(vocab_size=30, dim=8, seed=1)
    rng = np.random.default_rng(2)
    ids = rng.integers(1, 30, size=(256, 5)).astype(np.int32)
    # The target is a function of the history, so there is something to learn.
    targets = (ids[:, 0] % 29 + 1).astype(np.int32)
    features = {HISTORY_IDS: ids, HISTORY_RATINGS: np.zeros_like(ids, np.float32)}
    dataset = tf.data.Dataset.from_tensor_slices((features, targets)).batch(64)

    model = RetrievalModel(vectors, config, np.bincount(targets, minlength=30))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    fitted = model.fit(dataset, epochs=8, verbose=0)

    losses = fitted.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses


def test_negative_rows_leave_cold_movies_out_of_the_catalogue_softmax():
    candidates = np.array(
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32
    )
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    config = ModelConfig(negatives="catalogue", temperature=0.5)
    # Movie 3 is a cold-start movie: no negative.
    model = RetrievalModel(_movie_vectors(4, 2), config, negative_rows=np.array([1, 2]))
    _fixed_towers(model, queries, candidates)

    loss = model.per_example_loss({}, tf.constant([2])).numpy()
    np.testing.assert_allclose(
        loss, [_softmax_cross_entropy(np.array([2.0, 0.0]), 1)], rtol=1e-5
    )


def _trainable_tables(config: ModelConfig) -> list[str]:
    model = RetrievalModel(_movie_vectors(6, 4), config)
    model.build_towers(max_history=3)
    return sorted(
        w.name
        for w in model.trainable_weights
        if ("embedding" in w.name or "offset" in w.name) and "movie_bias" not in w.name
    )


def test_movie_features_decide_which_tables_learn():
    assert _trainable_tables(ModelConfig()) == []
    assert len(_trainable_tables(ModelConfig(trainable_embeddings=True))) == 1
    assert len(_trainable_tables(ModelConfig(movie_features="text_id"))) == 1
    assert len(_trainable_tables(ModelConfig(movie_features="id"))) == 1


def test_text_id_starts_as_text_and_id_ignores_the_text():
    vectors = _movie_vectors(6, 4)
    ids = tf.constant([1, 4], tf.int32)
    model = RetrievalModel(vectors, ModelConfig(movie_features="text_id"))
    model.build_towers(max_history=3)
    table = model.candidate_model.movie_embedding
    np.testing.assert_allclose(table(ids), vectors[[1, 4]])
    assert table is model.query_model.movie_embedding

    id_model = RetrievalModel(
        vectors, ModelConfig(movie_features="id", id_embedding_dim=5)
    )
    id_model.build_towers(max_history=3)
    id_table = id_model.candidate_model.movie_embedding
    assert id_table.trainable and id_table.embeddings.shape == (6, 5)


def test_the_movie_bias_is_added_to_the_dot_product():
    model = RetrievalModel(_movie_vectors(6, 4), ModelConfig(output_dim=3))
    model.build_towers(max_history=3)
    model.candidate_model.bias.set_weights([np.arange(6, dtype="f4")[:, None]])
    history = _history([[1, 2, 0]], [[0.5, -0.5, 0.0]])
    ids = tf.constant([2, 5], tf.int32)

    queries = model.query_model(history).numpy()
    candidates = model.candidate_model(ids).numpy()
    assert queries.shape == (1, 4) and candidates.shape == (2, 4)
    np.testing.assert_array_equal(queries[:, -1], [1.0])
    np.testing.assert_array_equal(candidates[:, -1], [2.0, 5.0])
    unbiased = queries[:, :3] @ candidates[:, :3].T
    np.testing.assert_allclose(queries @ candidates.T, unbiased + [2.0, 5.0], rtol=1e-6)

    plain = RetrievalModel(_movie_vectors(6, 4), ModelConfig(movie_bias=False))
    assert plain.candidate_model.bias is None
    assert plain.query_model(history).shape == (1, ModelConfig().output_dim)


@pytest.mark.parametrize("negatives", ["catalogue", "in_batch"])
def test_movies_training_never_scores_keep_a_zero_bias(negatives):
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 8, size=(128, 4)).astype(np.int32)
    # Movie 1 is watched most, movie 7 least: what the bias should learn.
    share = np.array([12.0, 8, 6, 4, 3, 2, 1])
    targets = rng.choice(np.arange(1, 8), size=128, p=share / share.sum())
    targets = targets.astype(np.int32)
    features = {HISTORY_IDS: ids, HISTORY_RATINGS: np.zeros((128, 4), "f4")}
    # Movies 8 and 9 are cold: never a target, no negative, no history movie.
    model = RetrievalModel(
        _movie_vectors(10, 4),
        ModelConfig(dense_units=8, negatives=negatives),
        target_frequencies=np.bincount(targets, minlength=10),
        negative_rows=np.arange(1, 8),
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    model.fit(features, targets, batch_size=32, epochs=2, verbose=0)

    bias = model.candidate_model.bias.get_weights()[0][:, 0]
    np.testing.assert_array_equal(bias[[0, 8, 9]], 0.0)
    assert np.all(bias[1:8] != 0.0)
    if negatives == "catalogue":
        # In-batch negatives are drawn by popularity, so there the bias need
        # not follow it; against the whole catalogue it must.
        counts = np.bincount(targets, minlength=8)[1:]
        assert np.corrcoef(counts, bias[1:8])[0, 1] > 0.8


def test_mixed_precision_steps_keep_float32_embeddings():
    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf.keras.utils.set_random_seed(0)
        model = RetrievalModel(_movie_vectors(30, 8), ModelConfig(dense_units=8))
        model.build_towers(max_history=4)
        model.compile(
            optimizer=tf.keras.mixed_precision.LossScaleOptimizer(
                tf.keras.optimizers.Adam(0.01)
            )
        )
        rng = np.random.default_rng(0)
        ids = rng.integers(1, 30, size=(64, 4)).astype(np.int32)
        features = {HISTORY_IDS: ids, HISTORY_RATINGS: np.zeros((64, 4), "f4")}
        fitted = model.fit(features, ids[:, 0], batch_size=32, epochs=3, verbose=0)
        assert model.query_model(features).dtype == tf.float32
        assert np.isfinite(fitted.history["loss"]).all()
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)


def test_history_movies_are_no_catalogue_negatives():
    candidates = np.array(
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32
    )
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    history = _history([[1, 0]], [[0.0, 0.0]])
    for masked, logits in ((True, [0.0, 1.2]), (False, [2.0, 0.0, 1.2])):
        config = ModelConfig(temperature=0.5, mask_history_negatives=masked)
        model = RetrievalModel(_movie_vectors(4, 2), config)
        _fixed_towers(model, queries, candidates)
        loss = model.per_example_loss(history, tf.constant([2])).numpy()
        # Movie 1 is in the history: with the mask only movies 2 and 3 count.
        label = 0 if masked else 1
        expected = _softmax_cross_entropy(np.array(logits), label)
        np.testing.assert_allclose(loss, [expected], rtol=1e-5)


def test_the_seed_preset_builds_the_layer_shapes_of_the_seed():
    from pathlib import Path

    from recray.config import PipelineConfig, load_yaml
    from recray.embeddings.openai_provider import model_spec

    preset = Path(__file__).resolve().parents[2] / "configs" / "seed.yaml"
    config = load_yaml(PipelineConfig, preset)
    dim = model_spec(config.embedding.embedding_model).native_dim
    vocab_size = 16_760 + 1  # the seed's movies and the unknown row
    model = RetrievalModel(np.zeros((vocab_size, dim), np.float32), config.model)
    model.build_towers(max_history=50)

    assert dim == 1536
    attention = model.query_model.attention
    settings = attention.get_config()
    assert settings["num_heads"] * settings["key_dim"] == 1024
    # Query, key and value projections read a text vector plus its rating;
    # the output projection writes one back.
    width = dim + 1
    assert attention.count_params() == 3 * (width * 1024 + 1024) + 1024 * width + width
    assert model.query_model.movie_embedding.count_params() == vocab_size * dim
