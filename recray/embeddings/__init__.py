"""Text embeddings of movies: providers, a disk cache and the Ray Data stage."""

from recray.embeddings.openai_provider import EmbeddingProviderError
from recray.embeddings.stage import (
    EmbeddingFailedError,
    EmbeddingPlan,
    EmbeddingResult,
    embed_movie_texts,
    plan_embedding,
)

__all__ = [
    "EmbeddingFailedError",
    "EmbeddingPlan",
    "EmbeddingProviderError",
    "EmbeddingResult",
    "embed_movie_texts",
    "plan_embedding",
]
