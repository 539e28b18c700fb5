"""CTC inference and evaluation with a trained checkpoint (upstream inference.py): greedy or beam
search with an n-gram LM (``--decoder``, docs/decoding.md).

Inputs (one or more of):
- ``--val_manifests``: manifests (docs/upstream.md#manifests); WER is printed and logged. A
  manifest whose entries carry no transcript is transcribed all the same (predictions written,
  WER skipped with a note).
- ``--transcribe_wav FILE|DIR``: audio files (WAV/FLAC/OGG/Opus/MP3/M4A, any sample rate and channels);
  a directory means every audio file under it. Each file is read whole; long recordings run in
  overlapping chunks (``--chunk_seconds``) with the same result (``jasper.transcribe``). A file
  that cannot be decoded is named and skipped; the others go on (exit status 1).
- ``--transcribe_filelist LIST``: a text file with one audio path per line (relative paths are
  resolved against ``--dataset_dir``).
- ``--synthetic_duration SECONDS``: batches of noise of exactly that duration (latency benchmarks
  without data).

Outputs:
- ``--save_predictions PATH``: one line per utterance, ``<name>\\t<transcript>\\n``, where ``name``
  is the audio file as the manifest lists it (its speed-1.0 file, relative to ``--dataset_dir``)
  or the path as given. Order: the utterances of manifests with transcripts (in manifest order,
  after the config's duration filter), then the entries of manifests without, then
  ``--transcribe_wav`` files, then the file list.
- ``--save_logits PATH``: ``torch.save`` of ``{"names": [str], "log_probs": [Tensor (T_i, K)],
  "labels": [str], "blank": int, "pad_leading": int}`` with the log-probabilities (float32) of
  each utterance's valid encoder frames (lengths preserved, the leading padding's included), in
  the predictions' order. Load it with
  ``torch.load(PATH, weights_only=True)``; no code of this repository is needed.
- WER and latencies go to stdout and the JSON log (``--log_file``, default
  ``OUTPUT_DIR/nvlog_infer.json``); ``--latency_table PREFIX`` adds this run's latency row to
  ``PREFIX.json`` and ``PREFIX.md`` (``scripts/inference_benchmark.sh`` builds its sweep this way).

int8 on the CPU (``--int8 PATH``, docs/cpu_inference.md): the acoustic model runs from the ONNX
file ``python -m jasper.int8`` wrote (:class:`jasper.int8.Int8Model`, ONNX Runtime) instead of the
checkpoint's PyTorch network; the checkpoint still gives the config (labels, front end) and the
decoding settings. The speed options do not apply to it.

Fixed against upstream (docs/upstream.md#known-upstream-defects): multi-process evaluation works
(``torchrun``; every utterance is evaluated exactly once and the WER sums errors and words over
ranks, so it equals the single-process WER: U3, U24); ``--ema`` falls back to the raw weights with a
warning (U6); logits of variable-length utterances are saved (U2); CPU inference needs no CUDA and no
DALI (U5); latency keys match their declared names (U25).

Timing (``--steps N``; docs/upstream.md#inference-and-latency, :mod:`common.latency`): after
``--warmup_steps`` (plus the first step), each step records ``data`` (the loader's next batch: audio
reading and features), ``dnn`` (leading pad, network, argmax; device synchronised before and after)
and ``data+dnn``; the first 5 records are dropped, and the 90/95/99th percentiles and the mean are
reported in ms.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common import distributed, machine
from common.audio import AudioLoadError
from common.checkpoint import CheckpointError
from common.dali import DaliUnavailableError
from common.dataset import EvalSampler, ManifestError, MissingAudioError, read_manifests
from common.features import FilterbankFeatures
from common.latency import (
    Latencies,
    NotEnoughData,
    SyntheticBatches,
    full_batches,
    min_steps,
    update_table,
)
from common.loader import build_loader
from common.logger import Logger
from common.metrics import word_error_rate
from common.output_formats import FORMATS, write_outputs
from common.vad import VadUnavailableError, transcribe_with_vad
from jasper import config, decoding_settings
from jasper.decoding import (
    BeamDecoder,
    BeamSearchUnavailableError,
    GreedyDecoder,
    Hypothesis,
    Word,
    unpad,
)
from jasper.int8 import Int8Model, conv_geometry
from jasper.model import greedy_decode
from jasper.prepare import SpeedOptions, add_speed_arguments, prepare, speed_options
from jasper.streaming import StreamingTranscriber, file_chunks, transcribe_stream
from jasper.transcribe import Transcriber, add_checkpoint_arguments, audio_files, load_model

log = logging.getLogger("inference")


class InputError(ValueError):
    """The command line asks for something impossible; the message says what to change."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="CTC inference (greedy, or beam search with an n-gram LM), WER and latency "
        "with a Jasper/QuartzNet checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = add_checkpoint_arguments(p)
    m.add_argument(
        "--int8",
        default=None,
        metavar="PATH",
        help="run the acoustic model from this int8 ONNX file (python -m jasper.int8 writes it; "
        "CPU only, the speed options do not apply); --ckpt still gives the config and the "
        "decoding settings",
    )

    d = p.add_argument_group("inputs")
    d.add_argument("--val_manifests", nargs="+", default=[], help="manifests to evaluate")
    d.add_argument("--dataset_dir", default=".", help="folder the manifests' paths are relative to")
    d.add_argument(
        "--transcribe_wav",
        nargs="+",
        default=[],
        metavar="FILE|DIR",
        help="audio files or folders of audio files to transcribe",
    )
    d.add_argument("--transcribe_filelist", default=None, help="text file: one audio path per line")
    d.add_argument(
        "--synthetic_duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="benchmark on batches of noise of exactly this duration",
    )
    d.add_argument(
        "--dali_device",
        choices=("gpu", "cpu", "none"),
        default=None,
        help="manifest loader: DALI on gpu/cpu, or none (PyTorch); "
        "default: gpu on CUDA when DALI is installed, else none",
    )
    d.add_argument("--num_workers", type=int, default=4, help="DataLoader workers (PyTorch loader)")
    d.add_argument("--batch_size", type=int, default=64, help="utterances per batch (manifests)")
    d.add_argument(
        "--pad_leading",
        type=int,
        default=None,
        help="zero feature frames put in front of every utterance (default: the checkpoint's "
        "decoding settings, else upstream's 16)",
    )
    d.add_argument(
        "--chunk_seconds",
        type=float,
        default=60.0,
        help="audio files longer than this run in overlapping chunks",
    )
    d.add_argument(
        "--chunk_context_seconds",
        type=float,
        default=None,
        help="context on each side of a chunk (default: the receptive field: exact)",
    )

    d.add_argument(
        "--vad",
        action="store_true",
        help="audio files: cut at pauses found by voice activity detection (silero-vad) into "
        "segments of at most --vad_max_seconds, transcribed one by one (docs/streaming.md)",
    )
    d.add_argument("--vad_max_seconds", type=float, default=20.0, help="longest --vad segment")
    d.add_argument(
        "--stream",
        action="store_true",
        help="audio files: play each as a stream through the buffered streaming transcriber "
        "(what scripts/transcribe_stream.sh does; docs/streaming.md)",
    )
    d.add_argument("--stream_chunk", type=float, default=1.0, help="--stream: chunk seconds")
    d.add_argument("--stream_left", type=float, default=2.0, help="--stream: left context (s)")
    d.add_argument("--stream_right", type=float, default=1.0, help="--stream: right context (s)")

    r = p.add_argument_group("device and speed")
    r.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when available, else CPU",
    )
    r.add_argument(
        "--cpu",
        action="store_const",
        const="cpu",
        dest="device",
        help="same as --device cpu (upstream's flag)",
    )
    r.add_argument(
        "--local_rank",
        "--local-rank",
        type=int,
        default=int(os.environ.get("LOCAL_RANK", 0)),
        help="set by torchrun",
    )
    add_speed_arguments(r)
    r.add_argument("--seed", type=int, default=0, help="seed (synthetic audio, dither at eval)")

    b = p.add_argument_group("benchmark")
    b.add_argument(
        "--steps",
        type=int,
        default=0,
        help="if > 0: time this many batches, looping over the data (no WER)",
    )
    b.add_argument("--warmup_steps", type=int, default=0, help="untimed batches before --steps")
    b.add_argument(
        "--latency_table",
        default=None,
        metavar="PREFIX",
        help="add this run's latencies as a row of PREFIX.json and PREFIX.md",
    )

    g = p.add_argument_group("decoding (docs/decoding.md)")
    g.add_argument(
        "--decoder",
        choices=decoding_settings.DECODERS,
        default=None,
        help="greedy (upstream's) or CTC beam search (needs requirements-lm.txt). This and the "
        "four below default to the checkpoint's decoding settings (utils/tune_lm.py "
        "--checkpoint writes them), else greedy, 32, no LM, 0.5, 1.0",
    )
    g.add_argument("--beam_width", type=int, default=None, help="beam search: hypotheses kept")
    g.add_argument(
        "--lm",
        default=None,
        help="beam search: word n-gram LM (ARPA, .arpa.gz or KenLM binary); 'none': no LM",
    )
    g.add_argument("--lm_alpha", type=float, default=None, help="beam search: LM weight")
    g.add_argument("--lm_beta", type=float, default=None, help="beam search: word insertion bonus")
    g.add_argument(
        "--lexicon",
        default=None,
        help="beam search with an LM: word list (default: the LM's vocabulary)",
    )
    g.add_argument("--hotwords", nargs="*", default=[], help="beam search: words to favour")
    g.add_argument("--decoder_workers", type=int, default=4, help="beam search: decoding processes")

    o = p.add_argument_group("outputs")
    o.add_argument("-o", "--output_dir", default="results/", help="where the JSON log goes")
    o.add_argument(
        "--log_file", default=None, help="JSON log (default OUTPUT_DIR/nvlog_infer.json)"
    )
    o.add_argument(
        "--save_predictions",
        default=None,
        metavar="PATH",
        help="write '<name>\\t<transcript>' lines here",
    )
    o.add_argument(
        "--output_format",
        nargs="+",
        choices=FORMATS,
        default=["txt"],
        help="with --save_predictions PATH: txt is PATH itself ('<name>\\t<transcript>'); json, "
        "ctm go next to it (PATH without its suffix + .json/.ctm), srt and vtt in a folder of "
        "one file per recording (word times and confidences: docs/decoding.md)",
    )
    o.add_argument(
        "--save_logits",
        default=None,
        metavar="PATH",
        help="torch.save the per-utterance log-probs here (see the module docstring)",
    )
    return p


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Record:
    """One utterance's result. ``order`` sorts the gathered records into output order."""

    order: tuple[int, int]
    name: str
    hypothesis: str
    reference: str | None = None
    log_probs: torch.Tensor | None = None
    words: tuple[Word, ...] = ()

    @property
    def text(self) -> str:  # what common.output_formats reads
        return self.hypothesis


