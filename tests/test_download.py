"""Archive download, verification and extraction (utils/download_utils.py, download_librispeech).

Hermetic: archives are built in tmp_path and served through file:// URLs, or by an HTTP server on
the loopback interface for the Range logic. No test touches the network.
"""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import REPO
from utils import download_librispeech
from utils.download_utils import (
    ChecksumError,
    UnsafeArchiveError,
    download,
    extract_archive,
    part_path,
    verify_checksum,
)


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def make_librispeech_archive(path: Path, split: str, n_files: int = 3) -> dict[str, bytes]:
    """A LibriSpeech-style tarball: LibriSpeech/<split>/<spk>/<chapter>/..., plus noise so that a
    resumed download has more than one chunk to fetch. Returns the split-relative contents."""
    contents = {
        f"{split}/19/198/19-198-{i:04d}.flac": os.urandom(3000 + 100 * i) for i in range(n_files)
    }
    contents[f"{split}/19/198/19-198.trans.txt"] = b"19-198-0000 HELLO WORLD\n"
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo("LibriSpeech")  # the top folder itself, stripped away
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        add_file(tar, "LibriSpeech/README.TXT", b"readme\n")
        for name, data in contents.items():
            add_file(tar, f"LibriSpeech/{name}", data)
    contents["README.TXT"] = b"readme\n"
    return contents


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("url,md5\n" + "".join(f"{url},{digest}\n" for url, digest in rows))
    return path


@pytest.fixture
def mirror(tmp_path):
    """Two archives in a local 'mirror' folder and a CSV pointing at them with file:// URLs."""
    src = tmp_path / "mirror"
    src.mkdir()
    archives = {}
    for split in ("dev-clean", "test-clean"):
        path = src / f"{split}.tar.gz"
        archives[split] = (path, make_librispeech_archive(path, split))
    csv = write_csv(tmp_path / "list.csv", [(p.as_uri(), md5(p)) for p, _ in archives.values()])
    return csv, archives


