"""EmbeddingCache: round trips, separation of models and sizes, torn writes."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recray.embeddings.cache import EmbeddingCache, text_sha256

PROVIDER = "sentence-transformers"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _hashes(*texts: str) -> list[str]:
    return [text_sha256(text) for text in texts]


def _vectors(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def test_text_sha256_is_hex_digest_of_utf8() -> None:
    text = "Amélie (2001) Comedy|Romance"
    assert text_sha256(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_add_then_lookup_returns_vectors_and_omits_missing(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    keys = _hashes("a", "b", "c")
    vectors = _vectors(3, 8)

    assert cache.lookup(keys) == {}
    cache.add(keys[:2], vectors[:2])
    found = cache.lookup(keys)

    assert set(found) == set(keys[:2])
    for key, vector in zip(keys[:2], vectors[:2], strict=True):
        assert found[key].dtype == np.float32
        np.testing.assert_allclose(found[key], vector, atol=1e-7)
    assert cache.dim == 8


def test_lookup_reads_across_several_parts(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    keys = _hashes("a", "b", "c")
    vectors = _vectors(3, 4)
    cache.add(keys[:1], vectors[:1])
    cache.add(keys[1:], vectors[1:])

    found = cache.lookup(list(reversed(keys)))

    assert len(cache.part_files()) == 2
    np.testing.assert_allclose(np.stack([found[k] for k in keys]), vectors, atol=1e-7)


def test_add_with_another_dim_raises(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    cache.add(_hashes("a"), _vectors(1, 8))

    with pytest.raises(ValueError, match=r"dim 16 .* holds dim 8"):
        cache.add(_hashes("b"), _vectors(1, 16))
    # A fresh handle on the same folder learns the size from the stored part.
    with pytest.raises(ValueError, match="dim 16"):
        EmbeddingCache(tmp_path, PROVIDER, MODEL).add(_hashes("b"), _vectors(1, 16))


def test_requested_dimensions_get_their_own_folder_and_are_enforced(
    tmp_path: Path,
) -> None:
    native = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    short = EmbeddingCache(tmp_path, PROVIDER, MODEL, dimensions=4)
    native.add(_hashes("a"), _vectors(1, 8))

    assert short.folder != native.folder
    assert short.folder.name == "dim-4"
    assert native.folder.name == "native"
    assert short.lookup(_hashes("a")) == {}
    with pytest.raises(ValueError, match="dim 8"):
        short.add(_hashes("a"), _vectors(1, 8))


def test_models_never_share_vectors(tmp_path: Path) -> None:
    first = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    # `a/b` and `a--b` read alike as folder names; they must still be apart.
    second = EmbeddingCache(
        tmp_path, PROVIDER, "sentence-transformers--all-MiniLM-L6-v2"
    )
    first.add(_hashes("a"), _vectors(1, 8))

    assert first.folder != second.folder
    assert second.lookup(_hashes("a")) == {}
    # Another model may have another size in its own folder.
    second.add(_hashes("a"), _vectors(1, 16))
    assert first.lookup(_hashes("a"))[text_sha256("a")].shape == (8,)


def test_stray_tmp_and_torn_parts_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    keys = _hashes("a", "b")
    vectors = _vectors(2, 8)
    part = cache.add(keys[:1], vectors[:1])
    assert part is not None
    torn = part.read_bytes()[: part.stat().st_size // 2]
    # What a run killed mid-write leaves behind: a half-written temporary file.
    (cache.folder / f".{part.stem}-killed.parquet.tmp").write_bytes(torn)
    # A damaged part under a final name cannot come from `add`, but must not
    # break lookups either.
    (cache.folder / "part-00000000T000000-damaged.parquet").write_bytes(torn)

    with caplog.at_level(logging.WARNING, logger="recray.embeddings.cache"):
        found = cache.lookup(keys)
    cache.add(keys[1:], vectors[1:])

    assert set(found) == {keys[0]}
    assert "damaged" in caplog.text
    assert not any(".tmp" in str(path) for path in cache.part_files())
    assert set(cache.lookup(keys)) == set(keys)


def test_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)

    def write_half_then_fail(table, where, **kwargs) -> None:
        where.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cache.add(_hashes("a"), _vectors(1, 8))

    assert list(cache.folder.iterdir()) == []


def test_foreign_parquet_in_folder_raises(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    cache.folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"text_sha256": ["x"], "embedding": [[1.0, 2.0]]}),
        cache.folder / "part-foreign.parquet",
    )

    with pytest.raises(ValueError, match=r"part-foreign\.parquet.*Delete the file"):
        cache.lookup(_hashes("a"))


@pytest.mark.parametrize(
    ("keys", "vectors", "message"),
    [
        (_hashes("a", "b"), _vectors(1, 8), r"shape \[2, dim\]"),
        (["not-a-hash"], _vectors(1, 8), "sha256"),
        (_hashes("a"), np.full((1, 8), np.nan, dtype=np.float32), "non-finite"),
    ],
)
def test_add_rejects_bad_input(
    tmp_path: Path, keys: list[str], vectors: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingCache(tmp_path, PROVIDER, MODEL).add(keys, vectors)


def test_duplicate_keys_in_one_add_are_stored_once(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, PROVIDER, MODEL)
    vectors = _vectors(2, 8)

    part = cache.add(_hashes("a", "a"), vectors)

    assert part is not None
    assert pq.read_table(part).num_rows == 1
    np.testing.assert_allclose(cache.lookup(_hashes("a"))[text_sha256("a")], vectors[0])