def check_inputs(args: argparse.Namespace) -> None:
    has_input = args.val_manifests or args.transcribe_wav or args.transcribe_filelist
    if not has_input and args.synthetic_duration is None:
        raise InputError(
            "nothing to do: give --val_manifests, --transcribe_wav, "
            "--transcribe_filelist or --synthetic_duration"
        )
    if has_input and args.synthetic_duration is not None:
        raise InputError("--synthetic_duration replaces the data: give no manifests or files")
    if args.steps > 0 and (args.transcribe_wav or args.transcribe_filelist):
        raise InputError("--steps times batches of manifests or synthetic audio, not audio files")
    if (args.vad or args.stream) and (args.decoder == "beam" or args.vad == args.stream):
        raise InputError("--vad and --stream are greedy, one at a time (not with --decoder beam)")
    if 0 < args.steps < min_steps(args.warmup_steps):
        raise InputError(
            f"--steps {args.steps} (NUM_STEPS) is too few to measure latencies: at least "
            f"{min_steps(args.warmup_steps)} with --warmup_steps {args.warmup_steps} (the first "
            "5 timed steps are dropped and the percentiles need 20 more)"
        )


def audio_name(path: Path, data_dir: str) -> str:
    """How predictions name an audio file: relative to the data folder when inside it."""
    return str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)


