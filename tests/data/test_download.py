"""Tests of crackdet.data.download against a throwaway HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crackdet.data import download as dl

TOP = "Concrete Crack Images for Classification"
RAR_NAME = "Concrete Crack Images for Classification.rar"


def _image_bytes(index: int, fmt: str) -> bytes:
    try:
        from PIL import Image
    except ImportError:  # The code under test never decodes images: any bytes will do.
        return f"{fmt}-{index}".encode() * 8
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (index * 40 % 256, 80, 160)).save(buf, format=fmt)
    return buf.getvalue()


#: The images of the fake data set; different counts per class so a swap would show.
IMAGES = {
    "Positive/00001.jpg": _image_bytes(1, "JPEG"),
    "Positive/00002.jpg": _image_bytes(2, "JPEG"),
    "Positive/00003_1.png": _image_bytes(3, "PNG"),
    "Negative/00001.jpg": _image_bytes(4, "JPEG"),
    "Negative/00002.png": _image_bytes(5, "PNG"),
}


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    # Stored, not deflated: the payload size stays predictable for the cut-off tests.
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def dataset_zip() -> bytes:
    """The layout of the real archive, folders nested in a top folder, plus a stray file."""
    members = {f"{TOP}/{name}": data for name, data in IMAGES.items()}
    members[f"{TOP}/README.txt"] = b"not an image"
    return _zip_bytes(members)


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; what requests it saw."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut_first_after: int | None = None  # bytes of body sent before dropping request 1
    ignore_range: bool = False
    requests: list[dict[str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append(
            {
                "path": self.path,
                "range": self.headers["Range"],
                "if_range": self.headers["If-Range"],
            }
        )
        number = len(state.requests)
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        requested = self.headers["Range"]
        if requested and not state.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", requested)
            assert m, requested
            start, status = int(m.group(1)), 206
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        chunk = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("ETag", '"v1"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if number == 1 and state.cut_first_after is not None:
            # Promise the whole body, send part of it, hang up: an interrupted download.
            self.wfile.write(chunk[: state.cut_first_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = ServerState(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there any more: connecting is refused at once, as with no network.
    return f"http://127.0.0.1:{port}/5y9wdsg2zt-2.zip"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_dataset(dest: Path) -> None:
    assert _tree(dest / "Positive") == {
        k.split("/", 1)[1]: v for k, v in IMAGES.items() if k.startswith("Positive/")
    }
    assert _tree(dest / "Negative") == {
        k.split("/", 1)[1]: v for k, v in IMAGES.items() if k.startswith("Negative/")
    }
    assert not list(dest.glob(".extract-*")), "the staging folder must be cleaned up"


# ----------------------------------------------------------------------------- 1. happy path


def test_fetch_downloads_extracts_and_moves_class_folders(server, tmp_path, capsys):
    payload = dataset_zip()
    server.files["/data/ds.zip"] = payload
    dest = tmp_path / "concrete_crack"

    result = dl.fetch_dataset(
        dest, url=server.url("/data/ds.zip"), sha256=hashlib.sha256(payload).hexdigest()
    )

    assert result == dest
    _assert_dataset(dest)
    assert not (dest / TOP).exists()
    assert (dest / ".download" / "ds.zip").read_bytes() == payload  # keep_archive=True
    assert not (dest / ".download" / "ds.zip.part").exists()
    assert len(server.requests) == 1 and server.requests[0]["range"] is None
    out = capsys.readouterr().out
    assert "Positive: 3 images" in out and "Negative: 2 images" in out


# ----------------------------------------------------------------------------- 2. resume


def test_interrupted_download_resumes_with_range(server, tmp_path):
    payload = dataset_zip()
    cut = len(payload) // 2
    server.files["/ds.zip"] = payload
    server.cut_first_after = cut
    target = tmp_path / ".download" / "ds.zip"
    part = target.with_name("ds.zip.part")

    with pytest.raises(dl.DownloadError, match="resume"):
        dl.download(server.url("/ds.zip"), target, chunk_size=64, timeout=5)
    assert not target.exists()
    assert part.stat().st_size == cut

    assert dl.download(server.url("/ds.zip"), target, chunk_size=64, timeout=5) == target

    assert len(server.requests) == 2
    assert server.requests[1]["range"] == f"bytes={cut}-"
    assert server.requests[1]["if_range"] == '"v1"'
    assert target.read_bytes() == payload
    assert not part.exists()


def test_resume_restarts_from_zero_when_server_ignores_range(server, tmp_path):
    payload = dataset_zip()
    cut = len(payload) // 3
    server.files["/ds.zip"] = payload
    server.cut_first_after = cut
    server.ignore_range = True
    target = tmp_path / "ds.zip"

    with pytest.raises(dl.DownloadError):
        dl.download(server.url("/ds.zip"), target, chunk_size=64, timeout=5)
    dl.download(server.url("/ds.zip"), target, chunk_size=64, timeout=5)

    assert server.requests[1]["range"] == f"bytes={cut}-"
    # Appending the 200 body to the .part would have produced cut + len(payload) bytes.
    assert target.read_bytes() == payload


def test_complete_part_file_is_finished_without_new_bytes(server, tmp_path):
    payload = dataset_zip()
    server.files["/ds.zip"] = payload
    target = tmp_path / "ds.zip"
    target.with_name("ds.zip.part").write_bytes(payload)

    dl.download(server.url("/ds.zip"), target, timeout=5)

    assert server.requests[0]["range"] == f"bytes={len(payload)}-"  # answered 416
    assert target.read_bytes() == payload


# ----------------------------------------------------------------------------- 3. checksum


def test_checksum_mismatch_is_rejected_and_nothing_is_kept(server, tmp_path):
    server.files["/ds.zip"] = dataset_zip()
    target = tmp_path / ".download" / "ds.zip"

    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.download(server.url("/ds.zip"), target, sha256="0" * 64, timeout=5)

    assert not target.exists()
    assert not list(target.parent.iterdir()), "no .part nor .part.validator may be left"


def test_existing_archive_with_wrong_checksum_is_deleted(server, tmp_path):
    target = tmp_path / "ds.zip"
    target.write_bytes(b"corrupt")

    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.download(server.url("/ds.zip"), target, sha256="ab" * 32, timeout=5)

    assert not target.exists()
    assert server.requests == []


# ----------------------------------------------------------------------------- 4. no network


def test_no_network_gives_manual_steps(closed_port_url, tmp_path):
    dest = tmp_path / "concrete_crack"

    with pytest.raises(dl.DownloadError) as info:
        dl.fetch_dataset(dest, url=closed_port_url, timeout=5)

    message = str(info.value)
    assert closed_port_url in message
    assert str(dest / ".download" / "5y9wdsg2zt-2.zip") in message
    assert str(dest / "Positive") in message
    assert "data.data_dir=" in message


def test_http_error_gives_manual_steps(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404") as info:
        dl.fetch_dataset(tmp_path / "d", url=server.url("/missing.zip"), timeout=5)
    assert "data.data_dir=" in str(info.value)


# ----------------------------------------------------------------------------- 5. nested rar


def _rar_zip(tmp_path: Path) -> Path:
    archive = tmp_path / "ds.zip"
    archive.write_bytes(_zip_bytes({f"{TOP}/{RAR_NAME}": b"Rar!\x1a\x07\x01\x00" + b"\x00" * 64}))
    return archive


def test_rar_without_tool_names_packages_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    dest = tmp_path / "dest"

    with pytest.raises(dl.DownloadError) as info:
        dl.extract(_rar_zip(tmp_path), dest)

    message = str(info.value)
    assert RAR_NAME in message
    assert "apt-get install unar" in message
    assert "libarchive-tools" in message
    assert not (dest / "Positive").exists()
    assert not list(dest.glob(".extract-*"))


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\nimport sys, pathlib\n{body}\n")
    script.chmod(0o755)


def test_rar_is_extracted_with_the_first_tool_that_works(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # unrar is tried first and fails; unar (next in line) "extracts" the images.
    _fake_tool(bin_dir, "unrar", "print('unsupported format'); sys.exit(3)")
    writes = "\n".join(
        f"(out / {f'{TOP}/{name}'!r}).parent.mkdir(parents=True, exist_ok=True)\n"
        f"(out / {f'{TOP}/{name}'!r}).write_bytes({data!r})"
        for name, data in IMAGES.items()
    )
    _fake_tool(
        bin_dir,
        "unar",
        "args = sys.argv[1:]\nout = pathlib.Path(args[args.index('-o') + 1])\n"
        f"assert args[-1].endswith({RAR_NAME!r})\n{writes}",
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    dest = tmp_path / "dest"

    dl.extract(_rar_zip(tmp_path), dest)

    _assert_dataset(dest)


def test_rar_tool_failures_are_reported(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "7z", "print('Unsupported Method'); sys.exit(2)")
    monkeypatch.setenv("PATH", str(bin_dir))

    with pytest.raises(dl.DownloadError, match=r"7z exited with status 2: Unsupported Method"):
        dl.extract(_rar_zip(tmp_path), tmp_path / "dest")


# ----------------------------------------------------------------------------- 6. traversal


@pytest.mark.parametrize("evil", ["../evil.txt", f"{TOP}/../../evil.txt", "/tmp/evil.txt"])
def test_path_traversal_member_is_rejected(tmp_path, evil):
    members = {f"{TOP}/{name}": data for name, data in IMAGES.items()}
    members[evil] = b"owned"
    archive = tmp_path / "work" / "ds.zip"
    archive.parent.mkdir()
    archive.write_bytes(_zip_bytes(members))
    dest = tmp_path / "work" / "dest"

    with pytest.raises(dl.DownloadError, match="unsafe path"):
        dl.extract(archive, dest)

    assert not list(tmp_path.rglob("evil.txt"))
    assert not (dest / "Positive").exists()


# ----------------------------------------------------------------------------- 7. reuse


def test_extracted_dest_is_left_alone(server, tmp_path, capsys):
    server.files["/ds.zip"] = dataset_zip()
    dest = tmp_path / "dest"
    (dest / "Positive").mkdir(parents=True)
    (dest / "Negative").mkdir()
    (dest / "Positive" / "mine.jpg").write_bytes(b"keep me")
    (dest / "Negative" / "mine.jpg").write_bytes(b"keep me too")

    dl.fetch_dataset(dest, url=server.url("/ds.zip"))

    assert server.requests == []
    assert _tree(dest / "Positive") == {"mine.jpg": b"keep me"}
    assert _tree(dest / "Negative") == {"mine.jpg": b"keep me too"}
    assert "already" in capsys.readouterr().out


def test_downloaded_archive_is_reused_without_request(server, tmp_path):
    dest = tmp_path / "dest"
    (dest / ".download").mkdir(parents=True)
    (dest / ".download" / "ds.zip").write_bytes(dataset_zip())

    dl.fetch_dataset(dest, url=server.url("/ds.zip"))

    assert server.requests == []
    _assert_dataset(dest)


def test_existing_images_are_never_overwritten(server, tmp_path):
    server.files["/ds.zip"] = dataset_zip()
    dest = tmp_path / "dest"
    (dest / "Positive").mkdir(parents=True)
    (dest / "Positive" / "00001.jpg").write_bytes(b"user's own file")
    # Negative/ missing: the folder is incomplete, so the download goes ahead.

    dl.fetch_dataset(dest, url=server.url("/ds.zip"))

    positive = _tree(dest / "Positive")
    assert positive["00001.jpg"] == b"user's own file"
    assert positive["00002.jpg"] == IMAGES["Positive/00002.jpg"]
    assert len(positive) == 3
    assert len(_tree(dest / "Negative")) == 2


def test_a_broken_archive_from_an_earlier_run_is_fetched_again(server, tmp_path, capsys):
    payload = dataset_zip()
    server.files["/ds.zip"] = payload
    dest = tmp_path / "dest"
    (dest / ".download").mkdir(parents=True)
    # What an earlier run can leave: the first half of the zip under the final name.
    (dest / ".download" / "ds.zip").write_bytes(payload[: len(payload) // 2])

    dl.fetch_dataset(dest, url=server.url("/ds.zip"))

    assert len(server.requests) == 1 and server.requests[0]["range"] is None
    _assert_dataset(dest)
    assert (dest / ".download" / "ds.zip").read_bytes() == payload
    assert "unusable" in capsys.readouterr().err


def test_a_second_download_into_the_same_folder_waits_for_the_first(server, tmp_path, monkeypatch):
    from filelock import FileLock

    from crackdet.data.download import dataset

    server.files["/ds.zip"] = dataset_zip()
    dest = tmp_path / "dest"
    dest.mkdir()
    waiting = threading.Event()

    def log(message: str) -> None:
        if "Another download" in message:
            waiting.set()

    monkeypatch.setattr(dataset, "log", log)
    first = FileLock(dest / dataset.LOCK_NAME)
    first.acquire()
    second = threading.Thread(
        target=dl.fetch_dataset, args=(dest,), kwargs={"url": server.url("/ds.zip")}
    )
    second.start()
    try:
        assert waiting.wait(timeout=30)
        assert server.requests == []  # nothing fetched while the first holds the folder
    finally:
        first.release()
        second.join(timeout=60)
    _assert_dataset(dest)
    assert len(server.requests) == 1


# ----------------------------------------------------------------------------- 8. CLI


def test_main_returns_1_and_prints_error(closed_port_url, tmp_path, capsys):
    status = dl.main(["--dest", str(tmp_path / "d"), "--url", closed_port_url, "--timeout", "5"])

    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "data.data_dir=" in err


def test_unwritable_dest_fails_before_any_download(server, tmp_path, capsys):
    server.files["/ds.zip"] = dataset_zip()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # unwritable even for root, unlike a chmod
    dest = blocker / "concrete_crack"

    status = dl.main(["--dest", str(dest), "--url", server.url("/ds.zip")])

    assert status == 2
    err = capsys.readouterr().err
    assert f"--dest {dest} cannot be written" in err and "--dest DIR" in err
    assert server.requests == []


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_read_only_dest_fails_before_any_download(server, tmp_path, capsys):
    server.files["/ds.zip"] = dataset_zip()
    dest = tmp_path / "read_only"
    dest.mkdir(mode=0o555)

    assert dl.main(["--dest", str(dest), "--url", server.url("/ds.zip")]) == 2
    assert "permission denied" in capsys.readouterr().err
    assert server.requests == []


def test_main_rejects_malformed_sha256(server, tmp_path, capsys):
    server.files["/ds.zip"] = dataset_zip()
    status = dl.main(
        ["--dest", str(tmp_path / "d"), "--url", server.url("/ds.zip"), "--sha256", "xyz"]
    )

    assert status == 1
    assert "64 hexadecimal digits" in capsys.readouterr().err
    assert server.requests == []


def test_main_reports_invalid_url(tmp_path, capsys):
    assert dl.main(["--dest", str(tmp_path / "d"), "--url", "not-a-url"]) == 1
    assert "Invalid download URL" in capsys.readouterr().err


def test_main_succeeds_and_removes_archive_by_default(server, tmp_path, capsys):
    payload = dataset_zip()
    server.files["/ds.zip"] = payload
    dest = tmp_path / "d"
    sha = hashlib.sha256(payload).hexdigest()

    assert dl.main(["--dest", str(dest), "--url", server.url("/ds.zip"), "--sha256", sha]) == 0

    _assert_dataset(dest)
    assert not (dest / ".download").exists()
    captured = capsys.readouterr()
    assert "Positive: 3 images" in captured.out
    assert sha in captured.err  # printed so that it can be pinned as KNOWN_SHA256


def test_main_keep_archive(server, tmp_path):
    server.files["/ds.zip"] = dataset_zip()
    dest = tmp_path / "d"

    assert dl.main(["--dest", str(dest), "--url", server.url("/ds.zip"), "--keep-archive"]) == 0

    assert (dest / ".download" / "ds.zip").is_file()


def test_default_dest_is_under_project_root():
    import crackdet

    root = Path(crackdet.__file__).resolve().parent.parent
    expected = root / "data" / "concrete_crack"
    assert expected == dl.DEFAULT_DEST
    assert dl.KNOWN_SHA256 is None