def run_script(data_dir: Path, csv: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "CSV": str(csv),
        "PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", "scripts/download_librispeech.sh", "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_scripts_parse():
    for script in ("download_librispeech.sh", "preprocess_librispeech.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=True)


def test_csv_lists_the_seven_librispeech_archives():
    archives = download_librispeech.read_csv(REPO / "utils" / "librispeech.csv")
    names = [a.filename.removesuffix(".tar.gz") for a in archives]
    assert sorted(names) == [
        "dev-clean",
        "dev-other",
        "test-clean",
        "test-other",
        "train-clean-100",
        "train-clean-360",
        "train-other-500",
    ]
    assert all(len(a.md5) == 32 for a in archives)
    inference = download_librispeech.read_csv(REPO / "utils" / "inference_librispeech.csv")
    assert [a.filename for a in inference] == [
        f"{s}.tar.gz" for s in ("dev-clean", "dev-other", "test-clean", "test-other")
    ]
    assert set(inference) <= set(archives)


def test_download_verifies_and_unpacks_without_leading_folder_then_skips(tmp_path, mirror):
    csv, archives = mirror
    data_dir = tmp_path / "datasets" / "LibriSpeech"
    result = run_script(data_dir, csv)
    assert result.returncode == 0, result.stderr
    assert "utils/download_librispeech.py" in result.stdout  # the command is echoed
    assert result.stdout.count("md5 ok") == 2
    for split, (path, contents) in archives.items():
        for name, data in contents.items():
            assert (data_dir / name).read_bytes() == data
        assert (data_dir / f"{split}.tar.gz.done").is_file()
        assert md5(data_dir / f"{split}.tar.gz") == md5(path)
    assert not (data_dir / "LibriSpeech").exists()
    assert not list(data_dir.glob("*.part"))

    # Idempotent: a second run neither downloads (the mirror is gone) nor unpacks again.
    extracted = data_dir / "dev-clean" / "19" / "198" / "19-198-0000.flac"
    mtime = extracted.stat().st_mtime_ns
    for path, _ in archives.values():
        path.unlink()
    again = run_script(data_dir, csv)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipping") == 2
    assert extracted.stat().st_mtime_ns == mtime


def test_bad_checksum_is_an_error_and_the_file_is_moved_aside(tmp_path, mirror, capsys):
    _, archives = mirror
    good, _ = archives["dev-clean"]
    bad, _ = archives["test-clean"]
    csv = write_csv(tmp_path / "bad.csv", [(good.as_uri(), md5(good)), (bad.as_uri(), "0" * 32)])
    dest = tmp_path / "data"
    assert download_librispeech.main([str(csv), str(dest), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "test-clean.tar.gz" in err and "expected 00000000" in err and "1 of 2" in err
    assert (dest / "test-clean.tar.gz.bad").is_file()
    assert not (dest / "test-clean.tar.gz").exists()
    assert not (dest / "test-clean.tar.gz.done").exists()
    assert not (dest / "test-clean").exists()  # nothing unpacked from the rejected archive
    assert (dest / "dev-clean.tar.gz.done").is_file()  # the good archive is still processed

    # With the right checksum the next run downloads the archive afresh and finishes.
    fixed = write_csv(
        tmp_path / "fixed.csv", [(good.as_uri(), md5(good)), (bad.as_uri(), md5(bad))]
    )
    assert download_librispeech.main([str(fixed), str(dest), "--no-progress"]) == 0
    assert (dest / "test-clean" / "19" / "198" / "19-198.trans.txt").is_file()


def test_verify_checksum_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    verify_checksum(path, hashlib.sha256(b"abc").hexdigest().upper(), "sha256")
    with pytest.raises(ChecksumError, match="sha256"):
        verify_checksum(path, hashlib.sha256(b"abd").hexdigest(), "sha256")


UNSAFE_MEMBERS = {
    "absolute path": (lambda tar: add_file(tar, "/tmp/evil.txt", b"x"), "/tmp/evil.txt"),
    "dot-dot": (lambda tar: add_file(tar, "LibriSpeech/../../evil.txt", b"x"), "../../evil.txt"),
    "symlink absolute": (
        lambda tar: add_link(tar, "LibriSpeech/link", "/etc", tarfile.SYMTYPE),
        "LibriSpeech/link",
    ),
    "symlink relative outside": (
        lambda tar: add_link(tar, "LibriSpeech/a/link", "../../../outside", tarfile.SYMTYPE),
        "LibriSpeech/a/link",
    ),
    "hardlink outside": (
        lambda tar: add_link(tar, "LibriSpeech/hard", "../outside.txt", tarfile.LNKTYPE),
        "LibriSpeech/hard",
    ),
    "hardlink to the stripped folder": (
        lambda tar: add_link(tar, "LibriSpeech/hard", "LibriSpeech", tarfile.LNKTYPE),
        "LibriSpeech/hard",
    ),
}


@pytest.mark.parametrize("case", UNSAFE_MEMBERS, ids=list(UNSAFE_MEMBERS))
def test_member_escaping_the_target_is_refused(tmp_path, case):
    add_member, member_name = UNSAFE_MEMBERS[case]
    (tmp_path / "outside.txt").write_text("precious")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "LibriSpeech/dev-clean/ok.txt", b"fine")
        add_member(tar)
        add_file(tar, "LibriSpeech/link/after.txt", b"written through the link?")
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(UnsafeArchiveError, match=member_name):
        extract_archive(archive, dest, strip_components=1, progress=False)
    assert (tmp_path / "outside.txt").read_text() == "precious"
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*") if p != archive)
    assert not (dest / "link").exists()


def test_unsafe_archive_fails_the_run_without_done_marker(tmp_path, capsys):
    archive = tmp_path / "dev-clean.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "LibriSpeech/../evil.txt", b"x")
    csv = write_csv(tmp_path / "list.csv", [(archive.as_uri(), md5(archive))])
    dest = tmp_path / "data"
    assert download_librispeech.main([str(csv), str(dest), "--no-progress"]) == 1
    assert "LibriSpeech/../evil.txt" in capsys.readouterr().err
    assert not (dest / "dev-clean.tar.gz.done").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_links_inside_the_target_are_kept(tmp_path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "top/d/file.txt", b"data")
        add_link(tar, "top/d/sym", "file.txt", tarfile.SYMTYPE)
        add_link(tar, "top/d/hard", "top/d/file.txt", tarfile.LNKTYPE)
    dest = tmp_path / "dest"
    assert extract_archive(archive, dest, strip_components=1, progress=False) == 3
    assert (dest / "d" / "sym").is_symlink()
    assert (dest / "d" / "sym").read_bytes() == b"data"
    assert (dest / "d" / "hard").read_bytes() == b"data"


def test_zip_archives_are_checked_too(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("model/weights.pt", b"w")
    assert extract_archive(good, tmp_path / "out", progress=False) == 1
    assert (tmp_path / "out" / "model" / "weights.pt").read_bytes() == b"w"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        extract_archive(evil, tmp_path / "out2", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def poisoned_source(tmp_path: Path, true_bytes: bytes, n_partial: int) -> tuple[Path, Path]:
    """A source whose first ``n_partial`` bytes are wrong, and a target whose ``.part`` holds the
    correct first ``n_partial`` bytes: only a download that resumes at byte ``n_partial`` ends with
    the true content (a restart would fetch the wrong prefix and fail the md5)."""
    source = tmp_path / "source.tar.gz"
    source.write_bytes(b"\0" * n_partial + true_bytes[n_partial:])
    target = tmp_path / "dest" / "archive.tar.gz"
    target.parent.mkdir()
    part_path(target).write_bytes(true_bytes[:n_partial])
    return source, target


def test_resume_continues_a_partial_file_url_download(tmp_path):
    archive = tmp_path / "true.tar.gz"
    make_librispeech_archive(archive, "dev-clean", n_files=20)
    true_bytes = archive.read_bytes()
    source, target = poisoned_source(tmp_path, true_bytes, len(true_bytes) // 3)
    download(source.as_uri(), target, progress=False)
    verify_checksum(target, hashlib.md5(true_bytes).hexdigest())
    assert not part_path(target).exists()


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``data``; honours ``Range: bytes=N-`` when ``ranges``; the first response is cut
    after ``cut`` bytes when ``cut`` is set (a dropped connection)."""

    data = b""
    ranges = True
    cut: int | None = None
    requests: ClassVar[list[str | None]] = []

    def do_GET(self):
        header = self.headers.get("Range")
        type(self).requests.append(header)
        start = int(header[len("bytes=") : -1]) if header and self.ranges else 0
        body = self.data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
            )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut is not None:
            body, type(self).cut = body[: type(self).cut], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    servers = []

    def serve(data: bytes, ranges: bool = True, cut: int | None = None) -> tuple[str, type]:
        handler = type("Handler", (RangeHandler,), {"data": data, "ranges": ranges, "cut": cut})
        handler.requests = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/archive.tar.gz", handler

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_resume_sends_range_and_appends(tmp_path, http_server):
    archive = tmp_path / "true.tar.gz"
    make_librispeech_archive(archive, "dev-clean", n_files=20)
    true_bytes = archive.read_bytes()
    n = len(true_bytes) // 2
    source, target = poisoned_source(tmp_path, true_bytes, n)
    url, handler = http_server(source.read_bytes())
    download(url, target, progress=False)
    assert handler.requests == [f"bytes={n}-"]
    assert target.read_bytes() == true_bytes


def test_http_server_ignoring_range_restarts_from_zero(tmp_path, http_server):
    true_bytes = os.urandom(50_000)
    target = tmp_path / "archive.tar.gz"
    part_path(target).write_bytes(b"stale bytes of another file")
    url, handler = http_server(true_bytes, ranges=False)
    download(url, target, progress=False)
    assert handler.requests == ["bytes=27-"]  # asked to resume, got the whole file (status 200)
    assert target.read_bytes() == true_bytes


def test_http_dropped_connection_is_retried_from_the_partial_bytes(tmp_path, http_server):
    true_bytes = os.urandom(50_000)
    target = tmp_path / "archive.tar.gz"
    url, handler = http_server(true_bytes, cut=20_000)
    download(url, target, progress=False, backoff_s=0.0)
    assert handler.requests == [None, "bytes=20000-"]
    assert target.read_bytes() == true_bytes
