#!/usr/bin/env python3
"""Download a pretrained QuartzNet 15x5 checkpoint from NGC (upstream's ``download_quartznet.sh``).

``en`` is DeepLearningExamples' own checkpoint (``nvidia_quartznet_210504.pt``, loads unchanged);
``ca de es fr it pl ru zh`` are NeMo's ``stt_<lang>_quartznet15x5.nemo`` models, which
``inference.py`` reads directly or ``utils/convert_nemo.py`` converts. Sources: the CSV
(``utils/quartznet_checkpoints.csv``: language, url, archive, member, size, sha256).

NGC publishes no checksums. Where the CSV lists none, the first download records the archive's
size and sha256 in ``<archive>.checksum.json``; every later run (a re-run, a resumed or repeated
download) verifies the archive against that record or against the CSV, and refuses a mismatch: the
archive is renamed ``<archive>.bad`` and the run exits with status 1. Downloads resume from
``<archive>.part`` like the LibriSpeech downloader.

Usage::

    python utils/download_quartznet.py de pretrained_models/quartznet_de [--csv CSV]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from utils.download_utils import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download,
    extract_archive,
    file_digest,
    move_aside,
)

DEFAULT_CSV = Path(__file__).resolve().parent / "quartznet_checkpoints.csv"


@dataclass(frozen=True)
class Checkpoint:
    language: str
    url: str
    archive: str  # file name of the download (NGC's URLs end in .../zip)
    member: str  # the checkpoint inside the archive
    size: int | None  # bytes of the archive, None: not published
    sha256: str  # "" : not published


def read_csv(path: str | Path) -> dict[str, Checkpoint]:
    """The checkpoints of a CSV with the columns language,url,archive,member,size,sha256."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = {"language", "url", "archive", "member", "size", "sha256"}
        if reader.fieldnames is None or not columns <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header line with the columns {sorted(columns)}")
        out = {}
        for row in reader:
            size = (row["size"] or "").strip()
            out[row["language"].strip()] = Checkpoint(
                language=row["language"].strip(),
                url=row["url"].strip(),
                archive=row["archive"].strip(),
                member=row["member"].strip(),
                size=int(size) if size else None,
                sha256=(row["sha256"] or "").strip().lower(),
            )
        return out


def record_path(archive_path: Path) -> Path:
    """Where the size and sha256 of the first download are kept."""
    return archive_path.with_name(archive_path.name + ".checksum.json")


def expected_digest(ckpt: Checkpoint, archive_path: Path) -> tuple[int, str, str] | None:
    """``(size, sha256, where it comes from)``: the CSV's values, else the first download's record."""
    if ckpt.size is not None and ckpt.sha256:
        return ckpt.size, ckpt.sha256, "the CSV"
    record = record_path(archive_path)
    if record.is_file():
        saved = json.loads(record.read_text())
        return int(saved["size"]), str(saved["sha256"]), str(record)
    return None


def verify_or_record(ckpt: Checkpoint, archive_path: Path) -> None:
    """Check the archive against the known size and sha256, or record them on a first download.

    Raises ChecksumError (after moving the archive to ``<archive>.bad``) on a mismatch.
    """
    expected = expected_digest(ckpt, archive_path)
    size = archive_path.stat().st_size
    if expected is None:
        digest = file_digest(archive_path, "sha256")
        record_path(archive_path).write_text(
            json.dumps({"url": ckpt.url, "size": size, "sha256": digest}, indent=2) + "\n"
        )
        print(
            f"{ckpt.archive}: no published checksum; recorded size {size} and sha256 {digest} in "
            f"{record_path(archive_path)}: later runs verify against them"
        )
        return
    want_size, want_sha, source = expected
    problem = None
    if size != want_size:
        problem = f"size {size} bytes, expected {want_size}"
    else:
        digest = file_digest(archive_path, "sha256")
        if digest != want_sha:
            problem = f"sha256 {digest}, expected {want_sha}"
    if problem:
        bad = move_aside(archive_path)
        raise ChecksumError(
            f"{ckpt.archive}: {problem} (from {source}); moved the file to {bad}. If NGC really "
            f"published a new file, delete {record_path(archive_path)} to accept it"
        )
    print(f"{ckpt.archive}: size and sha256 match {source}")


def extract_member(ckpt: Checkpoint, archive_path: Path, dest: Path) -> Path:
    """Unpack the archive and move its checkpoint file to ``dest/<member>``."""
    target = dest / ckpt.member
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack.") as tmp:
        extract_archive(archive_path, tmp, progress=False)
        found = sorted(Path(tmp).rglob(ckpt.member))
        if not found:
            names = sorted(p.name for p in Path(tmp).rglob("*") if p.is_file())
            raise DownloadError(f"{ckpt.archive} holds no {ckpt.member} (it holds: {names})")
        shutil.move(str(found[0]), target)
    return target


def fetch(ckpt: Checkpoint, dest: Path, progress: bool = True) -> Path:
    """Download (or resume), verify and unpack one checkpoint; returns the checkpoint's path."""
    dest.mkdir(parents=True, exist_ok=True)
    archive_path = dest / ckpt.archive
    target = dest / ckpt.member
    if target.is_file() and not archive_path.is_file():
        print(f"{target} exists (its archive was removed, so it is not verified again)")
        return target
    download(ckpt.url, archive_path, progress=progress)
    verify_or_record(ckpt, archive_path)
    if not target.is_file():
        extract_member(ckpt, archive_path, dest)
    print(f"checkpoint ready: {target}")
    return target


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("language", help="a language of the CSV: en ca de es fr it pl ru zh")
    parser.add_argument("dest", type=Path, help="folder for the archive and the checkpoint")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="checkpoint sources")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    checkpoints = read_csv(args.csv)
    if args.language not in checkpoints:
        print(
            f"error: unknown language {args.language!r}: use one of {' '.join(checkpoints)}",
            file=sys.stderr,
        )
        return 2
    try:
        fetch(checkpoints[args.language], args.dest, progress=args.progress)
    except (DownloadError, ChecksumError, UnsafeArchiveError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
