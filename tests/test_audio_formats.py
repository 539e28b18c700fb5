"""Compressed input formats: MP3, Opus and M4A (AAC) read like WAV and FLAC (issue "Transcription
where users are").

A 48 kHz stereo WAV made from data/audio/goforward.wav is encoded here with PyAV (the FFmpeg that
its wheel bundles) and transcribed by jasper.transcribe with the reference small model. That model
is not trained on speech: its two best classes are within a codec's noise of each other on many
frames, so a lossy codec changes some argmax frames (a trained model would not notice). The bounds
below are the character error rates against the WAV's transcript, measured with av 18.1.0 (its
bundled FFmpeg, libavcodec 62.28) and rounded up: MP3 320 kbit/s 0.000 (bound 0.05), Opus
256 kbit/s 0.097 (bound 0.15), AAC 256 kbit/s in M4A 0.115 (bound 0.15). The decoded audio itself
is checked against the WAV's: sample-aligned (the encoders' delay is dropped), the same length
(AAC: up to one 1024-sample frame more, the encoder's padding of the last frame).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from common.audio import AudioLoadError, load_audio
from common.metrics import char_error_rate
from jasper.transcribe import AUDIO_EXTENSIONS, Transcriber, audio_files
from tests.conftest import AUDIO, REFERENCE

av = pytest.importorskip("av", reason="PyAV (requirements.txt) decodes MP3, M4A and Opus")

SMALL = REFERENCE / "small_model"
RATE = 48000  # Hz: the WAV's rate, which the codecs keep (Opus has no other)
CER_BOUND = {"mp3": 0.05, "opus": 0.15, "m4a": 0.15}  # measured 0.000, 0.097, 0.115: docstring
SNR_BOUND = {"mp3": 60.0, "opus": 20.0, "m4a": 40.0}  # dB; measured 66.1, 24.4, 43.5
AAC_FRAME = 1024 * 16000 // RATE + 1  # one AAC frame, in samples at 16 kHz
CODECS = {  # extension: (PyAV codec, container format, bit rate)
    "mp3": ("libmp3lame", "mp3", 320_000),
    "opus": ("libopus", "ogg", 256_000),
    "m4a": ("aac", "ipod", 256_000),
}


def encode(source, target, codec: str, container: str, bit_rate: int) -> None:
    """``source`` (any file FFmpeg reads) re-encoded to ``target`` with PyAV, stereo at RATE."""
    with av.open(str(source)) as inp, av.open(str(target), "w", format=container) as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.layout, stream.bit_rate = "stereo", bit_rate
        convert = av.AudioResampler(format=stream.format, layout="stereo", rate=RATE)
        frames = [f for frame in inp.decode(audio=0) for f in convert.resample(frame)]
        for frame in [*frames, *convert.resample(None), None]:
            for packet in stream.encode(frame):
                out.mux(packet)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict:
    """``{"wav" | "mp3" | "opus" | "m4a": path}``: goforward.wav as a 48 kHz stereo WAV (the
    right channel at 0.8 of the left) and that WAV encoded to each format."""
    folder = tmp_path_factory.mktemp("formats")
    mono, rate = sf.read(AUDIO / "goforward.wav", dtype="float32")
    resampled = soxr.resample(mono, rate, RATE)
    paths = {"wav": folder / "goforward.wav"}
    sf.write(paths["wav"], np.stack([resampled, 0.8 * resampled], axis=1), RATE, "PCM_16")
    for ext, (codec, container, bit_rate) in CODECS.items():
        paths[ext] = folder / f"goforward.{ext}"
        encode(paths["wav"], paths[ext], codec, container, bit_rate)
    return paths


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber.from_checkpoint(SMALL / "checkpoint.pt", SMALL / "config.yaml", device="cpu")


def _lag(reference: np.ndarray, other: np.ndarray) -> int:
    """Samples by which ``other`` is late against ``reference`` (cross-correlation peak)."""
    n = reference.size + other.size
    corr = np.fft.irfft(np.fft.rfft(other, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(corr))
    return lag - n if lag > n // 2 else lag


@pytest.mark.parametrize("ext", ["mp3", "opus", "m4a"])
def test_compressed_audio_decodes_to_the_wav_samples(recordings, ext):
    """16 kHz mono like the WAV: no delay, the same length, the same signal up to the codec's
    noise (Opus cuts the recording's rumble below ~50 Hz, hence its lower SNR)."""
    wav = load_audio(recordings["wav"])
    decoded = load_audio(recordings[ext])
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert wav.size <= decoded.size <= wav.size + (AAC_FRAME if ext == "m4a" else 0)
    decoded = decoded[: wav.size]
    assert _lag(wav, decoded) == 0
    snr = 10 * np.log10(np.sum(wav**2) / np.sum((wav - decoded) ** 2))
    assert snr > SNR_BOUND[ext], snr


@pytest.mark.parametrize("ext", ["mp3", "opus", "m4a"])
def test_compressed_audio_transcribes_like_the_wav(recordings, transcriber, ext):
    expected = transcriber.transcribe_file(recordings["wav"]).text
    result = transcriber.transcribe_file(recordings[ext])
    cer, _, _ = char_error_rate([result.text], [expected])
    assert cer <= CER_BOUND[ext], (cer, result.text, expected)


def test_a_misnamed_file_is_decoded_by_what_it_holds(recordings, tmp_path):
    """M4A (AAC) data in a .wav: libsndfile cannot read it, FFmpeg does."""
    misnamed = tmp_path / "actually_aac.wav"
    misnamed.write_bytes(recordings["m4a"].read_bytes())
    np.testing.assert_array_equal(load_audio(misnamed), load_audio(recordings["m4a"]))


def test_offset_and_duration_cut_compressed_audio_like_wav(recordings):
    whole = load_audio(recordings["mp3"])
    part = load_audio(recordings["mp3"], offset=0.5, duration=1.0)
    assert part.size == 16000
    # Resampling the cut at its edges differs from resampling the whole: compare the inside.
    np.testing.assert_allclose(part[100:-100], whole[8100:23900], atol=2e-3)


def test_folders_list_every_audio_format(recordings, tmp_path):
    """An MP3 in a folder used to be skipped silently."""
    for ext in ("mp3", "opus", "m4a"):
        (tmp_path / f"a.{ext}").write_bytes(recordings[ext].read_bytes())
    (tmp_path / "B.MP3").write_bytes(recordings["mp3"].read_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.aac").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not audio")
    names = [p.relative_to(tmp_path).as_posix() for p in audio_files([tmp_path])]
    assert names == ["B.MP3", "a.m4a", "a.mp3", "a.opus", "sub/c.aac"]
    assert {".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac"} <= set(AUDIO_EXTENSIONS)


@pytest.mark.parametrize("name", ["corrupt.mp3", "corrupt.m4a", "corrupt.opus", "corrupt.wav"])
def test_an_undecodable_file_raises_audio_load_error_naming_it(tmp_path, transcriber, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    with pytest.raises(AudioLoadError, match=rf"{name}.*re-encode it"):
        load_audio(path)
    with pytest.raises(AudioLoadError, match=name):
        transcriber.transcribe_file(path)


def test_a_file_without_audio_raises_audio_load_error(tmp_path):
    """A video-only MP4 named .m4a: decodable, but nothing to hear."""
    path = tmp_path / "video.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        black = np.zeros((32, 32, 3), np.uint8)
        for frame in [av.VideoFrame.from_ndarray(black, format="rgb24")] * 3 + [None]:
            for packet in stream.encode(frame):
                out.mux(packet)
    with pytest.raises(AudioLoadError, match="video.m4a holds no audio stream"):
        load_audio(path)
