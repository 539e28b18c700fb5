"""Streaming transcription with bounded latency: buffered CTC over a sliding window of audio.

Audio arrives in pieces of any size (:meth:`StreamingTranscriber.feed`). It is cut into chunks of
``chunk_seconds``; each chunk runs through the model inside a buffer ``[left | chunk | right]``
and only the chunk's encoder frames are kept (NeMo's buffered CTC inference, ``FrameBatchASR`` in
``examples/asr/asr_chunked_inference``, with the two contexts set apart). The kept frames of
consecutive chunks tile the stream exactly, so the per-frame argmax ids are concatenated and
collapsed across chunk boundaries as one sequence (a letter repeated over a boundary merges, as
it would in the whole-file path): no word is duplicated or lost at a boundary.

Latency. The frames of a chunk are final once ``right_seconds`` of audio past the chunk's end has
arrived (plus :data:`jasper.transcribe.STFT_MARGIN_FRAMES`, 30 ms, for the last feature frames'
windows) and the model has run: a letter is final at most ``chunk + right + 0.03 s`` of audio
after it was spoken, plus the compute time of one step. A word is emitted when the word separator
after it is final (CTC emits it one or a few frames after the word's last letter); the partial word
is :attr:`StreamingTranscriber.partial`. The first output waits for ``warmup_seconds`` of audio.

Accuracy. Streaming cannot be exact: an encoder frame sees ``receptive_field`` frames each side
(Jasper 10x5: 8.8 s, QuartzNet 15x5: 40 s) while the buffer gives it ``left`` and ``right``
seconds, zero-padded beyond; and per-feature normalisation uses whole-recording statistics in the
offline model. Here the log-mel frames are those of the whole recording (each computed from a slice
with 30 ms of margin, as :class:`jasper.transcribe.Transcriber` does) and are normalised with

- ``statistics=(mean, std)``: fixed statistics (e.g. of a calibration recording), or
- running statistics of all audio received so far (``stats_seconds=None``), or of the last
  ``stats_seconds`` only (a look-back window).

Running statistics settle as audio accumulates; ``warmup_seconds`` holds the first output back until
they rest on that much audio. ``bench/streaming_table.py`` measures what each choice costs
(docs/streaming.md). Unlike :meth:`Transcriber.load`, a stream is never trimmed of silence: its end
is not known in advance.

Sources of audio (1-D float32 arrays at the model's rate, in [-1, 1]): :func:`file_chunks`
(a file played as a stream), :func:`pcm16_chunks` (raw 16-bit little-endian mono PCM, e.g. standard
input) and :func:`microphone_chunks` (through ``sounddevice``, an optional dependency).

Frame legend: F = mel bins, T = 10 ms feature frames, T_enc = encoder frames (20 ms), K = classes.
"Padded" frame positions count the ``pad_leading`` zero frames put in front of the stream, as the
offline path does; encoder frame ``e`` covers audio from ``(e * stride - pad_leading) * 10 ms``.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from common.audio import load_audio
from common.features import FilterbankFeatures, normalize_with
from jasper import config
from jasper.decoding import Word
from jasper.transcribe import STFT_MARGIN_FRAMES, receptive_field

SEPARATOR = " "  # the label between words


class MicrophoneUnavailableError(RuntimeError):
    """``sounddevice`` (or the audio system it needs) is missing; the message says what to do."""


class StreamingTranscriber:
    """Greedy CTC transcription of a stream, chunk by chunk, with left and right context.

    Args:
        model: a :class:`jasper.model.Jasper` or a prepared :class:`jasper.prepare.InferenceModel`
            (on ``device``, eval mode).
        cfg: the model's config (labels and the ``input_val`` front end).
        device: where features and the model run.
        chunk_seconds: audio whose outputs one model step keeps (rounded to 20 ms).
        left_seconds: audio before the chunk that the model sees (rounded to 20 ms).
        right_seconds: audio after the chunk that the model sees; adds to the latency.
        warmup_seconds: audio to receive before the first step (running statistics settle).
        stats_seconds: normalise with the statistics of the last ``stats_seconds`` of audio
            received; None: of all audio received so far.
        statistics: fixed ``(mean, std)`` of the un-normalised log-mel, per feature ``(F,)`` or
            scalars, used instead of running statistics.
        pad_leading: zero feature frames put in front of the stream (as ``inference.py``).

    ``feed(samples)`` returns the words that became final, ``finish()`` the rest; ``words``,
    ``partial`` and ``text`` tell what is final so far.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: dict,
        device: torch.device | str = "cpu",
        *,
        chunk_seconds: float = 1.0,
        left_seconds: float = 2.0,
        right_seconds: float = 1.0,
        warmup_seconds: float = 2.0,
        stats_seconds: float | None = None,
        statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
        pad_leading: int = 16,
    ) -> None:
        if chunk_seconds <= 0 or left_seconds < 0 or right_seconds < 0 or warmup_seconds < 0:
            raise ValueError(
                "chunk_seconds must be > 0 and left_seconds, right_seconds, warmup_seconds >= 0"
            )
        if stats_seconds is not None and stats_seconds <= 0:
            raise ValueError(f"stats_seconds={stats_seconds}: must be > 0 (or None: all audio)")
        self.model = model
        self.labels = list(cfg["labels"])
        self.blank = len(self.labels)
        self.separator = self.labels.index(SEPARATOR) if SEPARATOR in self.labels else None
        self.device = torch.device(device)
        self.pad_leading = pad_leading
        dataset_kw, features_kw = config.input(cfg, "val")
        self.sample_rate = int(dataset_kw["sample_rate"])
        self.log_mel = (
            FilterbankFeatures(**{**features_kw, "normalize": "none"}).eval().to(self.device)
        )
        self.normalize = features_kw.get("normalize", "per_feature")
        self.hop = self.log_mel.hop_length
        frames_per_second = self.sample_rate / self.hop
        _, self.stride = receptive_field(model)

        def frames(seconds: float, at_least: int = 0) -> int:
            """Seconds as feature frames, a multiple of the stride (encoder frames align)."""
            return max(at_least, self.stride * round(seconds * frames_per_second / self.stride))

        self.chunk = frames(chunk_seconds, at_least=self.stride)
        self.left = frames(left_seconds)
        self.right = frames(right_seconds)
        self.warmup = round(warmup_seconds * frames_per_second)
        self.stats_window = (
            None if stats_seconds is None else round(stats_seconds * frames_per_second)
        )
        self.fixed = None
        if statistics is not None:
            mean, std = (
                torch.as_tensor(s, dtype=torch.float64).to(self.device) for s in statistics
            )
            self.fixed = (mean.reshape(-1, 1), std.reshape(-1, 1))
        self.frame_seconds = self.stride * self.hop / self.sample_rate  # one encoder frame: 20 ms

        # Audio: samples from absolute index ``audio_start`` on (those the next log-mel needs).
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0
        self._received = 0
        # Un-normalised log-mel of audio frames [mel_start, mel_start + mel.size(1)).
        self._mel = torch.zeros(self.log_mel.n_filt, 0, device=self.device)
        self._mel_start = 0
        n = self.log_mel.n_filt
        self._sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._squares = torch.zeros_like(self._sum)
        self._next = 0  # padded frame where the next chunk starts (a multiple of the stride)
        self._previous = self.blank  # the class of the last decoded encoder frame
        # The open word: [class id, first frame, last frame, highest posterior] per letter.
        self._letters: list[list] = []
        self.words: list[Word] = []
        self.finished = False

    # ----------------------------------------------------------------------------------------
    # Public interface

    @property
    def latency_seconds(self) -> float:
        """Audio that arrives after a frame before its output is final (compute time aside)."""
        return (self.chunk + self.right + STFT_MARGIN_FRAMES) * self.hop / self.sample_rate

    @property
    def partial(self) -> str:
        """The final letters of the word in progress (no separator after them yet)."""
        return "".join(self.labels[letter[0]] for letter in self._letters)

    @property
    def text(self) -> str:
        """Everything final so far, words separated by single spaces."""
        return " ".join([w.word for w in self.words] + ([self.partial] if self._letters else []))

    @property
    def seconds_received(self) -> float:
        return self._received / self.sample_rate

    @property
    def final_seconds(self) -> float:
        """How far into the stream the output is final (seconds of audio)."""
        return max(0, self._next - self.pad_leading) * self.hop / self.sample_rate

    def feed(self, samples: np.ndarray) -> list[Word]:
        """Add audio (1-D float32 at the model's rate, in [-1, 1]); the words that became final."""
        if self.finished:
            raise RuntimeError("the stream is finished: start a new StreamingTranscriber")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._audio = np.concatenate([self._audio, samples])
        self._received += samples.size
        self._extend_log_mel(final=False)
        return self._run_chunks(final=False)

    def finish(self) -> list[Word]:
        """End of the stream: run what is left and close the last word; the words this adds."""
        if self.finished:
            return []
        self._extend_log_mel(final=True)
        new = self._run_chunks(final=True)
        self.finished = True
        word = self._close_word()
        return new + ([word] if word else [])

    # ----------------------------------------------------------------------------------------
    # Features

    def _audio_frames(self, final: bool) -> int:
        """Log-mel frames that the audio received so far determines: all valid frames at the end
        of the stream, else those whose window and margin lie inside the received audio."""
        if final:
            return int(self.log_mel.feature_lengths(torch.tensor([self._received])))
        return max(0, self._received // self.hop - STFT_MARGIN_FRAMES)

    def _extend_log_mel(self, final: bool) -> None:
        """Compute the newly determined log-mel frames, as the whole recording's would be: from a
        slice of audio with :data:`STFT_MARGIN_FRAMES` of margin (jasper.transcribe)."""
        start = self._mel_start + self._mel.size(1)
        stop = self._audio_frames(final)
        if stop <= start:
            return
        lo = max(0, start - STFT_MARGIN_FRAMES)
        first = lo * self.hop - self._audio_start
        piece = self._audio[first : (stop + STFT_MARGIN_FRAMES) * self.hop - self._audio_start]
        if piece.size <= self.log_mel.n_fft // 2:
            return  # a whole stream shorter than one window's reflect padding (16 ms): no frame
        audio = torch.from_numpy(piece).to(self.device)
        x, _ = self.log_mel.compute(audio[None], torch.tensor([audio.numel()]))
        x = x[0, :, start - lo : stop - lo]
        self._mel = torch.cat([self._mel, x], dim=1)
        x = x.double()
        self._sum += x.sum(dim=1)
        self._squares += (x * x).sum(dim=1)
        # The next slice starts STFT_MARGIN_FRAMES before the next frame.
        keep_from = max(0, stop - STFT_MARGIN_FRAMES) * self.hop
        self._audio = self._audio[keep_from - self._audio_start :]
        self._audio_start = keep_from

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (F, 1), float64, of the log-mel received so far (or of its last window),
        per feature or over all features as the config normalises; the unbiased std."""
        if self.stats_window is None:
            total, squares = self._sum, self._squares
            count = self._mel_start + self._mel.size(1)
        else:
            x = self._mel[:, -self.stats_window :].double()
            total, squares, count = x.sum(dim=1), (x * x).sum(dim=1), x.size(1)
        if self.normalize == "all_features":
            total, squares = total.sum().expand_as(total), squares.sum().expand_as(squares)
            count *= total.numel()
        mean = total / max(count, 1)
        var = (squares - count * mean * mean) / max(count - 1, 1)
        return mean[:, None], var.clamp(min=0).sqrt()[:, None]

    def _features(self, lo: int, hi: int) -> torch.Tensor:
        """Normalised features (F, hi - lo) of padded frames [lo, hi): leading zeros, then audio."""
        a_lo, a_hi = max(lo - self.pad_leading, 0), hi - self.pad_leading
        x = self._mel[:, a_lo - self._mel_start : a_hi - self._mel_start]
        if self.normalize != "none":
            mean, std = self.fixed if self.fixed is not None else self._statistics()
            x = normalize_with(x.double(), mean, std).float()
        return nn.functional.pad(x, (max(self.pad_leading - lo, 0), 0))

    # ----------------------------------------------------------------------------------------
    # Model steps and decoding

    @torch.inference_mode()
    def _run_chunks(self, final: bool) -> list[Word]:
        """Run every chunk whose right context has arrived (at the end: every chunk left)."""
        received = self._mel_start + self._mel.size(1)  # audio frames
        if received == 0 or (not final and received < self.warmup):
            return []  # nothing to say yet (an empty stream says nothing at all)
        available = self.pad_leading + received  # padded frames
        words = []
        while self._next < available:
            start = self._next
            stop = start + self.chunk
            if not final and stop + self.right > available:
                break
            stop = min(stop, available)
            lo, hi = max(0, start - self.left), min(available, stop + self.right)
            x = self._features(lo, hi)
            lens = torch.tensor([x.size(1)], device=self.device)
            log_probs, _ = self.model(x[None], lens)
            first = (start - lo) // self.stride
            count = math.ceil(stop / self.stride) - start // self.stride
            best, ids = log_probs[0, first : first + count].float().max(dim=-1)
            words += self._collapse(ids.tolist(), best.exp().tolist(), start // self.stride)
            self._next = stop
        self._forget(available)
        return words

    def _forget(self, available: int) -> None:
        """Drop log-mel frames that neither a next buffer nor the statistics window needs."""
        keep = self._next - self.left - self.pad_leading
        if self.stats_window is not None:
            keep = min(keep, available - self.pad_leading - self.stats_window)
        drop = max(0, keep - self._mel_start)
        if drop:
            self._mel = self._mel[:, drop:]
            self._mel_start += drop

    def _collapse(
        self, ids: Sequence[int], posteriors: Sequence[float], first_frame: int
    ) -> list[Word]:
        """CTC collapse of encoder frames ``first_frame, ...`` continuing the previous ones
        (upstream's rule, :func:`common.metrics.ctc_collapse`); the words a separator closes.
        ``posteriors``: each frame's probability of its class (word confidences, as
        :func:`jasper.decoding.words_from_path` computes them)."""
        words = []
        for t, (token, posterior) in enumerate(zip(ids, posteriors, strict=True), first_frame):
            emitted = token != self.blank and (
                token != self._previous or self._previous == self.blank
            )
            if token == self.separator:
                if emitted:
                    word = self._close_word()
                    if word:
                        words.append(word)
            elif emitted:
                self._letters.append([token, t, t, posterior])
            elif token != self.blank and self._letters:  # the same letter, one frame longer
                self._letters[-1][2] = t
                self._letters[-1][3] = max(self._letters[-1][3], posterior)
            self._previous = token
        return words

    def _close_word(self) -> Word | None:
        if not self._letters:
            return None
        offset = self.pad_leading / self.stride  # encoder frames of leading padding

        def seconds(frame: float) -> float:
            return round(max(frame - offset, 0.0) * self.frame_seconds, 3)

        confidence = round(min(letter[3] for letter in self._letters), 4)
        word = Word(
            self.partial,
            seconds(self._letters[0][1]),
            seconds(self._letters[-1][2] + 1),
            confidence,
        )
        self._letters = []
        self.words.append(word)
        return word


def transcribe_stream(
    streamer: StreamingTranscriber, chunks: Iterable[np.ndarray]
) -> Iterator[Word]:
    """Feed every chunk, then finish; the words in the order they become final."""
    for chunk in chunks:
        yield from streamer.feed(chunk)
    yield from streamer.finish()


# --------------------------------------------------------------------------------------------
# Sources: iterators of 1-D float32 sample blocks


def file_chunks(
    path: str | Path,
    sample_rate: int,
    block_seconds: float = 0.1,
    *,
    realtime: bool = False,
) -> Iterator[np.ndarray]:
    """A file played as a stream: blocks of ``block_seconds`` of its samples (mono, resampled to
    ``sample_rate``, not trimmed); with ``realtime``, each block no sooner than it would be heard.

    Raises:
        common.audio.AudioLoadError: the file is missing or unreadable.
    """
    samples = load_audio(path, target_sr=sample_rate)
    block = max(1, round(block_seconds * sample_rate))
    began = time.monotonic()
    for start in range(0, samples.size, block):
        if realtime:
            time.sleep(max(0.0, began + (start + block) / sample_rate - time.monotonic()))
        yield samples[start : start + block]


def pcm16_chunks(
    stream: BinaryIO, sample_rate: int, block_seconds: float = 0.1
) -> Iterator[np.ndarray]:
    """Blocks of raw 16-bit little-endian mono PCM read from a binary stream (e.g.
    ``sys.stdin.buffer``), as float32 in [-1, 1), until the stream ends. The stream's rate must be
    ``sample_rate`` (there is no header to tell). A last odd byte is dropped."""
    block_bytes = 2 * max(1, round(block_seconds * sample_rate))
    leftover = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            return
        data = leftover + data
        usable = len(data) - len(data) % 2
        leftover = data[usable:]
        if usable:
            yield np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0


def microphone_chunks(
    sample_rate: int, block_seconds: float = 0.1, device: int | str | None = None
) -> Iterator[np.ndarray]:
    """Blocks recorded from a microphone (mono, at ``sample_rate``) until the caller stops
    iterating (e.g. on Ctrl-C). The microphone opens here, before the first block is asked for.

    Raises:
        MicrophoneUnavailableError: ``sounddevice`` is not installed, or PortAudio (the audio
            library it runs on) or the input device is missing.
    """
    try:
        import sounddevice
    except ImportError as e:
        raise MicrophoneUnavailableError(
            "recording from a microphone needs the sounddevice package: pip install sounddevice"
        ) from e
    except OSError as e:  # sounddevice is there but the PortAudio library is not
        raise MicrophoneUnavailableError(
            f"sounddevice cannot load PortAudio ({e}): install it, e.g. apt-get install "
            "libportaudio2"
        ) from e
    blocks: queue.Queue[np.ndarray] = queue.Queue()

    def on_block(data: np.ndarray, frames: int, time_info, status) -> None:
        blocks.put(data[:, 0].copy())  # PortAudio's thread: hand the block over, nothing more

    try:
        stream = sounddevice.InputStream(
            samplerate=sample_rate,
            blocksize=max(1, round(block_seconds * sample_rate)),
            channels=1,
            dtype="float32",
            device=device,
            callback=on_block,
        )
        stream.start()
    except sounddevice.PortAudioError as e:
        raise MicrophoneUnavailableError(f"cannot open the microphone: {e}") from e

    def record() -> Iterator[np.ndarray]:
        try:
            while True:
                yield blocks.get()
        finally:
            stream.stop()
            stream.close()

    return record()


__all__ = [
    "MicrophoneUnavailableError",
    "StreamingTranscriber",
    "file_chunks",
    "microphone_chunks",
    "pcm16_chunks",
    "transcribe_stream",
]