def split_manifests(
    manifests: list[str], data_dir: str, labels: list[str]
) -> tuple[list[str], list[tuple[str, Path]]]:
    """``(manifests for the data loader, [(name, audio path)] to transcribe whole)``.

    A manifest whose entries all carry a transcript is evaluated through the data loader (with
    the config's filters, and WER); one with entries lacking it is transcribed file by file, each
    entry's speed-1.0 file whole, and gets no WER."""
    labelled, files = [], []
    for manifest in manifests:
        utts = read_manifests(
            [manifest], data_dir, labels, min_duration=0.0, require_transcripts=False
        )
        missing = sum(u.transcript is None for u in utts)
        if not missing:
            labelled.append(manifest)
            continue
        log.warning(
            "note: %d of %d entries of %s have no transcript: its predictions are written, "
            "its WER is not computed",
            missing,
            len(utts),
            manifest,
        )
        for u in utts:
            if u.offset:
                raise ManifestError(
                    f"{manifest}: entry {u.index}: 'offset' entries need transcripts (they are "
                    "read by the data loader); add a transcript or cut the audio"
                )
            path = u.speed_one_file().path
            files.append((audio_name(path, data_dir), path))
    return labelled, files


def read_filelist(path: str, data_dir: str) -> list[tuple[str, Path]]:
    """``[(line, audio path)]``: relative paths are found in ``data_dir``, else as given."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            in_data = Path(data_dir) / line.strip()
            out.append((line.strip(), in_data if in_data.exists() else Path(line.strip())))
    return out


def build_batches(
    args: argparse.Namespace,
    cfg: dict,
    manifests: list[str],
    device: torch.device,
    rank: int,
    world_size: int,
):
    """``(loader, [(position, name)] of this rank's utterances in the loader's order)`` for the
    labelled manifests, or synthetic audio with ``--synthetic_duration``."""
    dataset_kw, features_kw = config.input(cfg, "val")
    if args.synthetic_duration is not None:
        features = FilterbankFeatures(**features_kw)
        loader = SyntheticBatches(
            features, args.batch_size, args.synthetic_duration, args.seed, device
        )
        return loader, loader.utterances
    loader = build_loader(
        manifests,
        cfg["labels"],
        dataset_kw,
        features_kw,
        dataset_dir=args.dataset_dir,
        batch_size=args.batch_size,
        train=False,
        device=device,
        backend=args.dali_device,
        world_size=world_size,
        rank=rank,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    utterances = [
        (u.index, audio_name(u.speed_one_file().path, args.dataset_dir))
        for u in loader.utterances()
    ]
    return loader, utterances


# --------------------------------------------------------------------------------------------
# Running


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_batches(
    model: nn.Module,
    loader,
    utterances: list[tuple[int, str]],
    args: argparse.Namespace,
    decoder: GreedyDecoder | BeamDecoder,
    device: torch.device,
) -> tuple[list[Record], Latencies]:
    """Run the network over the loader's batches; with ``--steps``, time them instead."""
    benchmark = args.steps > 0
    batches: Iterable = full_batches(loader, args.batch_size) if benchmark else loader
    total_steps = args.steps + args.warmup_steps if benchmark else None
    records: list[Record] = []
    latencies = Latencies()
    sync(device)
    t0 = time.perf_counter()
    for step, (feats, feat_lens, txt, txt_lens) in enumerate(batches):
        if total_steps is not None and step >= total_steps:
            break
        sync(device)
        t1 = time.perf_counter()
        if args.pad_leading:
            # Zero frames in front (zero is the feature mean): upstream's --pad_leading.
            feats = nn.functional.pad(feats, (args.pad_leading, 0))
            feat_lens = feat_lens + args.pad_leading
        log_probs, enc_lens = model(feats, feat_lens)
        ids = greedy_decode(log_probs, enc_lens)  # the argmax, timed as upstream times it
        sync(device)
        t2 = time.perf_counter()
        if step >= 1 and (not benchmark or step >= args.warmup_steps):
            latencies.add(t1 - t0, t2 - t1)
        if not benchmark:
            del ids
            hypotheses = decoder.decode_batch(unpad(log_probs.float().cpu(), enc_lens.cpu()))
            records += batch_records(
                hypotheses, utterances[len(records) :], (log_probs, enc_lens), txt, txt_lens,
                decoder.labels, args.save_logits is not None,
            )  # fmt: skip
        sync(device)
        t0 = time.perf_counter()
    return records, latencies


