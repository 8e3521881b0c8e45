"""recray: a retrieval recommender whose query tower reads a user's watch history
through text embeddings of the movies, trained and served on Ray."""

import os

# TensorFlow Recommenders needs Keras 2. The switch must be set before
# TensorFlow is first imported, in this process and in every Ray worker
# (`recray.cluster.runtime_env` passes it on to workers).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
