"""Resumable downloads, checksums and safe archive extraction.

Generic building blocks for the dataset and checkpoint downloaders (``download_librispeech.py``, the
QuartzNet downloader). Standard library only, plus tqdm for progress bars.

- ``download(url, path)`` streams ``url`` to ``<path>.part`` and renames it to ``path`` when
  complete. An existing ``.part`` is continued with an HTTP ``Range`` request; a server that
  ignores the range (status 200 instead of 206) restarts the file from zero. ``file://`` URLs resume
  the same way, so the logic is testable offline. Dropped connections are retried from the bytes
  on disk.
- ``file_digest`` / ``verify_checksum`` (md5, sha256, ...): upstream printed "Failed" for a wrong
  md5 and went on extracting (docs/upstream.md#u32); here a mismatch raises ``ChecksumError``.
- ``extract_archive`` unpacks ``.tar``, ``.tar.gz`` and ``.zip`` in one pass, refusing any member
  that would land outside the target: absolute paths, ``..`` components, symlinks or hardlinks
  pointing outside, device files (upstream used ``tarfile.extractall`` unfiltered:
  docs/upstream.md#u32). ``strip_components`` drops leading path components, as
  ``tar --strip-components`` does.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

CHUNK_SIZE = 1 << 20  # bytes read per iteration, for downloads and checksums (upstream's 1 MB)


class DownloadError(RuntimeError):
    """A download could not be completed; the partial file is kept for the next attempt."""


class ChecksumError(RuntimeError):
    """A file's digest differs from the expected one."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would be written outside the extraction directory."""


# --------------------------------------------------------------------------------------------------
# Download


def part_path(path: Path) -> Path:
    """Where ``download`` keeps the bytes of an unfinished ``path``."""
    return path.with_name(path.name + ".part")


def _open_source(url: str, offset: int, timeout: float) -> tuple[BinaryIO, int | None, int]:
    """Open ``url`` for reading from byte ``offset`` if the source allows it.

    Returns (stream, total size or None if unknown, the offset the stream actually starts at: 0 when
    the server ignored the range request).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        # urllib's file handler ignores Range, so local files are opened and seeked directly.
        local = Path(urllib.request.url2pathname(parsed.path))
        f = open(local, "rb")  # noqa: SIM115 (the caller closes it)
        total = os.fstat(f.fileno()).st_size
        start = min(offset, total)
        f.seek(start)
        return f, total, start

    request = urllib.request.Request(url, headers={"User-Agent": "jasper-recipe-downloader"})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:
            # Range not satisfiable: the partial file already holds every byte (the checksum or the
            # size check decides whether it is right).
            e.close()
            return _EmptyStream(), offset, offset
        raise
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None else None
    if response.status == 206:
        return response, (offset + length if length is not None else None), offset
    return response, length, 0


class _EmptyStream:
    def read(self, _n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def download(
    url: str,
    path: str | Path,
    *,
    retries: int = 3,
    backoff_s: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``path``, continuing an interrupted earlier attempt.

    A finished ``path`` is returned as is. Bytes go to ``<path>.part``, which is renamed to ``path``
    only when the transfer is complete (size as announced by the source, when it announces one).

    A dropped connection or a short transfer is retried ``retries`` times, waiting ``backoff_s``,
    then twice as long each time, and continuing from the bytes already received.

    Raises:
        DownloadError: the source does not exist, or the transfer still failed after the retries;
            the ``.part`` file stays for the next run.
    """
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(path)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt > 0:
            time.sleep(min(backoff_s * 2 ** (attempt - 1), 60.0))
        offset = part.stat().st_size if part.is_file() else 0
        try:
            stream, total, start = _open_source(url, offset, timeout)
        except FileNotFoundError as e:
            raise DownloadError(f"cannot download {url}: {e}") from e
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 and e.code not in (408, 429):  # the request itself is wrong
                raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
            last_error = e
            continue
        except (urllib.error.URLError, HTTPException, OSError) as e:
            last_error = e
            continue
        try:
            with (
                open(part, "r+b" if start > 0 else "wb") as out,
                tqdm(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=path.name,
                    disable=not progress,
                ) as bar,
            ):
                out.seek(start)
                out.truncate()
                while chunk := stream.read(CHUNK_SIZE):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, HTTPException, OSError) as e:
            last_error = e
            continue
        finally:
            stream.close()
        size = part.stat().st_size
        if total is not None and size != total:
            last_error = DownloadError(f"{url}: got {size} of {total} bytes")
            continue
        os.replace(part, path)
        return path
    raise DownloadError(
        f"cannot download {url} after {retries + 1} attempts ({last_error}); "
        f"{part} keeps the bytes received so far and the next run continues from there"
    ) from last_error


