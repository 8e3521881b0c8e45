"""A disk cache of text embeddings, so that a rerun embeds only new texts.

Vectors are keyed by provider, model and the sha256 of the text. Each
(provider, model, dimension) gets its own folder, so vectors of two models, or
of one model cut to two sizes, are never mixed:

    cache_dir/
        sentence-transformers/
            sentence-transformers--all-MiniLM-L6-v2-e9e2c881/
                native/
                    part-20240101T120000-3f2a9c1b0d4e.parquet

Each part file holds the columns `text_sha256` (string) and `embedding`
(fixed-size list of float32). A part is written under a temporary name and
renamed into place, so a run killed mid-write leaves at most a `.tmp` file,
which readers ignore.

Known gap: a model given as a local folder is keyed by its path, so retrained
weights saved to the same folder would reuse stale vectors; clear its folder
(`EmbeddingCache.folder`) after changing the weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

HASH_COLUMN = "text_sha256"
EMBEDDING_COLUMN = "embedding"
NATIVE_DIMENSION = "native"
_PART_GLOB = "part-*.parquet"
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def text_sha256(text: str) -> str:
    """Return the hex sha256 of a text's UTF-8 bytes, the cache key of its vector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _readable(name: str) -> str:
    """Return `name` with every run of characters unsafe in a folder name as `--`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "unnamed"


def _model_folder(model: str) -> str:
    """Return a folder name for a model, readable and unique to the exact name."""
    # Readable forms of e.g. `a/b` and `a--b` collide; the digest parts them.
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
    return f"{_readable(model)}-{digest}"


class EmbeddingCache:
    """Vectors of one provider and model, stored as Parquet parts in one folder.

    Args:
        cache_dir: Root of the cache; created on the first `add`.
        provider: Embedding provider, e.g. `sentence-transformers`.
        model: Model name as the provider knows it.
        dimensions: Output size asked of the model, for providers that can
            shorten vectors; None for the model's own size (`native`).

    Raises:
        ValueError: `dimensions` is not a positive integer.
    """

    def __init__(
        self,
        cache_dir: Path | str,
        provider: str,
        model: str,
        dimensions: int | None = None,
    ) -> None:
        if dimensions is not None and dimensions <= 0:
            raise ValueError(
                f"`dimensions` must be a positive integer or None, got {dimensions}."
            )
        self.provider = provider
        self.model = model
        self.dimensions = dimensions
        size = NATIVE_DIMENSION if dimensions is None else f"dim-{dimensions}"
        self.folder = (
            Path(cache_dir) / _readable(provider) / _model_folder(model) / size
        )

    def part_files(self) -> list[Path]:
        """Return the complete part files, oldest name first; `.tmp` files excluded."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(_PART_GLOB))

    @property
    def dim(self) -> int | None:
        """Vector size of this folder: `dimensions`, else that of the stored parts.

        Raises:
            ValueError: A part file holds vectors of another size.
        """
        if self.dimensions is not None:
            return self.dimensions
        for path in self.part_files():
            schema = self._read_schema(path)
            if schema is not None:
                return self._check_schema(path, schema, expected_dim=None)
        return None

    def lookup(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors of the given text hashes.

        Args:
            hashes: Hex sha256 of each text (`text_sha256`).

        Returns:
            Hash to float32 vector [dim], for the hashes found; missing hashes
            are absent.

        Raises:
            ValueError: A part file holds vectors of another size than the rest
                of the folder.
        """
        wanted = pa.array(list(set(hashes)), type=pa.string())
        if len(wanted) == 0:
            return {}

        found: dict[str, np.ndarray] = {}
        dim = self.dimensions
        for path in self.part_files():
            try:
                table = pq.read_table(path, columns=[HASH_COLUMN, EMBEDDING_COLUMN])
            except (OSError, pa.ArrowException) as err:
                # A part can only be damaged from outside (renames are atomic);
                # skipping it costs a recompute, never a wrong vector.
                logger.warning(
                    "Skipping unreadable embedding cache part `%s`: %s. "
                    "Delete it to silence this warning.",
                    path,
                    err,
                )
                continue
            dim = self._check_schema(path, table.schema, expected_dim=dim)
            table = table.filter(pc.is_in(table[HASH_COLUMN], value_set=wanted))
            if table.num_rows == 0:
                continue
            keys = table[HASH_COLUMN].to_pylist()
            vectors = _to_matrix(table[EMBEDDING_COLUMN], dim)
            found.update(zip(keys, vectors, strict=True))
        return found

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Store vectors as one new part file, written atomically.

        Args:
            hashes: Hex sha256 of each text (`text_sha256`), one per row.
            vectors: Float vectors [len(hashes), dim].

        Returns:
            The part file written, or None when there was nothing to add.

        Raises:
            ValueError: Shapes disagree, a hash is not a hex sha256, a vector is
                not finite, or `dim` differs from this folder's vectors.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
            raise ValueError(
                f"`vectors` must have shape [{len(hashes)}, dim] to match `hashes`, "
                f"got {vectors.shape}."
            )
        if len(hashes) == 0:
            return None
        bad = next((h for h in hashes if not _SHA256_PATTERN.fullmatch(h)), None)
        if bad is not None:
            raise ValueError(
                f"Cache keys must be lowercase hex sha256 digests, got {bad!r}; "
                "compute them with `text_sha256(text)`."
            )
        if not np.isfinite(vectors).all():
            raise ValueError(
                "Refusing to cache non-finite vectors (NaN or inf) for model "
                f"`{self.model}`; check the model's output."
            )
        dim = vectors.shape[1]
        expected = self.dim
        if expected is not None and dim != expected:
            raise ValueError(
                f"Cannot add vectors of dim {dim} to the cache of `{self.provider}` "
                f"model `{self.model}`, which holds dim {expected} in `{self.folder}`. "
                "Use a cache with the matching model and `dimensions`, or delete "
                "that folder if the model changed."
            )

        # One row per text: duplicates would only make lookups do more work.
        first_rows: dict[str, int] = {}
        for row, key in enumerate(hashes):
            first_rows.setdefault(key, row)
        rows = np.fromiter(first_rows.values(), dtype=np.int64, count=len(first_rows))
        table = pa.table(
            {
                HASH_COLUMN: pa.array(list(first_rows), type=pa.string()),
                EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors[rows].reshape(-1)), dim
                ),
            }
        )

        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        final = self.folder / f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            with open(tmp, "wb") as file:
                pq.write_table(table, file)
                file.flush()
                # Rename only bytes that are on disk, so a crash cannot leave a
                # complete-looking but truncated part.
                os.fsync(file.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.debug("Cached %d vectors in `%s`", table.num_rows, final)
        return final

    @staticmethod
    def _read_schema(path: Path) -> pa.Schema | None:
        try:
            return pq.read_schema(path)
        except (OSError, pa.ArrowException):
            return None

    def _check_schema(
        self, path: Path, schema: pa.Schema, expected_dim: int | None
    ) -> int:
        """Return the vector size of a part, checking it against `expected_dim`."""
        field_type = (
            schema.field(EMBEDDING_COLUMN).type
            if EMBEDDING_COLUMN in schema.names
            else None
        )
        if (
            HASH_COLUMN not in schema.names
            or not pa.types.is_fixed_size_list(field_type)
            or field_type.value_type != pa.float32()
        ):
            columns = ", ".join(f"{field.name}: {field.type}" for field in schema)
            raise ValueError(
                f"Embedding cache part `{path}` has columns ({columns}), expected "
                f"`{HASH_COLUMN}` string and `{EMBEDDING_COLUMN}` "
                "fixed_size_list<float32>. Delete the file; it was not written by "
                "`EmbeddingCache`."
            )
        dim = field_type.list_size
        if expected_dim is not None and dim != expected_dim:
            raise ValueError(
                f"Embedding cache part `{path}` holds vectors of dim {dim}, but "
                f"`{self.folder}` holds dim {expected_dim}. Delete the part (or the "
                "whole folder) and rerun to recompute."
            )
        return dim


def _to_matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """Return a fixed-size-list column as a float32 matrix [rows, dim]."""
    # `flatten` honours slice offsets that `.values` would ignore after a filter.
    flat = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    values = np.concatenate(flat) if flat else np.empty(0, dtype=np.float32)
    return values.astype(np.float32, copy=False).reshape(-1, dim)
