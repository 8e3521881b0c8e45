"""`recray data download` against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from recray.commands import main as recray_main
from recray.data.download import DownloadError, download_movielens


def _zip(folder: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/u.data", "1\t1\t5\t881250949\n")
        archive.writestr(
            f"{folder}/u.item", "1|Toy Story (1995)|||x|" + "0|" * 18 + "1\n"
        )
    return buffer.getvalue()


class _Server:
    """Serves `files` (path -> bytes); `truncate` cuts bodies short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    served = _Server()
    body = _zip("ml-100k")
    served.files["/datasets/ml-100k.zip"] = body
    served.files["/datasets/ml-100k.zip.md5"] = (
        f"{hashlib.md5(body).hexdigest()}  ml-100k.zip\n".encode()
    )
    yield served
    served.close()


def test_download_checks_md5_and_unpacks(server: _Server, tmp_path: Path) -> None:
    folder = download_movielens("ml-100k", tmp_path, base_url=server.url)

    assert folder == tmp_path / "ml-100k"
    assert (folder / "u.data").read_text() == "1\t1\t5\t881250949\n"
    # A second call reuses the folder without the server.
    server.files.clear()
    assert download_movielens("ml-100k", tmp_path, base_url=server.url) == folder


def test_command_prints_the_folder(server: _Server, tmp_path: Path, capsys) -> None:
    argv = ["data", "download", "ml-100k", "--cache-dir", str(tmp_path)]
    assert recray_main([*argv, "--base-url", server.url]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ml-100k")


def test_wrong_checksum_is_rejected_and_nothing_unpacked(
    server: _Server, tmp_path: Path
) -> None:
    server.files["/datasets/ml-100k.zip.md5"] = b"0" * 32 + b"  ml-100k.zip\n"
    with pytest.raises(DownloadError, match="Checksum mismatch.*expected 0000"):
        download_movielens("ml-100k", tmp_path, base_url=server.url)
    assert list(tmp_path.iterdir()) == []


def test_given_md5_overrides_and_is_checked(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="Checksum mismatch"):
        download_movielens("ml-100k", tmp_path, base_url=server.url, md5="a" * 32)


def test_truncated_download_is_rejected(server: _Server, tmp_path: Path) -> None:
    server.truncate = True
    md5 = hashlib.md5(server.files["/datasets/ml-100k.zip"]).hexdigest()
    with pytest.raises(DownloadError, match="truncated|broke off"):
        download_movielens(
            "ml-100k", tmp_path, base_url=server.url, md5=md5, timeout_s=10
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_zip_and_unknown_release(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_movielens("ml-1m", tmp_path, base_url=server.url, md5="a" * 32)
    with pytest.raises(DownloadError, match="Unknown MovieLens release `ml-2m`"):
        download_movielens("ml-2m", tmp_path, base_url=server.url)