# --------------------------------------------------------------------------------------------------
# Checksums


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in ``CHUNK_SIZE`` pieces."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str, algorithm: str = "md5") -> None:
    """Raise ``ChecksumError`` (naming the file and both digests) unless the digest matches."""
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.strip().lower():
        raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected.strip().lower()}")


def move_aside(path: str | Path, suffix: str = ".bad") -> Path:
    """Rename a rejected file to ``<path><suffix>`` (replacing an older one) so that the next run
    downloads it afresh while the bad copy stays available for inspection."""
    path = Path(path)
    target = path.with_name(path.name + suffix)
    os.replace(path, target)
    return target


# --------------------------------------------------------------------------------------------------
# Extraction


def _member_name(name: str, strip_components: int) -> str | None:
    """The path a member extracts to, relative to the target, without its first
    ``strip_components`` components (None: nothing left, e.g. the archive's top folder itself).

    Raises ``UnsafeArchiveError`` for absolute names and ``..`` anywhere in the name, stripped
    components included (``tar`` would accept ``../x`` with one component stripped; nothing
    legitimate needs it).
    """
    path = PurePosixPath(name)
    if path.is_absolute() or os.path.isabs(name):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'")
    parts = [p for p in path.parts if p != "."][strip_components:]
    return "/".join(parts) if parts else None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _checked_target(root: str, rel: str, member: str) -> str:
    """The absolute path ``rel`` extracts to; ``UnsafeArchiveError`` naming ``member`` if that is
    outside ``root``. realpath follows links already on disk, so no member can escape through a
    symlink extracted before it."""
    target = os.path.realpath(os.path.join(root, rel))
    if not _inside(target, root):
        raise UnsafeArchiveError(f"archive member {member!r} would be written outside {root}")
    return target


def _checked_tar_member(root: str, info: tarfile.TarInfo, strip_components: int):
    """A copy of ``info`` renamed for extraction under ``root`` (None: skip it), after checking
    that neither the member nor, for links, what it points to lies outside ``root``."""
    rel = _member_name(info.name, strip_components)
    if rel is None:
        return None
    target = _checked_target(root, rel, info.name)
    member = copy.copy(info)
    member.name = rel
    if info.issym():
        # A symlink's target is relative to the folder holding the link.
        link = os.path.realpath(os.path.join(os.path.dirname(target), info.linkname))
        if os.path.isabs(info.linkname) or not _inside(link, root):
            raise UnsafeArchiveError(
                f"archive member {info.name!r} is a symlink pointing outside {root}: "
                f"{info.linkname!r}"
            )
    elif info.islnk():
        # A hardlink's target is another member's name: strip it alike, then check it as a path.
        try:
            link = _member_name(info.linkname, strip_components)
            if link is None:
                raise UnsafeArchiveError(info.linkname)
            _checked_target(root, link, info.name)
        except UnsafeArchiveError as e:
            raise UnsafeArchiveError(
                f"archive member {info.name!r} is a hardlink pointing outside {root}: "
                f"{info.linkname!r}"
            ) from e
        member.linkname = link
    elif not (info.isfile() or info.isdir()):
        raise UnsafeArchiveError(f"archive member {info.name!r} is a device file or fifo")
    return member


def _extract_tar(archive: Path, root: str, strip_components: int, bar: tqdm) -> int:
    # Python's own "data" filter (3.11.4+) is a second line of defence behind our checks.
    data_filter = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    count = 0
    # Streamed in one pass ("r|*"), so a multi-GB .tar.gz is decompressed once.
    with tarfile.open(archive, mode="r|*") as tar:
        for info in tar:
            member = _checked_tar_member(root, info, strip_components)
            if member is None:
                continue
            tar.extract(member, root, **data_filter)
            count += 1
            bar.update(1)
    return count


def _extract_zip(archive: Path, root: str, strip_components: int, bar: tqdm) -> int:
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _member_name(info.filename, strip_components)
            if rel is None:
                continue
            target = _checked_target(root, rel, info.filename)
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_SIZE)
            count += 1
            bar.update(1)
    return count


def extract_archive(
    archive: str | Path, dest: str | Path, *, strip_components: int = 0, progress: bool = True
) -> int:
    """Unpack a tar (any compression tarfile reads) or zip archive into ``dest``.

    Members are checked one by one before they are written; the first unsafe one stops the
    extraction with ``UnsafeArchiveError`` (members before it are already on disk, none outside
    ``dest``). Returns the number of members written.
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    with tqdm(desc=f"extracting {archive.name}", unit=" files", disable=not progress) as bar:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, root, strip_components, bar)
        return _extract_tar(archive, root, strip_components, bar)
