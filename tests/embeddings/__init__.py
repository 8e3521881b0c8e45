"""Tests of recray.embeddings."""