def batch_records(
    hypotheses: list[Hypothesis],
    utterances: list[tuple[int, str]],
    outputs: tuple[torch.Tensor, torch.Tensor],
    txt: torch.Tensor,
    txt_lens: torch.Tensor,
    labels: list[str],
    keep_logits: bool,
) -> list[Record]:
    """The records of one batch, its utterances being the first of ``utterances``."""
    log_probs, enc_lens = outputs
    txt, txt_lens, enc_lens = txt.cpu(), txt_lens.cpu(), enc_lens.cpu()
    records = []
    for i, hypothesis in enumerate(hypotheses):
        index, name = utterances[i]
        reference = "".join(labels[j] for j in txt[i, : int(txt_lens[i])].tolist())
        logits = log_probs[i, : int(enc_lens[i])].float().cpu() if keep_logits else None
        records.append(
            Record(
                order=(0, index),
                name=name,
                hypothesis=hypothesis.text,
                reference=reference if txt_lens[i] > 0 else None,
                log_probs=logits,
                words=hypothesis.words,
            )
        )
    return records


def file_hypothesis(
    path: Path, transcriber: Transcriber, decoder: GreedyDecoder | BeamDecoder, args
) -> tuple[Hypothesis, torch.Tensor | None]:
    """One file's transcript: whole (the default), cut at pauses (``--vad``) or streamed
    (``--stream``); the whole-file path also gives its log-probs and the decoder's word times."""
    if args.vad:
        samples = transcriber.load(path)
        cut = transcribe_with_vad(transcriber, samples, max_segment_seconds=args.vad_max_seconds)
        return Hypothesis(cut.text), None
    if args.stream:
        streamer = StreamingTranscriber(
            transcriber.model, transcriber.cfg, transcriber.device, chunk_seconds=args.stream_chunk,
            left_seconds=args.stream_left, right_seconds=args.stream_right,
            pad_leading=args.pad_leading,
        )  # fmt: skip
        list(transcribe_stream(streamer, file_chunks(path, streamer.sample_rate)))
        return Hypothesis(streamer.text, tuple(streamer.words)), None
    log_probs = transcriber.log_probs(transcriber.load(path))
    return decoder.decode(log_probs), log_probs


