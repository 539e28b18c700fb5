#!/usr/bin/env python3
"""Download, verify and unpack the LibriSpeech archives listed in a CSV (``url,md5`` per line).

For each archive: download it into ``dest`` (resumable: ``<archive>.part``), check its md5, unpack
it into the extraction folder with the archives' leading ``LibriSpeech/`` stripped, so that
``dest=/datasets/LibriSpeech`` ends up holding ``dev-clean/``, ``train-clean-100/``, ... (the layout
every launcher reads), and write ``<archive>.done`` beside the archive. A later run skips archives
with a ``.done`` marker, and resumes or re-checks the others.

Unlike upstream (docs/upstream.md#u32), a wrong md5 is an error: the bad archive is renamed to
``<archive>.bad``, the remaining archives are still processed, and the run exits with status 1.
Extraction refuses members that would land outside the target folder.

Usage::

    python utils/download_librispeech.py utils/librispeech.csv /datasets/LibriSpeech \\
        [-e EXTRACT_DIR] [--skip_download] [--skip_checksum] [--skip_extract]
"""

from __future__ import annotations

import argparse
import csv
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utils.download_utils import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download,
    extract_archive,
    move_aside,
    verify_checksum,
)

# The LibriSpeech tarballs hold LibriSpeech/<split>/...; one stripped component leaves <split>/...
STRIP_COMPONENTS = 1


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str  # empty: not checked

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


def read_csv(path: str | Path) -> list[Archive]:
    """The archives of a ``url,md5`` CSV file (header line required; the md5 may be empty)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "url" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a header line with the columns url,md5")
        return [
            Archive(row["url"].strip(), (row.get("md5") or "").strip())
            for row in reader
            if (row.get("url") or "").strip()
        ]


def done_marker(archive_path: Path) -> Path:
    """Written once an archive is verified and fully unpacked; its presence skips the archive."""
    return archive_path.with_name(archive_path.name + ".done")


def process(
    archive: Archive,
    dest: Path,
    extract_dir: Path,
    *,
    skip_download: bool = False,
    skip_checksum: bool = False,
    skip_extract: bool = False,
    progress: bool = True,
) -> None:
    """Download, verify and unpack one archive (each step skippable); raises on any failure."""
    path = dest / archive.filename
    marker = done_marker(path)
    if marker.is_file():
        print(f"{archive.filename}: already downloaded and unpacked ({marker} exists), skipping")
        return
    if not skip_download:
        download(archive.url, path, progress=progress)
    if not path.is_file():
        raise DownloadError(f"{path} not found (and --skip_download given)")
    if skip_checksum or not archive.md5:
        print(f"{archive.filename}: md5 not checked")
    else:
        try:
            verify_checksum(path, archive.md5, "md5")
        except ChecksumError:
            bad = move_aside(path)
            print(f"{archive.filename}: moved the corrupt download to {bad}", file=sys.stderr)
            raise
        print(f"{archive.filename}: md5 ok")
    if skip_extract:
        return
    n = extract_archive(path, extract_dir, strip_components=STRIP_COMPONENTS, progress=progress)
    marker.write_text(f"{archive.url} {archive.md5} -> {extract_dir.resolve()} ({n} members)\n")
    print(f"{archive.filename}: unpacked {n} members into {extract_dir}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("csv", type=Path, help="CSV file with the columns url,md5")
    parser.add_argument("dest", type=Path, help="folder the archives are downloaded to")
    parser.add_argument(
        "-e",
        "--extract_dir",
        type=Path,
        default=None,
        help="folder that receives the split folders (LibriSpeech/ stripped); None: dest",
    )
    parser.add_argument("--skip_download", action="store_true", help="use archives already there")
    parser.add_argument("--skip_checksum", action="store_true", help="do not check the md5")
    parser.add_argument("--skip_extract", action="store_true", help="download and check only")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show tqdm progress bars",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    archives = read_csv(args.csv)
    extract_dir = args.extract_dir or args.dest
    args.dest.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for archive in archives:
        try:
            process(
                archive,
                args.dest,
                extract_dir,
                skip_download=args.skip_download,
                skip_checksum=args.skip_checksum,
                skip_extract=args.skip_extract,
                progress=args.progress,
            )
        except (DownloadError, ChecksumError, UnsafeArchiveError) as e:
            print(f"ERROR: {archive.filename}: {e}", file=sys.stderr)
            failures.append(archive.filename)
    if failures:
        print(
            f"ERROR: {len(failures)} of {len(archives)} archives failed: {', '.join(failures)}",
            file=sys.stderr,
        )
        return 1
    print(f"{len(archives)} archives ready in {extract_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
