"""Text embeddings of movies: providers, a disk cache and the Ray Data stage."""

from recray.embeddings.stage import EmbeddingResult, embed_movie_texts

__all__ = ["EmbeddingResult", "embed_movie_texts"]
