"""Greedy CTC inference and evaluation with a trained checkpoint (spec 8).

Inputs (one or more of):
- ``--val_manifests``: manifests (spec 9); WER is printed and logged. A manifest whose entries carry
  no transcript is transcribed all the same (predictions written, WER skipped with a note).
- ``--transcribe_wav FILE|DIR``: audio files (WAV/FLAC/OGG, any sample rate, mono or multi-channel);
  a directory means every audio file under it. Each file is read whole; long recordings run in
  overlapping chunks (``--chunk_seconds``) with the same result (``jasper.transcribe``).
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
  "labels": [str], "blank": int}`` with the log-probabilities (float32) of each utterance's valid
  encoder frames (lengths preserved), in the predictions' order. Load it with
  ``torch.load(PATH, weights_only=True)``; no code of this repository is needed.
- WER and latencies go to stdout and the JSON log (``--log_file``, default
  ``OUTPUT_DIR/nvlog_infer.json``); ``--latency_table PREFIX`` adds this run's latency row to
  ``PREFIX.json`` and ``PREFIX.md`` (``scripts/inference_benchmark.sh`` builds its sweep this way).

Fixed against upstream (spec 14): multi-process evaluation works (``torchrun``; every utterance is
evaluated exactly once and the WER sums errors and words over ranks, so it equals the
single-process WER); ``--ema`` falls back to the raw weights with a warning; logits of
variable-length utterances are saved; CPU inference needs no CUDA and no DALI; latency keys match
their declared names.

Timing (``--steps N``, spec 8.2/8.3): after ``--warmup_steps`` (plus the first step), each step
records ``data`` (the loader's next batch: audio reading and features), ``dnn`` (leading pad,
network, argmax; device synchronised before and after) and ``data+dnn``; the first 5 records are
dropped, and the 90/95/99th percentiles and the mean are reported in ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from common.audio import AudioLoadError
from common.checkpoint import CheckpointError
from common.dali import DaliUnavailableError
from common.dataset import EvalSampler, ManifestError, MissingAudioError
from common.features import FilterbankFeatures
from common.logger import LATENCY_RATIOS, LATENCY_STAGES, Logger, latency_metric
from common.metrics import ctc_greedy_text, word_error_rate
from jasper import config
from jasper.model import greedy_decode
from jasper.prepare import DTYPES, SpeedOptions, prepare
from jasper.transcribe import Transcriber, audio_files, load_model
from train import build_loader, setup_distributed

log = logging.getLogger("inference")

LATENCY_DROP_FIRST = 5  # first recorded steps left out of the latency figures (spec 8.2 step 10)
LATENCY_MIN_SAMPLES = 20


class InputError(ValueError):
    """The command line asks for something impossible; the message says what to change."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Greedy CTC inference, WER and latency with a Jasper/QuartzNet checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint: this recipe's, upstream's (.pt) or NeMo's (.nemo)",
    )
    m.add_argument(
        "--model_config",
        default=None,
        help="YAML config (default: the config stored in the checkpoint)",
    )
    m.add_argument(
        "--override_config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, e.g. input_val.audio_dataset.max_duration=16.7",
    )
    m.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="use the EMA weights (the raw weights, with a warning, if there are none)",
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
    d.add_argument("--batch_size", type=int, default=16, help="utterances per batch (manifests)")
    d.add_argument(
        "--pad_leading",
        type=int,
        default=16,
        help="zero feature frames put in front of every utterance",
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
    r.add_argument(
        "--amp",
        "--fp16",
        action="store_true",
        help="run the network in half precision (see --precision)",
    )
    r.add_argument(
        "--precision",
        choices=("fp16", "bf16"),
        default="fp16",
        help="the half-precision type of --amp (bf16 on CPUs)",
    )
    r.add_argument(
        "--cudnn_benchmark",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let cuDNN pick the fastest convolution algorithms",
    )
    r.add_argument(
        "--fold_batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the convolutions (same outputs, faster)",
    )
    r.add_argument(
        "--skip_masks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cut padding and skip the conv masks when all lengths in a batch are equal",
    )
    r.add_argument(
        "--fft_convs",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compute the long convolutions by FFT (CPU: about 3x faster; ~3x the weights' memory)",
    )
    r.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the network for fixed shapes (compiles once per shape)",
    )
    r.add_argument(
        "--cuda_graphs",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replay the network as a CUDA graph per input shape (CUDA only)",
    )
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


def _resolve(path: str | Path, base: str | Path) -> Path:
    """``base / path`` if that exists, else ``path`` as given (how manifests are found)."""
    in_base = Path(base) / path
    return in_base if in_base.exists() else Path(path)


def unlabelled_manifest_files(manifest: str, data_dir: str) -> list[tuple[str, Path]] | None:
    """``[(name, audio path)]`` of a manifest some of whose entries have no transcript, or None
    when every entry has one (then the data loader reads it and WER is computed).

    Each entry's speed-1.0 file (else its last, upstream's choice) is transcribed whole.
    """
    path = _resolve(manifest, data_dir)
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"manifest not found: {manifest} (looked in {data_dir} and .)"
        ) from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: expected a JSON list of entries")
    labelled = sum(
        isinstance(e, dict) and ("transcript" in e or "text_filepath" in e) for e in entries
    )
    if labelled == len(entries):
        return None
    log.warning(
        "note: %d of %d entries of %s have no transcript: its predictions are written, "
        "its WER is not computed",
        len(entries) - labelled,
        len(entries),
        manifest,
    )
    files = []
    for i, entry in enumerate(entries):
        variants = entry.get("files") if isinstance(entry, dict) else None
        if (
            not isinstance(variants, list)
            or not variants
            or not all(isinstance(f, dict) and isinstance(f.get("fname"), str) for f in variants)
        ):
            raise ManifestError(f"{path}: entry {i}: missing 'files' with 'fname'")
        if entry.get("offset"):
            raise ManifestError(
                f"{path}: entry {i}: 'offset' entries need transcripts (they are read by the "
                "data loader); add a transcript or cut the audio"
            )
        ones = [f for f in variants if abs(float(f.get("speed", 1.0)) - 1.0) < 1e-6]
        fname = (ones or variants[-1:])[0]["fname"]
        files.append((fname, Path(data_dir) / fname))
    return files


