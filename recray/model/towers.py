"""The query and candidate towers and the retrieval model that trains them.

Movies are rows of one frozen table: each row is the movie's text embedding,
followed by its year and genre features where the config asks for them
(`recray.data.movie_features`). Row 0 is the padding and out-of-vocabulary
row: it is all zeros and is masked out wherever a history is read, so an
unknown movie in a history contributes nothing instead of something made up.

Query model (a user's watch history to a query embedding):
    history ids [batch, max_history] -> frozen movie rows
    -> concat centred ratings -> plus a learned vector per recency (the
    latest `recency_positions` movies) -> masked self multi-head attention
    (added to the movies' own vectors unless `attention_residual` is off)
    -> masked average or max pooling -> Dense -> Dropout -> Dense [batch, out]
    (-> a last column of ones, with `movie_bias`)

Candidate model (movie ids to candidate embeddings):
    movie ids [num] -> the same frozen movie rows -> Dense -> Dense [num, out]
    (-> a last column holding each movie's learned bias, with `movie_bias`)

The bias column makes a query's score of a movie its embeddings' dot product
plus the movie's bias. The catalogue softmax has to learn how often each
movie is watched; without a bias the candidate tower must read that from the
text, which ties it to the training movies. With one, popularity sits in a
per-movie number and the tower learns what a movie is like, which carries
over to movies training never saw: their bias stays 0.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recray.config import ModelConfig
from recray.schema import HISTORY_IDS, HISTORY_RATINGS, PAD_ID


def text_embedding_layer(
    movie_vectors: np.ndarray, name: str, trainable: bool = False
) -> tf.keras.layers.Layer:
    """An Embedding whose rows start as the movie table's rows.

    Args:
        movie_vectors: [vocab_size, width] with row `PAD_ID` all zeros.
        name: Layer name.
        trainable: Fine-tune the vectors (frozen by default). Padding is
            masked everywhere, so row `PAD_ID` gets no gradient.
    """
    vocab_size, dim = movie_vectors.shape
    return tf.keras.layers.Embedding(
        vocab_size,
        dim,
        embeddings_initializer=tf.keras.initializers.Constant(movie_vectors),
        trainable=trainable,
        name=name,
    )


class TextPlusIdEmbedding(tf.keras.layers.Layer):
    """Frozen text vectors plus a learned per-movie offset that starts at zero.

    A movie never seen in training keeps a zero offset, so it is read through
    its text alone, while movies seen often learn what their text misses.
    """

    def __init__(self, movie_vectors: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = text_embedding_layer(movie_vectors, "text", trainable=False)
        vocab_size, dim = movie_vectors.shape
        self.offset = tf.keras.layers.Embedding(
            vocab_size, dim, embeddings_initializer="zeros", name="id_offset"
        )

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        """Vectors [..., dim] of ids [...]."""
        return self.text(ids) + self.offset(ids)

    @property
    def embeddings(self) -> tf.Tensor:
        """The table [vocab_size, dim] it looks ids up in, offsets added, as
        an Embedding's `embeddings` (what the export reads)."""
        return self.text.embeddings + self.offset.embeddings


def movie_embedding_layer(
    movie_vectors: np.ndarray, config: ModelConfig
) -> tf.keras.layers.Layer:
    """The movie table both towers share, as `config.movie_features` says.

    `text` uses the text vectors (frozen unless `trainable_embeddings`),
    `text_id` adds a learned offset per movie to the frozen text vectors,
    and `id` ignores the text: a learned `id_embedding_dim` vector per movie,
    the ID two-tower baseline.

    Args:
        movie_vectors: [vocab_size, width] movie table, row `PAD_ID` zeros.
        config: Model settings.
    """
    if config.movie_features == "id":
        return tf.keras.layers.Embedding(
            movie_vectors.shape[0],
            config.id_embedding_dim,
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
            name="movie_id_embeddings",
        )
    if config.movie_features == "text_id":
        return TextPlusIdEmbedding(movie_vectors, name="movie_text_id_embeddings")
    return text_embedding_layer(
        movie_vectors, "movie_text_embeddings", config.trainable_embeddings
    )


