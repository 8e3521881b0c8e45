"""Serving a trained run: recommendations, similar movies, new movies.

`recray.serving.catalogue` describes the run files serving reads and writes.
Title matching and the similar-movies check are numpy only; the modules that
load SavedModels (`index`, `recommend`, `add_movies`) import TensorFlow.
"""