def read_filelist(path: str, data_dir: str) -> list[tuple[str, Path]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [(line.strip(), _resolve(line.strip(), data_dir)) for line in lines if line.strip()]


class SyntheticBatches:
    """One batch of Gaussian noise of exactly ``duration`` seconds per utterance, its features
    computed on the device at every iteration (the ``data`` latency is feature extraction)."""

    def __init__(
        self,
        features: FilterbankFeatures,
        batch_size: int,
        duration: float,
        seed: int,
        device: torch.device,
    ) -> None:
        n = round(duration * features.sample_rate)
        generator = torch.Generator().manual_seed(seed)
        self.audio = (0.1 * torch.randn(batch_size, n, generator=generator)).to(device)
        self.lens = torch.full((batch_size,), n, dtype=torch.int64, device=device)
        self.features = features.to(device).eval()
        self.utterances = [(i, f"synthetic-{i}") for i in range(batch_size)]

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        with torch.no_grad():
            feats, lens = self.features(self.audio, self.lens)
        empty = torch.zeros(len(self.lens), 0, dtype=torch.int64, device=feats.device)
        yield feats, lens, empty, torch.zeros_like(lens)


def loader_utterances(loader, data_dir: str) -> list[tuple[int, str]]:
    """``(position in the manifests, name)`` of this rank's utterances, in the order its loader
    yields them; the name is the audio file."""
    out = []
    for u in loader.utterances():
        ones = [f for f in u.files if abs(f.speed - 1.0) < 1e-6]
        path = Path((ones or u.files)[0].path)
        name = str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)
        out.append((u.index, name))
    return out


# --------------------------------------------------------------------------------------------
# Running


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_batches(loader, batch_size: int) -> Iterator:
    """The loader's full batches, over and over (benchmarks time equal batches only)."""
    while True:
        found = False
        for batch in loader:
            if batch[0].size(0) == batch_size:
                found = True
                yield batch
        if not found:
            raise InputError(f"the data hold no full batch of {batch_size} utterances to time")


