"""FLAC -> WAV conversion and manifests (utils/convert_librispeech.py via the launcher).

A LibriSpeech-layout mini corpus is written to tmp_path: tones and noise as 16 kHz FLAC, one file
at 22.05 kHz, one corrupt FLAC, and a transcript with digits and punctuation.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO, run_launcher
from tests.conftest import SAMPLE_RATE as SR

ENTRY_KEYS = ["transcript", "files", "original_duration", "original_num_samples"]
# The file keys in the order upstream's utils/preprocessing_utils.py writes them: pysox's
# file_info.info(), then fname and speed.
FILE_KEYS = [
    "channels",
    "sample_rate",
    "bitdepth",
    "bitrate",
    "duration",
    "num_samples",
    "encoding",
    "silent",
    "fname",
    "speed",
]

# split -> speaker/chapter -> [(utt suffix, source rate, seconds or None for corrupt, transcript)]
CORPUS = {
    "train-clean-100": {
        ("19", "198"): [
            ("0000", 16000, 1.0, "HELLO WORLD"),
            ("0001", 22050, 0.7, "IT COST 5 DOLLARS, OR 10%! OK?  "),
            ("0002", 16000, None, "THIS ONE IS CORRUPT"),
        ],
        ("26", "495"): [("0000", 16000, 0.5, "QUIET NOISE")],
    },
    "dev-clean": {("84", "121123"): [("0000", 16000, 0.8, "DEV UTTERANCE")]},
}


def make_librispeech(data_dir: Path) -> dict[str, dict]:
    """Writes CORPUS; returns utt_id -> {"samples": source length, "sr": rate, "split": ...}."""
    rng = np.random.default_rng(0)
    utts = {}
    for split, chapters in CORPUS.items():
        for (speaker, chapter), lines in chapters.items():
            folder = data_dir / split / speaker / chapter
            folder.mkdir(parents=True)
            trans = []
            for suffix, sr, seconds, text in lines:
                utt = f"{speaker}-{chapter}-{suffix}"
                trans.append(f"{utt} {text}\n")
                if seconds is None:
                    (folder / f"{utt}.flac").write_bytes(b"this is not a flac file" * 50)
                    continue
                n = int(seconds * sr)
                t = np.arange(n) / sr
                audio = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
                sf.write(folder / f"{utt}.flac", audio.astype(np.float32), sr, subtype="PCM_16")
                utts[utt] = {"samples": n, "sr": sr, "split": split, "text": text}
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(trans))
    return utts


def run_preprocess(data_dir: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {"DATA_DIR": str(data_dir), "NUM_JOBS": "2", **env_vars}
    return run_launcher(
        "preprocess_librispeech.sh", *args, env=env, unset=("SPEEDS", "SPLITS"), timeout=120
    )


def load_manifest(data_dir: Path, split: str) -> list[dict]:
    return json.loads((data_dir / f"librispeech-{split}-wav.json").read_text())


def wav_state(data_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(data_dir.glob("*-wav/**/*.wav"))}


@pytest.fixture
def corpus(tmp_path):
    data_dir = tmp_path / "LibriSpeech"
    return data_dir, make_librispeech(data_dir)


def test_convert_writes_wavs_and_upstream_manifest_and_is_idempotent(corpus):
    data_dir, utts = corpus
    result = run_preprocess(data_dir)
    output = result.stdout + result.stderr

    # Absent splits are skipped with a notice; the command is echoed.
    assert "skipping test-other" in output
    assert "utils/convert_librispeech.py --input_dir" in output

    # The corrupt file is reported with its path and reason, counted, and left out.
    corrupt = data_dir / "train-clean-100" / "19" / "198" / "19-198-0002.flac"
    assert f"ERROR: left out of the manifest: cannot read audio file {corrupt}" in output
    assert "1 of 4 utterances had unreadable audio" in output

    for split in CORPUS:
        manifest = load_manifest(data_dir, split)
        expected = [u for u, info in utts.items() if info["split"] == split]
        assert [Path(e["files"][-1]["fname"]).stem for e in manifest] == expected
        for entry in manifest:
            assert list(entry) == ENTRY_KEYS
            (file,) = entry["files"]
            assert list(file) == FILE_KEYS
            utt = Path(file["fname"]).stem
            src = utts[utt]
            assert entry["transcript"] == src["text"].lower().strip()
            speaker, chapter, _ = utt.split("-")
            assert file["fname"] == f"{split}-wav/{speaker}/{chapter}/{utt}.wav"  # rel. to DATA_DIR
            assert file["speed"] == 1 and isinstance(file["speed"], int)
            assert file["sample_rate"] == 16000.0 and isinstance(file["sample_rate"], float)
            assert (file["channels"], file["bitdepth"]) == (1, 16)
            assert file["bitrate"] == 256000.0 and isinstance(file["bitrate"], float)
            assert file["encoding"] == "Signed Integer PCM" and file["silent"] is False

            wav = data_dir / file["fname"]
            info = sf.info(str(wav))
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert info.frames == file["num_samples"] == entry["original_num_samples"]
            expected_n = src["samples"] * SR / src["sr"]
            assert abs(file["num_samples"] - expected_n) <= 1
            assert file["duration"] == entry["original_duration"] == file["num_samples"] / SR
            if src["sr"] == SR:  # 16-bit FLAC at 16 kHz -> WAV is lossless
                flac = data_dir / split / Path(file["fname"]).relative_to(f"{split}-wav")
                flac_pcm, _ = sf.read(str(flac.with_suffix(".flac")), dtype="int16")
                np.testing.assert_array_equal(sf.read(str(wav), dtype="int16")[0], flac_pcm)
    assert not list(data_dir.rglob("19-198-0002*.wav"))
    assert "it cost 5 dollars, or 10%! ok?" in [
        e["transcript"] for e in load_manifest(data_dir, "train-clean-100")
    ]

    # A second run reuses every WAV and writes the same manifest bytes.
    manifests = {p: p.read_bytes() for p in data_dir.glob("*.json")}
    wavs = wav_state(data_dir)
    run_preprocess(data_dir)
    assert {p: p.read_bytes() for p in data_dir.glob("*.json")} == manifests
    assert wav_state(data_dir) == wavs

    # A truncated WAV (say, from a tool that does not write atomically) is detected and rewritten.
    victim = data_dir / "train-clean-100-wav" / "26" / "495" / "26-495-0000.wav"
    victim.write_bytes(victim.read_bytes()[:30])
    run_preprocess(data_dir)
    assert {p: p.read_bytes() for p in data_dir.glob("*.json")} == manifests
    assert not list(data_dir.rglob(".*.tmp"))


@pytest.mark.parametrize("how", ["env", "arg"])
def test_speed_perturbation_for_train_splits_only(corpus, how):
    data_dir, _ = corpus
    if how == "env":
        run_preprocess(data_dir, SPEEDS="0.9 1.1", SPLITS="train-clean-100 dev-clean")
    else:  # upstream's positional form; it wins over the variable
        run_preprocess(data_dir, "0.9 1.1", SPEEDS="0.8", SPLITS="train-clean-100 dev-clean")

    for entry in load_manifest(data_dir, "train-clean-100"):
        files = entry["files"]
        assert [f["speed"] for f in files] == [0.9, 1.1, 1]
        assert isinstance(files[-1]["speed"], int)
        original = files[-1]
        assert entry["original_num_samples"] == original["num_samples"]
        utt = Path(original["fname"]).stem
        for f in files[:2]:
            assert f["fname"] == original["fname"].replace(".wav", f"-{f['speed']}.wav")
            wav = data_dir / f["fname"]
            assert sf.info(str(wav)).frames == f["num_samples"]
            # sox "speed s": s times faster, duration / s.
            assert abs(f["duration"] - original["duration"] / f["speed"]) < 0.003, utt
    assert not list(data_dir.rglob("*-0.8.wav"))

    (dev,) = load_manifest(data_dir, "dev-clean")
    assert [f["speed"] for f in dev["files"]] == [1]
    assert sorted(p.name for p in (data_dir / "dev-clean-wav").rglob("*.wav")) == [
        "84-121123-0000.wav"
    ]


def test_no_split_found_is_an_error(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "nothing")}
    result = subprocess.run(
        ["bash", "scripts/preprocess_librispeech.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "none of the splits" in result.stderr


def test_speed_files_match_sox_speed_semantics(tmp_path):
    """A 400 Hz tone at speed 1.25 becomes a 500 Hz tone lasting 1/1.25 as long."""
    from utils.convert_librispeech import convert

    folder = tmp_path / "train-x" / "1" / "2"
    folder.mkdir(parents=True)
    t = np.arange(SR) / SR
    sf.write(folder / "1-2-0000.flac", 0.5 * np.sin(2 * np.pi * 400 * t), SR, subtype="PCM_16")
    (folder / "1-2.trans.txt").write_text("1-2-0000 A TONE\n")
    written, errors = convert(
        tmp_path / "train-x",
        tmp_path / "train-x-wav",
        tmp_path / "m.json",
        speeds=(1.25,),
        progress=False,
    )
    assert (written, errors) == (1, [])
    fast, _ = sf.read(str(tmp_path / "train-x-wav" / "1" / "2" / "1-2-0000-1.25.wav"))
    assert abs(len(fast) - SR / 1.25) <= 1
    spectrum = np.abs(np.fft.rfft(fast * np.hanning(len(fast))))
    assert abs(np.argmax(spectrum) * SR / len(fast) - 500) < 2