def run_files(
    transcriber: Transcriber,
    decoder: GreedyDecoder | BeamDecoder,
    files: list[tuple[str, Path]],
    rank: int,
    world_size: int,
    args: argparse.Namespace,
) -> tuple[list[Record], list[str]]:
    """Transcribe this rank's share of ``files`` (each file whole, long ones in chunks); a file
    that cannot be read or decoded is reported and skipped, and the others go on. Returns the
    records and the errors."""
    records, errors = [], []
    for i in EvalSampler(len(files), 1, world_size, rank).indices:
        name, path = files[i]
        try:
            hypothesis, log_probs = file_hypothesis(path, transcriber, decoder, args)
        except AudioLoadError as e:
            print(f"error: {e} (skipped)", file=sys.stderr)
            errors.append(str(e))
            continue
        logits = log_probs if args.save_logits else None
        records.append(
            Record((1, i), name, hypothesis.text, log_probs=logits, words=hypothesis.words)
        )
    return records, errors


# --------------------------------------------------------------------------------------------
# Outputs


def write_predictions(records: list[Record], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(f"{r.name}\t{r.hypothesis}\n")


def write_logits(records: list[Record], labels: list[str], path: str, pad_leading: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "names": [r.name for r in records],
            "log_probs": [r.log_probs for r in records],
            "labels": list(labels),
            "blank": len(labels),
            "pad_leading": pad_leading,  # utils/tune_lm.py --checkpoint records it
        },
        path,
    )