class Latencies:
    """Per-step seconds of the three stages; :meth:`summary` gives the reported figures in ms."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {stage: [] for stage in LATENCY_STAGES}

    def add(self, data: float, dnn: float) -> None:
        self.samples["data"].append(data)
        self.samples["dnn"].append(dnn)
        self.samples["data+dnn"].append(data + dnn)

    def summary(self) -> dict[str, float] | None:
        """``{latency_metric(stage, r): ms}`` for r in 0.99/0.95/0.9 (nearest-rank percentiles,
        what upstream's index arithmetic computes) and 0.5 (the mean, as upstream); None when
        fewer than 20 steps remain after dropping the first 5."""
        out = {}
        for stage, values in self.samples.items():
            ms = sorted(1000.0 * v for v in values[LATENCY_DROP_FIRST:])
            if len(ms) < LATENCY_MIN_SAMPLES:
                return None
            for ratio in LATENCY_RATIOS:
                if ratio == 0.5:
                    value = sum(ms) / len(ms)
                else:
                    value = ms[math.ceil(ratio * len(ms) - 1e-9) - 1]
                out[latency_metric(stage, ratio)] = value
        return out


@torch.inference_mode()
def run_batches(
    model: nn.Module,
    loader,
    utterances: list[tuple[int, str]],
    group: int,
    args: argparse.Namespace,
    labels: list[str],
    device: torch.device,
) -> tuple[list[Record], Latencies]:
    """Run the network over the loader's batches; with ``--steps``, time them instead."""
    benchmark = args.steps > 0
    batches: Iterable = full_batches(loader, args.batch_size) if benchmark else loader
    total_steps = args.steps + args.warmup_steps if benchmark else None
    records: list[Record] = []
    latencies = Latencies()
    position = 0
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
        ids = greedy_decode(log_probs, enc_lens)
        sync(device)
        t2 = time.perf_counter()
        if step >= 1 and (not benchmark or step >= args.warmup_steps):
            latencies.add(t1 - t0, t2 - t1)
        if not benchmark:
            ids, enc_lens = ids.cpu(), enc_lens.cpu()
            txt, txt_lens = txt.cpu(), txt_lens.cpu()
            for i in range(ids.size(0)):
                n = int(enc_lens[i])
                index, name = utterances[position]
                reference = "".join(labels[j] for j in txt[i, : int(txt_lens[i])].tolist())
                records.append(
                    Record(
                        order=(group, index),
                        name=name,
                        hypothesis=ctc_greedy_text(ids[i, :n].tolist(), labels),
                        reference=reference if txt_lens[i] > 0 else None,
                        log_probs=log_probs[i, :n].float().cpu() if args.save_logits else None,
                    )
                )
                position += 1
        sync(device)
        t0 = time.perf_counter()
    return records, latencies


def run_files(
    transcriber: Transcriber,
    files: list[tuple[str, Path]],
    group: int,
    rank: int,
    world_size: int,
    keep_logits: bool,
) -> list[Record]:
    """Transcribe this rank's share of ``files`` (each file whole, long ones in chunks)."""
    records = []
    for i in EvalSampler(len(files), 1, world_size, rank).indices:
        name, path = files[i]
        result = transcriber.transcribe_file(path, name)
        records.append(
            Record(
                order=(group, i),
                name=name,
                hypothesis=result.text,
                log_probs=result.log_probs if keep_logits else None,
            )
        )
    return records


def gather_records(records: list[Record], world_size: int) -> list[Record]:
    """Every rank's records on rank 0, in output order (other ranks get [])."""
    if world_size > 1:
        parts: list | None = [None] * world_size if dist.get_rank() == 0 else None
        dist.gather_object(records, parts, dst=0)
        if dist.get_rank() != 0:
            return []
        records = [r for part in parts for r in part]
    return sorted(records, key=lambda r: r.order)


def reduce_counts(values: list[float], device: torch.device) -> list[float]:
    """Sum over ranks (float64: exact for counts)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------------------------
# Outputs


def write_predictions(records: list[Record], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(f"{r.name}\t{r.hypothesis}\n")


def write_logits(records: list[Record], labels: list[str], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "names": [r.name for r in records],
            "log_probs": [r.log_probs for r in records],
            "labels": list(labels),
            "blank": len(labels),
        },
        path,
    )


def machine_description(device: torch.device) -> dict[str, str | int]:
    """What the latencies were measured on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "device": name,
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _duration_key(duration: float | str) -> tuple[int, float]:
    return (1, 0.0) if isinstance(duration, str) else (0, float(duration))


def update_latency_table(prefix: str, row: dict, machine: dict) -> None:
    """Add ``row`` to ``PREFIX.json`` (replacing a row with the same settings) and rewrite
    ``PREFIX.md`` from it, sorted by duration then batch size."""
    json_path, md_path = Path(prefix + ".json"), Path(prefix + ".md")
    table = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    keys = ("batch_size", "duration", "precision", "options")
    rows = [r for r in table["rows"] if any(r.get(k) != row[k] for k in keys)] + [row]
    rows.sort(
        key=lambda r: (r["options"], r["precision"], _duration_key(r["duration"]), r["batch_size"])
    )
    table = {"machine": machine, "rows": rows}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(table, indent=1) + "\n")

    stages = list(LATENCY_STAGES)
    ratios = sorted(r for r in LATENCY_RATIOS if r != 0.5) + [0.5]  # 90%, 95%, 99%, mean
    header = ["batch", "audio (s)", "precision", "options"] + [
        f"{LATENCY_STAGES[s]} {'avg' if r == 0.5 else f'{round(100 * r)}%'}"
        for s in stages
        for r in ratios
    ]
    lines = [
        f"Latency per batch in ms on {machine['device']} ({machine['device_type']}, "
        f"torch {machine['torch']}, {machine['cpu_threads']} CPU threads).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [str(r["batch_size"]), str(r["duration"]), r["precision"], r["options"]]
        cells += [f"{r['latency_ms'][latency_metric(s, q)]:.2f}" for s in stages for q in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")


def speed_label(speed: SpeedOptions) -> str:
    parts = [
        name
        for name in ("fold_batchnorm", "skip_masks", "fft_convs", "compile", "cuda_graphs")
        if getattr(speed, name)
    ]
    return "+".join(parts) or "upstream-style"


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
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    device, rank, world_size = setup_distributed(args)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
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
    if args.dali_device is None:
        from common.dali import dali_available

        args.dali_device = "gpu" if device.type == "cuda" and dali_available() else "none"
    if args.dali_device == "gpu" and device.type != "cuda":
        raise InputError("--dali_device gpu needs CUDA; use --dali_device cpu or none on the CPU")
    torch.manual_seed(args.seed + rank)

    logger = Logger(
        args.output_dir,
        args.log_file,
        enabled=rank == 0,
        tensorboard_subsets=(),
        json_name="nvlog_infer.json",
    )
    logger.log_params(vars(args))

    model, cfg = load_model(
        args.ckpt, args.model_config, ema=args.ema, overrides=args.override_config
    )
    labels = list(cfg["labels"])
    dtype = DTYPES[args.precision] if args.amp else torch.float32
    speed = SpeedOptions(
        fold_batchnorm=args.fold_batchnorm,
        skip_masks=args.skip_masks,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        fft_convs=args.fft_convs,
        dtype=dtype,
    )
    model = prepare(model.to(device), speed, inplace=True)

    records: list[Record] = []
    latencies = Latencies()
    labelled = []
    unlabelled: list[tuple[str, Path]] = []
    for manifest in args.val_manifests:
        files = unlabelled_manifest_files(manifest, args.dataset_dir)
        if files is None:
            labelled.append(manifest)
        else:
            unlabelled += files
    if labelled or args.synthetic_duration is not None:
        if args.synthetic_duration is not None:
            _, features_kw = config.input(cfg, "val")
            loader = SyntheticBatches(
                FilterbankFeatures(**features_kw),
                args.batch_size,
                args.synthetic_duration,
                args.seed,
                device,
            )
            utterances = loader.utterances
        else:
            loader_args = argparse.Namespace(
                dali_device=args.dali_device,
                dataset_dir=args.dataset_dir,
                seed=args.seed,
                num_workers=args.num_workers,
                bucketing=False,
            )
            loader = build_loader(
                loader_args, cfg, "val", labelled, args.batch_size, device, rank, world_size
            )
            utterances = loader_utterances(loader, args.dataset_dir)
        records, latencies = run_batches(model, loader, utterances, 0, args, labels, device)

    files = list(unlabelled)
    for path in audio_files(args.transcribe_wav):
        files.append((str(path), path))
    if args.transcribe_filelist:
        files += read_filelist(args.transcribe_filelist, args.dataset_dir)
    if files:
        transcriber = Transcriber(
            model,
            cfg,
            device,
            pad_leading=args.pad_leading,
            chunk_seconds=args.chunk_seconds,
            context_seconds=args.chunk_context_seconds,
        )
        records += run_files(transcriber, files, 1, rank, world_size, bool(args.save_logits))

    if args.steps > 0:
        report_latencies(latencies, args, speed, cfg, device, logger)
    else:
        report_results(records, args, labels, device, world_size, logger)
    logger.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def report_results(
    records: list[Record],
    args: argparse.Namespace,
    labels: list[str],
    device: torch.device,
    world_size: int,
    logger: Logger,
) -> None:
    scored = [r for r in records if r.reference is not None]
    _, errors, words = word_error_rate(
        [r.hypothesis for r in scored], [r.reference for r in scored]
    )
    errors, words, utts = reduce_counts([errors, words, len(scored)], device)
    gathered = gather_records(records, world_size)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
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
    if args.save_logits:
        write_logits(gathered, labels, args.save_logits)
        print(f"log-probs of {len(gathered)} utterances written to {args.save_logits}")


def report_latencies(
    latencies: Latencies,
    args: argparse.Namespace,
    speed: SpeedOptions,
    cfg: dict,
    device: torch.device,
    logger: Logger,
) -> None:
    summary = latencies.summary()
    if dist.is_initialized() and dist.get_rank() != 0:
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
            "precision": args.precision if args.amp else "fp32",
            "options": speed_label(speed),
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "latency_ms": summary,
        }
        update_latency_table(args.latency_table, row, machine_description(device))


if __name__ == "__main__":
    sys.exit(main())