class MaskedPooling(tf.keras.layers.Layer):
    """Average or max over the valid positions of a padded sequence.

    Padding must not change a user's embedding: [a] and [a, pad, pad] pool to
    the same vector. An all-padding row pools to zeros.
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("average", "max"):
            raise ValueError(f"Pooling must be `average` or `max`, got `{mode}`.")
        self.mode = mode

    def call(self, sequence: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Pool [batch, length, dim] over positions where mask [batch, length] holds."""
        valid = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]  # [batch, length, 1]
        if self.mode == "average":
            total = tf.reduce_sum(sequence * valid, axis=1)
            count = tf.reduce_sum(valid, axis=1)
            return tf.math.divide_no_nan(total, count)  # [batch, dim]
        lowest = tf.fill(tf.shape(sequence), sequence.dtype.min)
        pooled = tf.reduce_max(tf.where(valid > 0, sequence, lowest), axis=1)
        has_any = tf.reduce_any(mask, axis=1, keepdims=True)
        return tf.where(has_any, pooled, tf.zeros_like(pooled))

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


class RecencyEncoding(tf.keras.layers.Layer):
    """Adds a learned vector for how recent each history movie is.

    Histories are oldest first, so the latest movie sits at the last valid
    position. Recency 0 is the latest movie, and every movie older than
    `positions - 1` shares the last vector. The vectors start at zero: an
    untrained encoding leaves the history as it was.
    """

    def __init__(self, positions: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.positions = positions

    def build(self, input_shape: tf.TensorShape) -> None:
        self.table = self.add_weight(
            name="recency",
            shape=[self.positions, int(input_shape[-1])],
            initializer="zeros",
        )
        super().build(input_shape)

    def call(self, sequence: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """[batch, length, dim] plus the recency vector of each valid position."""
        # A movie's recency is the number of valid movies after it, so holes
        # (cold-start movies read as padding) do not shift it.
        valid = tf.cast(mask, tf.int32)
        later = tf.reduce_sum(valid, axis=1, keepdims=True) - tf.cumsum(valid, axis=1)
        recency = tf.minimum(later, self.positions - 1)  # [batch, length]
        offsets = tf.cast(tf.gather(self.table, recency), sequence.dtype)
        return sequence + offsets * tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]

    def get_config(self) -> dict:
        return {**super().get_config(), "positions": self.positions}


class QueryModel(tf.keras.Model):
    """Turns a padded watch history into a query embedding."""

    def __init__(
        self, movie_embedding: tf.keras.layers.Layer, config: ModelConfig
    ) -> None:
        """Build the tower's layers.

        Args:
            movie_embedding: A `text_embedding_layer`, shared with the
                candidate model.
            config: Tower settings.
        """
        super().__init__(name="query_model")
        self.config = config
        self.movie_embedding = movie_embedding
        self.recency = (
            RecencyEncoding(config.recency_positions, name="history_recency")
            if config.recency_positions
            else None
        )
        self.attention = (
            tf.keras.layers.MultiHeadAttention(
                num_heads=config.num_heads,
                key_dim=config.key_dim,
                name="history_attention",
            )
            if config.use_attention
            else None
        )
        self.pooling = MaskedPooling(config.pooling, name="history_pooling")
        self.hidden = tf.keras.layers.Dense(
            config.dense_units, activation="relu", name="query_hidden"
        )
        self.dropout = tf.keras.layers.Dropout(config.dropout)
        self.projection = tf.keras.layers.Dense(config.output_dim, name="query_output")

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Query embeddings [batch, embedding_dim] for `history_ids` and
        `history_ratings`, both [batch, max_history]."""
        ids = features[HISTORY_IDS]
        mask = tf.not_equal(ids, PAD_ID)  # [batch, max_history]
        sequence = self.movie_embedding(ids)  # [batch, max_history, dim]
        if self.config.use_ratings:
            ratings = tf.cast(features[HISTORY_RATINGS], sequence.dtype)
            sequence = tf.concat([sequence, ratings[:, :, tf.newaxis]], axis=-1)
        if self.recency is not None:
            sequence = self.recency(sequence, mask)

        if self.attention is not None:
            # A position attends to valid positions only, so padding never
            # leaks into a real movie's attended vector.
            pair_mask = tf.logical_and(mask[:, :, tf.newaxis], mask[:, tf.newaxis, :])
            attended = self.attention(
                sequence, sequence, attention_mask=pair_mask, training=training
            )  # [batch, max_history, dim (+1)]
            if self.config.attention_residual:
                attended = sequence + attended
            sequence = attended

        pooled = self.pooling(sequence, mask)
        hidden = self.dropout(self.hidden(pooled), training=training)
        # float32 even under mixed precision: the loss and the index are.
        embedding = tf.cast(self.projection(hidden), tf.float32)
        if self.config.normalize_embeddings:
            embedding = tf.math.l2_normalize(embedding, axis=-1)
        if self.config.movie_bias:
            # Meets each candidate's bias column in the dot product.
            embedding = tf.concat([embedding, tf.ones_like(embedding[:, :1])], axis=-1)
        return embedding


class CandidateModel(tf.keras.Model):
    """Maps movie ids to candidate embeddings through their text embeddings."""

    def __init__(
        self,
        movie_embedding: tf.keras.layers.Layer,
        config: ModelConfig,
        vocab_size: int,
    ) -> None:
        """Build the tower's layers.

        Args:
            movie_embedding: The movie table, shared with the query model.
            config: Tower settings.
            vocab_size: Rows of the movie table, for the movie bias.
        """
        super().__init__(name="candidate_model")
        self.config = config
        self.movie_embedding = movie_embedding
        self.hidden = tf.keras.layers.Dense(
            config.dense_units, activation="relu", name="candidate_hidden"
        )
        self.projection = tf.keras.layers.Dense(
            config.output_dim, name="candidate_output"
        )
        # A row gets gradient only when its movie is scored in training, so
        # the padding row and cold-start movies stay 0; movies added after
        # training have no row and read the padding row's 0.
        self.bias = (
            tf.keras.layers.Embedding(
                vocab_size, 1, embeddings_initializer="zeros", name="movie_bias"
            )
            if config.movie_bias
            else None
        )

    def call(self, movie_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Candidate embeddings [num, embedding_dim] for movie ids [num]."""
        embedding = self.projection(self.hidden(self.movie_embedding(movie_ids)))
        embedding = tf.cast(embedding, tf.float32)
        if self.config.normalize_embeddings:
            embedding = tf.math.l2_normalize(embedding, axis=-1)
        if self.bias is not None:
            bias = tf.cast(self.bias(movie_ids), tf.float32)  # [num, 1]
            embedding = tf.concat([embedding, bias], axis=-1)
        return embedding


class RetrievalModel(tf.keras.Model):
    """Trains the query and candidate models with TFRS' Retrieval task.

    With `negatives="catalogue"` each query is scored against every movie, an
    exact softmax over the catalogue: the target candidates come first so the
    Retrieval task's labels sit on the diagonal, and `score_mask` removes the
    other targets of the batch and the target's own catalogue row. With
    `negatives="in_batch"` the other targets of the batch are the negatives,
    with accidental hits removed and, optionally, the logQ correction.

    The loss is summed per replica and divided by the global batch size, so
    that gradients summed across MultiWorkerMirroredStrategy replicas are the
    gradient of the mean loss.
    """

    def __init__(
        self,
        movie_vectors: np.ndarray,
        config: ModelConfig,
        target_frequencies: np.ndarray | None = None,
        negative_rows: np.ndarray | None = None,
    ) -> None:
        """Build both towers.

        Args:
            movie_vectors: [vocab_size, width] movie table, row 0 zeros.
            config: Tower and loss settings.
            target_frequencies: [vocab_size] how often each movie is a training
                target; needed for the logQ correction.
            negative_rows: Vocabulary rows the catalogue softmax scores; all
                movies by default. Cold-start movies are left out of it.
        """
        super().__init__(name="retrieval_model")
        self.config = config
        # One frozen table for both towers: at 62k movies and 1536 dims a copy
        # is 380 MB per worker.
        movie_embedding = movie_embedding_layer(movie_vectors, config)
        self.query_model = QueryModel(movie_embedding, config)
        self.candidate_model = CandidateModel(
            movie_embedding, config, int(movie_vectors.shape[0])
        )
        if negative_rows is None:
            negative_rows = np.arange(1, movie_vectors.shape[0])
        self.catalogue_ids = tf.constant(np.asarray(negative_rows), dtype=tf.int32)
        self.vocab_size = int(movie_vectors.shape[0])
        # The task takes the global dtype policy when built; under mixed
        # precision its scores and loss must stay float32 all the same.
        policy = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy("float32")
        try:
            self.task = tfrs.tasks.Retrieval(
                loss=tf.keras.losses.CategoricalCrossentropy(
                    from_logits=True, reduction=tf.keras.losses.Reduction.NONE
                ),
                temperature=config.temperature,
                remove_accidental_hits=config.negatives == "in_batch",
            )
        finally:
            tf.keras.mixed_precision.set_global_policy(policy)
        self.sampling_probability = None
        if config.negatives == "in_batch" and config.logq_correction:
            if target_frequencies is None:
                raise ValueError(
                    "The logQ correction needs `target_frequencies`; pass them "
                    "or set `logq_correction=False`."
                )
            counts = np.asarray(target_frequencies, dtype=np.float64) + 1.0
            self.sampling_probability = tf.constant(
                counts / counts.sum(), dtype=tf.float32
            )
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.query_model(features, training=training)

    def per_example_loss(
        self,
        features: dict[str, tf.Tensor],
        targets: tf.Tensor,
        training: bool = False,
    ) -> tf.Tensor:
        """Softmax cross-entropy of each example's target movie, [batch].

        Args:
            features: `history_ids` and `history_ratings`, [batch, max_history].
            targets: [batch] vocabulary ids of the movies watched next.
        """
        targets = tf.cast(tf.reshape(targets, [-1]), tf.int32)
        queries = self.query_model(features, training=training)
        positives = self.candidate_model(targets, training=training)

        if self.config.negatives == "in_batch":
            probability = None
            if self.sampling_probability is not None:
                probability = tf.gather(self.sampling_probability, targets)
            return self.task(
                queries,
                positives,
                candidate_ids=targets,
                candidate_sampling_probability=probability,
                compute_metrics=False,
            )

        # Known gap: every worker runs the candidate model over the whole
        # catalogue at every step, whatever its share of the global batch, so
        # this pass does not shrink with more workers (`make bench-train`'s
        # `step_ms`). Sharding it across workers and gathering the
        # embeddings is not done.
        catalogue = self.candidate_model(self.catalogue_ids, training=training)
        candidates = tf.concat([positives, catalogue], axis=0)
        batch = tf.shape(targets)[0]
        own_target = tf.cast(tf.eye(batch), tf.bool)  # [batch, batch]
        other_movies = tf.not_equal(
            self.catalogue_ids[tf.newaxis, :], targets[:, tf.newaxis]
        )  # [batch, catalogue]
        if self.config.mask_history_negatives and HISTORY_IDS in features:
            # A movie of the history is no negative: evaluation and serving
            # never recommend a movie already rated, and punishing it would
            # push down the movies most like the history.
            seen = tf.math.bincount(
                tf.cast(features[HISTORY_IDS], tf.int32),
                minlength=self.vocab_size,
                maxlength=self.vocab_size,
                binary_output=True,
                axis=-1,
            )  # [batch, vocab_size]
            unseen = tf.equal(tf.gather(seen, self.catalogue_ids, axis=1), 0)
            other_movies = tf.logical_and(other_movies, unseen)
        return self.task(
            queries,
            candidates,
            score_mask=tf.concat([own_target, other_movies], axis=1),
            compute_metrics=False,
        )

    def train_step(self, batch: tuple) -> dict[str, tf.Tensor]:
        features, targets = batch
        with tf.GradientTape() as tape:
            per_example = self.per_example_loss(features, targets, training=True)
            loss = tf.nn.compute_average_loss(per_example)
            scaled = isinstance(
                self.optimizer, tf.keras.mixed_precision.LossScaleOptimizer
            )
            if scaled:  # mixed precision: keep float16 gradients from underflowing
                loss = self.optimizer.get_scaled_loss(loss)
        gradients = tape.gradient(loss, self.trainable_variables)
        if scaled:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        self.optimizer.apply_gradients(
            zip(gradients, self.trainable_variables, strict=True)
        )
        self.loss_tracker.update_state(per_example)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, batch: tuple) -> dict[str, tf.Tensor]:
        features, targets = batch
        per_example = self.per_example_loss(features, targets, training=False)
        self.loss_tracker.update_state(per_example)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self) -> list[tf.keras.metrics.Metric]:
        return [self.loss_tracker]

    def build_towers(self, max_history: int) -> None:
        """Create every weight by calling both towers once on dummy input."""
        dummy = {
            HISTORY_IDS: tf.zeros([1, max_history], tf.int32),
            HISTORY_RATINGS: tf.zeros([1, max_history], tf.float32),
        }
        self.query_model(dummy)
        self.candidate_model(tf.zeros([1], tf.int32))