def report_results(
    records: list[Record], args: argparse.Namespace, labels: list[str], device: torch.device,
    logger: Logger,
) -> None:  # fmt: skip
    """WER over all ranks; transcripts of audio files, predictions and logits from rank 0."""
    scored = [r for r in records if r.reference is not None]
    _, errors, words = word_error_rate(
        [r.hypothesis for r in scored], [r.reference for r in scored]
    )
    errors, words, utts = distributed.sum_over_ranks([errors, words, len(scored)], device)
    gathered = distributed.gather_lists(records)
    if gathered is None:
        return
    gathered.sort(key=lambda r: r.order)
    if args.transcribe_wav or args.transcribe_filelist:
        for r in gathered:
            if r.order[0] == 1:
                print(f"{r.name}\t{r.hypothesis}")
    if utts > 0:
        wer = 100.0 * errors / words if words else float("nan")
        logger.log((), {"eval_wer": wer})
        print(
            f"WER {wer:.4f} % ({int(errors)} errors / {int(words)} words, {int(utts)} utterances)"
        )
    elif args.val_manifests:
        print("note: no utterance has a transcript: WER not computed")
    if args.save_predictions:
        write_predictions(gathered, args.save_predictions)
        print(f"predictions of {len(gathered)} utterances written to {args.save_predictions}")
        others = [f for f in args.output_format if f != "txt"]
        prefix = Path(args.save_predictions).with_suffix("")
        for path in write_outputs([(r.name, r) for r in gathered], prefix, others):
            print(f"{path.suffix[1:]} output written to {path}")
    if args.save_logits:
        write_logits(gathered, labels, args.save_logits, args.pad_leading)
        print(f"log-probs of {len(gathered)} utterances written to {args.save_logits}")


def speed_label(speed: SpeedOptions) -> str:
    parts = [
        name
        for name in ("fold_batchnorm", "skip_masks", "fft_convs", "compile", "cuda_graphs")
        if getattr(speed, name)
    ]
    return "+".join(parts) or "upstream-style"


