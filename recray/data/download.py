"""Fetching a MovieLens release zip from GroupLens, checked and unpacked.

`download_movielens("ml-25m", cache_dir)` downloads
`<base_url>/ml-25m.zip` over HTTPS, streams it to a temporary file while
hashing it, compares the hash with the known checksum of the release (or the
`.md5` file GroupLens publishes beside each zip), and only then unpacks it
into `cache_dir/ml-25m/`. A download that stops short of its
`Content-Length`, or whose checksum differs, is deleted and raises; an
already unpacked release is reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "RECRAY_MOVIELENS_URL"
CACHE_DIR_ENV = "RECRAY_MOVIELENS_CACHE"
DEFAULT_CACHE_DIR = Path(".cache/movielens")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Release:
    """One GroupLens release: its zip, the folder it unpacks to, its checksum.

    Attributes:
        name: Release name, e.g. `ml-25m`.
        folder: Top folder inside the zip (ml-10m unpacks to `ml-10M100K`).
        md5: Known MD5 of the zip, lower-case hex; `None` where not recorded
            here, in which case the `.md5` file beside the zip is used.
    """

    name: str
    folder: str
    md5: str | None = None


# TODO: record the MD5 of every release here. This machine cannot reach
# GroupLens, so no checksum could be verified; until then the `.md5` file that
# GroupLens publishes beside each zip is fetched and used, and `--md5` can
# pass one by hand.
RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        Release("ml-100k", "ml-100k"),
        Release("ml-1m", "ml-1m"),
        Release("ml-10m", "ml-10M100K"),
        Release("ml-20m", "ml-20m"),
        Release("ml-25m", "ml-25m"),
        Release("ml-32m", "ml-32m"),
        Release("ml-latest-small", "ml-latest-small"),
        Release("ml-latest", "ml-latest"),
    )
}


class DownloadError(RuntimeError):
    """A download was refused: unknown release, failed, short or corrupt."""


def download_movielens(
    name: str,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    base_url: str | None = None,
    md5: str | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Download, check and unpack a MovieLens release; return its folder.

    Args:
        name: Release name, a key of `RELEASES`, e.g. `ml-25m`.
        cache_dir: Where releases are unpacked, one folder each.
        base_url: Folder URL of the zips; default GroupLens (env
            `RECRAY_MOVIELENS_URL`).
        md5: Expected MD5 of the zip, over the known one or the `.md5` file.
        timeout_s: Socket timeout of each request.

    Returns:
        The unpacked release folder, e.g. `cache_dir/ml-25m`.

    Raises:
        DownloadError: The name is unknown, the server fails, the download is
            shorter than announced, no checksum is known or it differs, or
            the zip does not hold the release folder.
    """
    release = RELEASES.get(name)
    if release is None:
        known = ", ".join(f"`{key}`" for key in RELEASES)
        raise DownloadError(f"Unknown MovieLens release `{name}`; known: {known}.")
    base_url = (base_url or os.environ.get(BASE_URL_ENV) or GROUPLENS_URL).rstrip("/")
    target = cache_dir / release.folder
    done = target / ".recray-download-ok"
    if done.is_file():
        logger.info("MovieLens `%s` already in `%s`.", name, target)
        return target

    url = f"{base_url}/{name}.zip"
    expected = (md5 or release.md5 or _published_md5(url, timeout_s)).lower()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{name}-") as tmp:
        zip_path = Path(tmp) / f"{name}.zip"
        actual = _fetch(url, zip_path, timeout_s)
        if actual != expected:
            raise DownloadError(
                f"Checksum mismatch for `{url}`: MD5 {actual}, expected {expected}. "
                "The download is corrupt or not the release; it was deleted. Try "
                "again, or check `--base-url`."
            )
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(unpacked)
        except zipfile.BadZipFile as err:
            raise DownloadError(f"`{url}` is not a valid zip: {err}.") from err
        if not (unpacked / release.folder).is_dir():
            found = ", ".join(sorted(p.name for p in unpacked.iterdir()))
            raise DownloadError(
                f"`{url}` does not hold folder `{release.folder}/`; found {found}."
            )
        shutil.rmtree(target, ignore_errors=True)
        (unpacked / release.folder).rename(target)
    done.write_text(f"{url} md5 {expected}\n")
    logger.info("Downloaded MovieLens `%s` to `%s` (MD5 %s).", name, target, expected)
    return target


def _open(url: str, timeout_s: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310
    except urllib.error.HTTPError as err:
        raise DownloadError(f"`{url}` answered HTTP {err.code} {err.reason}.") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"Could not reach `{url}`: {err}.") from err


def _published_md5(url: str, timeout_s: float) -> str:
    """The MD5 in GroupLens' `<zip>.md5` file (`<hex>  <name>` or bare hex)."""
    try:
        with _open(f"{url}.md5", timeout_s) as response:
            text = response.read(4096).decode("ascii", "replace")
    except DownloadError as err:
        raise DownloadError(
            f"No checksum known for `{url}` and none published beside it ({err}). "
            "Pass `--md5` with the release's checksum."
        ) from err
    words = [w for w in text.replace("=", " ").split() if len(w) == 32]
    if not words:
        raise DownloadError(f"`{url}.md5` holds no MD5: {text[:80]!r}.")
    return words[-1].lower() if text.startswith("MD5") else words[0].lower()


def _fetch(url: str, path: Path, timeout_s: float) -> str:
    """Stream `url` to `path`; return its MD5. Raises on a short download."""
    digest = hashlib.md5()  # noqa: S324 - GroupLens publishes MD5s
    received = 0
    with _open(url, timeout_s) as response, path.open("wb") as sink:
        announced = response.headers.get("Content-Length")
        try:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
                received += len(chunk)
        except (OSError, ValueError) as err:
            # http.client raises IncompleteRead (a ValueError) on a cut body.
            raise DownloadError(
                f"Download of `{url}` broke off after {received} bytes: {err}. "
                "Try again."
            ) from err
    if announced is not None and received != int(announced):
        raise DownloadError(
            f"Download of `{url}` is truncated: {received} of {announced} bytes. "
            "It was deleted; try again."
        )
    return digest.hexdigest()
