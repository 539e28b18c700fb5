#!/usr/bin/env python3
"""Download the LibriSpeech n-gram language models and lexicon (OpenSLR resource 11).

The same public source as the corpus (``utils/download_librispeech.py`` fetches resource 12): word
n-gram ARPA models trained on the LibriSpeech LM corpus (upper case; the beam decoder matches them
to the model's labels case-insensitively) and the pronunciation lexicon, whose first column is
the 200k-word vocabulary. The ARPA files stay gzipped: ``jasper.decoding.BeamDecoder`` reads
``.arpa.gz`` directly. Loading the full 3-gram or 4-gram takes minutes and several GB of memory;
the pruned 3-grams load in seconds.

OpenSLR publishes no checksums. The first download records each file's size and sha256 in
``<file>.checksum.json``; every later run verifies the file against that record and refuses a
mismatch: the file is renamed ``<file>.bad`` and the run exits with status 1. Downloads resume
from ``<file>.part`` (``utils/download_utils.py``).

Usage::

    python utils/download_lm.py pretrained_models/librispeech_lm [3-gram 4-gram lexicon ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.download_utils import ChecksumError, DownloadError, download, file_digest, move_aside

MIRROR = "http://www.openslr.org/resources/11"
FILES = {
    "3-gram": "3-gram.arpa.gz",  # ~760 MB download, unpruned
    "4-gram": "4-gram.arpa.gz",  # ~1.3 GB, unpruned
    "3-gram-pruned-1e-7": "3-gram.pruned.1e-7.arpa.gz",  # ~34 MB
    "3-gram-pruned-3e-7": "3-gram.pruned.3e-7.arpa.gz",  # ~13 MB
    "lexicon": "librispeech-lexicon.txt",  # ~5 MB, "WORD PHONEMES..." per line
    "vocab": "librispeech-vocab.txt",  # ~2 MB, one word per line
}
DEFAULT = ("3-gram", "4-gram", "lexicon")


def record_path(path: Path) -> Path:
    """Where the size and sha256 of the first download of ``path`` are kept."""
    return path.with_name(path.name + ".checksum.json")


def verify_or_record(path: Path, url: str) -> None:
    """Check ``path`` against its record, or write the record on a first download.

    Raises ChecksumError (after moving the file to ``<file>.bad``) on a mismatch.
    """
    record = record_path(path)
    size = path.stat().st_size
    digest = file_digest(path, "sha256")
    if not record.is_file():
        record.write_text(json.dumps({"url": url, "size": size, "sha256": digest}, indent=2) + "\n")
        print(f"{path.name}: no published checksum; recorded size {size} and sha256 {digest}")
        return
    saved = json.loads(record.read_text())
    if (size, digest) != (saved["size"], saved["sha256"]):
        bad = move_aside(path)
        raise ChecksumError(
            f"{path.name}: size {size}, sha256 {digest}; {record} expects size {saved['size']}, "
            f"sha256 {saved['sha256']}. Moved the file to {bad}; if OpenSLR really published a "
            f"new file, delete {record} to accept it"
        )
    print(f"{path.name}: size and sha256 match {record.name}")


def fetch(name: str, dest: Path, mirror: str = MIRROR, progress: bool = True) -> Path:
    """Download (or resume) and verify one file of :data:`FILES`; returns its path."""
    filename = FILES[name]
    url = f"{mirror.rstrip('/')}/{filename}"
    path = download(url, dest / filename, progress=progress)
    verify_or_record(path, url)
    return path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("dest", type=Path, help="folder for the files")
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"files to fetch, of: {' '.join(FILES)} (none: {' '.join(DEFAULT)})",
    )
    parser.add_argument("--mirror", default=MIRROR, help="base URL of resource 11 (file:// works)")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_intermixed_args(argv)  # names may follow the options
    unknown = [n for n in args.names if n not in FILES]
    if unknown:
        parser.error(f"unknown files {' '.join(unknown)}: choose from {' '.join(FILES)}")
    args.dest.mkdir(parents=True, exist_ok=True)
    failures = []
    for name in dict.fromkeys(args.names or DEFAULT):
        try:
            print(f"ready: {fetch(name, args.dest, args.mirror, args.progress)}")
        except (DownloadError, ChecksumError) as e:
            print(f"ERROR: {name}: {e}", file=sys.stderr)
            failures.append(name)
    if failures:
        print(f"ERROR: {len(failures)} files failed: {' '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