def report_latencies(
    latencies: Latencies,
    args: argparse.Namespace,
    speed: SpeedOptions | None,
    cfg: dict,
    device: torch.device,
    logger: Logger,
) -> None:
    summary = latencies.summary()
    if not distributed.is_main():
        return
    if summary is None:
        print("Not enough samples to measure latencies.")
        return
    logger.log((), summary)
    if args.latency_table:
        _, features_kw = config.input(cfg, "val")
        if args.synthetic_duration is not None:
            duration: float | str = args.synthetic_duration
        elif features_kw["pad_to_max_duration"] and math.isfinite(features_kw["max_duration"]):
            duration = features_kw["max_duration"]
        else:
            duration = "manifest"
        row = {
            "batch_size": args.batch_size,
            "duration": duration,
            "precision": "int8" if args.int8 else args.precision if args.amp else "fp32",
            "options": "onnxruntime" if speed is None else speed_label(speed),
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "latency_ms": summary,
        }
        update_table(args.latency_table, row, machine.describe(device))


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except (
        CheckpointError,
        config.ConfigError,
        AudioLoadError,
        ManifestError,
        MissingAudioError,
        FileNotFoundError,
        DaliUnavailableError,
        InputError,
        NotEnoughData,
        BeamSearchUnavailableError,
        VadUnavailableError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def make_decoder(args: argparse.Namespace, cfg: dict, model: nn.Module):
    """The decoder of the resolved decoding options (:func:`resolve_decoding`)."""
    if args.lm is None and args.lexicon:
        raise InputError("--lexicon constrains the words of an LM search: give --lm too")
    settings = {key: getattr(args, key) for key in decoding_settings.DEFAULTS}
    return decoding_settings.build(
        settings, cfg, model, lexicon=args.lexicon, hotwords=args.hotwords,
        num_workers=args.decoder_workers,
    )  # fmt: skip


def prepared_model(args: argparse.Namespace, device: torch.device):
    """``(model ready to run on device, cfg, speed options)`` from ``--ckpt``; with ``--int8``
    the network is the int8 ONNX model and the speed options are None."""
    if args.int8 is not None:
        return int8_model(args, device)
    model, cfg = load_model(
        args.ckpt, args.model_config, ema=args.ema, overrides=args.override_config
    )
    speed = speed_options(args, device)
    log.info(
        "speed options: %s on %s%s", speed_label(speed), device.type,
        " (--fft_convs auto)" if args.fft_convs == "auto" else "",
    )  # fmt: skip
    return prepare(model.to(device), speed, inplace=True), cfg, speed


def int8_model(args: argparse.Namespace, device: torch.device) -> tuple[Int8Model, dict, None]:
    """``(the --int8 network, the checkpoint's cfg, None)``, after refusing what it cannot do."""
    if device.type != "cpu":
        raise InputError(
            f"--int8 runs on the CPU (ONNX Runtime), this run is on {device.type}: add --cpu "
            "(CPU=true for scripts/inference.sh)"
        )
    asked = [f"--{name}" for name in ("amp", "compile", "cuda_graphs") if getattr(args, name)]
    if asked:
        raise InputError(f"--int8 replaces the PyTorch network: leave out {' '.join(asked)}")
    try:
        int8 = Int8Model(args.int8)  # FileNotFoundError when missing: main reports it
    except ValueError as e:  # an ONNX file not written by jasper.int8
        raise InputError(str(e)) from None
    model, cfg = load_model(
        args.ckpt, args.model_config, ema=args.ema, overrides=args.override_config
    )
    if int8.metadata["conv_geometry"] != [list(g) for g in conv_geometry(model)]:  # JSON lists
        raise InputError(
            f"{args.int8} was exported from another architecture than {args.ckpt}: export it "
            f"from this checkpoint (python -m jasper.int8 --ckpt {args.ckpt} --output ...)"
        )
    kind = "int8" if int8.metadata["int8"] else "fp32"
    log.info("acoustic model: %s ONNX Runtime (%s)", kind, args.int8)
    return int8, cfg, None


def resolve_decoding(args: argparse.Namespace) -> None:
    """Fill the decoding options left unset from the checkpoint's settings, else upstream's
    defaults (jasper/decoding_settings.py), and log the result. ``--vad`` and ``--stream`` decode
    greedily whatever the checkpoint says."""
    keys = decoding_settings.DEFAULTS
    given = {key: getattr(args, key) for key in keys}
    if args.vad or args.stream:
        given["decoder"] = "greedy"
    settings, taken = decoding_settings.for_checkpoint(args.ckpt, given)
    for key in keys:
        setattr(args, key, settings[key])
    log.info(decoding_settings.describe(settings, taken))


def run(args: argparse.Namespace) -> int:
    device, rank, world_size = distributed.init(args.device, args.local_rank, args.cudnn_benchmark)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    check_inputs(args)
    resolve_decoding(args)
    if args.dali_device is None:
        from common.dali import dali_available

        args.dali_device = "gpu" if device.type == "cuda" and dali_available() else "none"
    if args.dali_device == "gpu" and device.type != "cuda":
        raise InputError("--dali_device gpu needs CUDA; use --dali_device cpu or none on the CPU")
    torch.manual_seed(args.seed + rank)
    logger = Logger(
        args.output_dir, args.log_file, enabled=rank == 0, tensorboard_subsets=(),
        json_name="nvlog_infer.json",
    )  # fmt: skip
    logger.log_params(vars(args))
    model, cfg, speed = prepared_model(args, device)
    labels = list(cfg["labels"])
    decoder = make_decoder(args, cfg, model)

    labelled, files = split_manifests(args.val_manifests, args.dataset_dir, labels)
    files += [(str(path), path) for path in audio_files(args.transcribe_wav)]
    if args.transcribe_filelist:
        files += read_filelist(args.transcribe_filelist, args.dataset_dir)
    records: list[Record] = []
    failed: list[str] = []
    latencies = Latencies()
    if labelled or args.synthetic_duration is not None:
        loader, utterances = build_batches(args, cfg, labelled, device, rank, world_size)
        records, latencies = run_batches(model, loader, utterances, args, decoder, device)
    if files:
        transcriber = Transcriber(
            model, cfg, device, pad_leading=args.pad_leading, chunk_seconds=args.chunk_seconds,
            context_seconds=args.chunk_context_seconds,
        )  # fmt: skip
        file_records, failed = run_files(transcriber, decoder, files, rank, world_size, args)
        records += file_records

    if isinstance(decoder, BeamDecoder):
        decoder.close()  # its worker processes
    if args.steps > 0:
        report_latencies(latencies, args, speed, cfg, device, logger)
    else:
        report_results(records, args, labels, device, logger)
    logger.close()
    failures = int(distributed.sum_over_ranks([len(failed)], device)[0])
    distributed.shutdown()
    if failures:
        print(f"error: {failures} file(s) could not be transcribed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
