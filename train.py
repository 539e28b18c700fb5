"""Train Jasper or QuartzNet with CTC (upstream train.py; docs/upstream.md#step-order).

One process per GPU through ``torchrun`` (NCCL on GPUs, gloo on CPU), or a single CPU/GPU process.
The step loop follows upstream's published recipe: features in fp32 outside autocast, the model under
``torch.autocast`` (fp16 with a GradScaler, or bf16), CTC in fp32, gradient accumulation with DDP
``no_sync``, Novograd, the LR set before each optimizer step, EMA after it, evaluation of the raw
and the EMA weights. What upstream got wrong is fixed here (docs/upstream.md#known-upstream-defects):
warmup is not skipped (U10), the best checkpoint records its own WER (U13), a non-finite loss never
reaches the weights (U20), leftover micro-batches never leak into the next epoch (U15), and a resumed
run continues exactly where it stopped (U16).

Usage: ``python train.py --model_config configs/jasper_tiny.yaml --dataset_dir DIR --train_manifests
A.json --val_manifests B.json --output_dir OUT``. The defaults are the recipe's, the same as
``scripts/train.sh``'s (tests/test_launcher_defaults.py keeps them equal).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from common import checkpoint as ckpt_io
from common import distributed
from common.dataset import ManifestError
from common.loader import BACKENDS, build_loader
from common.logger import Logger, progress
from common.metrics import word_error_rate
from common.optimizers import (
    LR_ORDERS,
    LR_POLICIES,
    OPTIMIZER_NAMES,
    LRSchedule,
    apply_ema,
    build_optimizer,
    lr_for_step,
    make_ema_model,
    parameter_groups,
    set_lr,
)
from common.text import DEFAULT_LABELS
from jasper import config
from jasper.decoding import greedy_texts
from jasper.model import CTCLoss, num_parameters


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a Jasper/QuartzNet CTC model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("training setup")
    t.add_argument("--epochs", type=int, default=440, help="total epochs of the schedule")
    t.add_argument("--warmup_epochs", type=float, default=2, help="linear LR warmup, in epochs")
    t.add_argument("--hold_epochs", type=float, default=140, help="epochs at peak LR after warmup")
    t.add_argument(
        "--epochs_this_job",
        type=int,
        default=0,
        help="stop after this many epochs in this run (0: run to the end); "
        "the schedule is unaffected",
    )
    t.add_argument(
        "--max_steps_this_job",
        type=int,
        default=0,
        help="stop after this many optimizer steps in this run and save (0: no limit)",
    )
    t.add_argument(
        "--cudnn_benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let cuDNN pick the fastest convolution algorithms",
    )
    t.add_argument("--amp", "--fp16", action="store_true", help="mixed precision (see --precision)")
    t.add_argument(
        "--precision",
        choices=("fp16", "bf16"),
        default="fp16",
        help="autocast dtype when --amp is on (fp16 uses a GradScaler)",
    )
    t.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="weights and features; float64 (CPU, PyTorch loader, no AMP) makes runs comparable "
        "independently of the CPU's float32 kernels, e.g. 2 processes against 1 with accumulation",
    )
    t.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the training forward and backward (the model, DDP-wrapped with "
        "several processes); the first batches compile (a minute or more), a new batch shape "
        "recompiles once and then the time axis is dynamic (bucketing gives few shapes)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed; rank r uses seed + r for its RNGs")
    t.add_argument(
        "--local_rank",
        "--local-rank",
        type=int,
        default=int(os.environ.get("LOCAL_RANK", 0)),
        help="set by torchrun",
    )
    t.add_argument(
        "--pre_allocate_range",
        type=int,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="warm the CUDA allocator with batches of MIN..MAX frames before training",
    )
    t.add_argument("--num_workers", type=int, default=4, help="DataLoader workers (PyTorch loader)")
    t.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when available, else CPU",
    )
    t.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=100,
        help="abort after this many consecutive non-finite losses",
    )

    o = p.add_argument_group("optimization")
    o.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="utterances per GPU per optimizer step (micro-batch = batch_size / accumulation)",
    )
    o.add_argument("--grad_accumulation_steps", type=int, default=2, help="micro-batches per step")
    o.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="novograd")
    o.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    o.add_argument("--min_lr", type=float, default=1e-5, help="learning-rate floor")
    o.add_argument(
        "--lr_policy",
        choices=LR_POLICIES,
        default="exponential",
        help="exponential/legacy: upstream's; cosine: per-step cosine decay after warmup and hold",
    )
    o.add_argument(
        "--lr_exp_gamma", type=float, default=0.981, help="per-epoch decay after the hold"
    )
    o.add_argument(
        "--lr_order",
        choices=LR_ORDERS,
        default="published",
        help="published: step s uses policy(s) (the recipe behind the published results); "
        "upstream-current: step s uses policy(s-1), step 1 at peak LR (docs/upstream.md#u10)",
    )
    o.add_argument("--weight_decay", type=float, default=1e-3)
    o.add_argument(
        "--weight_decay_norm_and_bias",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also decay BatchNorm weights and biases (upstream); --no-... exempts them",
    )
    o.add_argument(
        "--betas",
        type=float,
        nargs=2,
        metavar=("BETA1", "BETA2"),
        default=None,
        help="the optimizer's betas (default: its own, see common/optimizers.build_optimizer)",
    )
    o.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: off)")
    o.add_argument(
        "--clip_norm", type=float, default=0.0, help="gradient-norm clip (0: off, as upstream)"
    )

    d = p.add_argument_group("data")
    d.add_argument(
        "--dali_device",
        choices=BACKENDS,
        default="gpu",
        help="DALI pipeline device; none: the PyTorch loader",
    )
    d.add_argument(
        "--bucketing",
        action="store_true",
        help="group utterances of similar length into batches (both loaders)",
    )
    d.add_argument("--model_config", required=True, help="YAML model/data config")
    d.add_argument("--train_manifests", nargs="+", default=[], help="training manifests")
    d.add_argument("--val_manifests", nargs="+", default=[], help="evaluation manifests")
    d.add_argument("--dataset_dir", default=".", help="folder the manifests' paths are relative to")
    d.add_argument(
        "--override_config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, e.g. input_train.audio_dataset.max_duration=10",
    )

    c = p.add_argument_group("checkpoints and logging")
    c.add_argument("--output_dir", required=True, help="checkpoints, logs and TensorBoard files")
    c.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest readable checkpoint in --output_dir",
    )
    c.add_argument("--ckpt", default=None, help="start from this checkpoint (when none to resume)")
    c.add_argument(
        "--init_from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from the weights (EMA when present) of this recipe's, upstream's or "
        "a .nemo checkpoint, with a new optimizer, schedule and step; a classifier for other "
        "labels keeps the rows of the labels both share (when none to resume)",
    )
    c.add_argument("--save_frequency", type=int, default=10, help="save every N epochs")
    c.add_argument(
        "--keep_milestones",
        type=int,
        nargs="*",
        default=[100, 200, 300, 400],
        help="epochs whose checkpoints are never deleted",
    )
    c.add_argument(
        "--save_best_from",
        type=int,
        default=380,
        help="epoch from which the best (EMA) dev WER is checkpointed",
    )
    c.add_argument("--eval_frequency", type=int, default=544, help="evaluate every N steps")
    c.add_argument("--log_frequency", type=int, default=1, help="log every N steps")
    c.add_argument(
        "--prediction_frequency",
        type=int,
        default=544,
        help="print a sample prediction every N steps",
    )
    c.add_argument("--log_file", default=None, help="JSON log (default: OUTPUT_DIR/nvlog.json)")
    c.add_argument(
        "--benchmark_epochs_num",
        type=int,
        default=1,
        help="epochs averaged for the final throughput figure",
    )
    return p


# --------------------------------------------------------------------------------------------
# Set-up


class Diverged(RuntimeError):
    """Too many consecutive non-finite losses: the run stops with exit code 3."""


def check_args(args: argparse.Namespace) -> None:
    if args.batch_size % args.grad_accumulation_steps:
        sys.exit("error: --batch_size must be a multiple of --grad_accumulation_steps")
    if args.prediction_frequency % args.log_frequency:
        sys.exit("error: --prediction_frequency must be a multiple of --log_frequency")
    if args.dtype == "float64" and (args.amp or args.dali_device != "none"):
        sys.exit(
            "error: --dtype float64 needs --dali_device none (DALI computes float32) and no --amp"
        )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def load_config(args: argparse.Namespace) -> dict:
    cfg = config.load(args.model_config)
    cfg = config.apply_config_overrides(cfg, args.override_config, source=args.model_config)
    if args.dali_device != "none":
        train_ds, _ = config.input(cfg, "train")
        if not train_ds["ignore_offline_speed_perturbation"]:
            sys.exit(
                f"error: {args.model_config} uses offline speed perturbation "
                "(ignore_offline_speed_perturbation: false), which needs the PyTorch loader: "
                "set DALI_DEVICE=none (--dali_device none)"
            )
    return cfg


def model_name(cfg: dict) -> str:
    return "QuartzNet" if config.model_section(cfg) == "quartznet" else "Jasper"


def build_split_loader(
    args: argparse.Namespace,
    cfg: dict,
    split: str,
    manifests: list[str],
    device: torch.device,
    rank: int,
    world_size: int,
):
    dataset_kw, features_kw = config.input(cfg, split)
    train = split == "train"
    return build_loader(
        manifests,
        cfg["labels"],
        dataset_kw,
        features_kw,
        dataset_dir=args.dataset_dir,
        batch_size=args.batch_size // args.grad_accumulation_steps,
        train=train,
        device=device,
        backend=args.dali_device,
        world_size=world_size,
        rank=rank,
        seed=args.seed,
        num_workers=args.num_workers,
        bucketing=args.bucketing,
        grad_accumulation=args.grad_accumulation_steps,
        dtype=getattr(torch, args.dtype),
    )


def build_logger(args: argparse.Namespace, rank: int) -> Logger:
    subsets = ("train", "train_avg", "dev") + (("dev_ema",) if args.ema > 0 else ())
    return Logger(
        Path(args.output_dir),
        args.log_file,
        enabled=rank == 0,
        tensorboard_subsets=[s for s in subsets if s != "train_avg"],
    )


# --------------------------------------------------------------------------------------------
# Training state and checkpoints


class TrainState:
    """Where the run is: 1-based ``epoch`` in progress, ``step`` = optimizer steps done, the
    micro-batches of the current epoch already consumed, and the best dev WER so far (percent)."""

    def __init__(self) -> None:
        self.epoch = 1
        self.step = 0
        self.epoch_batches_done = 0
        self.best_wer = math.inf


def rng_state() -> dict:
    """This process's random state: torch (CPU and CUDA), numpy and Python, as tensors and ints
    (checkpoints load with ``weights_only=True``)."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_rng_pos": int(np.random.get_state()[2]),
        "python_rng": random.getstate(),
    }


def restore_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch_rng"])
    if torch.cuda.is_available() and saved.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    numpy_state = saved["numpy_rng"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", numpy_state, saved["numpy_rng_pos"], 0, 0.0))
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def restore_rank_rng(train_state: dict, run: Run) -> None:
    """Give this rank the random state it saved, so that dropout, dither and SpecAugment go on
    drawing what they would have drawn without the interruption. Each rank's state is stored
    (``rank_rngs``); checkpoints of older versions stored rank 0's only (at the top level)."""
    states = train_state.get("rank_rngs")
    if states is not None and len(states) == run.world_size:
        restore_rng_state(states[run.rank])
        return
    if states is None and run.rank == 0 and "torch_rng" in train_state:
        restore_rng_state(train_state)
        return
    # Another world size (or an old checkpoint on rank > 0): a fresh, rank-distinct draw.
    seed_everything(run.args.seed + run.rank + 1_000_003 * run.state.step)
    if run.rank == 0:
        run.logger.info(
            "note: the checkpoint's random state is of another number of processes: every rank "
            "reseeds (the data order is unchanged; dropout and augmentation draws differ)"
        )


@dataclass
class Run:
    """Everything one training job works with, built once by :func:`build_run`."""

    args: argparse.Namespace
    cfg: dict
    device: torch.device
    rank: int
    world_size: int
    logger: Logger
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    model: torch.nn.Module  # DDP-wrapped with several processes
    forward: Any  # what train_step calls: the model, or with --compile its compiled form
    ema_model: torch.nn.Module | None
    ctc: CTCLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    checkpointer: ckpt_io.Checkpointer
    state: TrainState = field(default_factory=TrainState)
    stop: StopRequest = field(default_factory=lambda: StopRequest())
    # This job's counters.
    steps_this_job: int = 0
    nonfinite_run: int = 0
    nonfinite_total: int = 0
    last_eval_step: int = -1
    epoch_throughputs: list[float] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(self.cfg["labels"])

    @property
    def accum(self) -> int:
        return self.args.grad_accumulation_steps

    def autocast(self):
        dtype = torch.bfloat16 if self.args.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.args.amp)

    def where(self) -> tuple[int, int, int]:
        """(epoch, step within the epoch, steps per epoch), the log's position."""
        return (self.state.epoch, self.state.epoch_batches_done // self.accum, self.steps_per_epoch)


def make_checkpoint(run: Run, mid_epoch: bool, rank_rngs: list[dict]) -> dict:
    state = run.state
    train_state = {
        "epoch_batches_done": state.epoch_batches_done,
        "mid_epoch": mid_epoch,
        "rank_rngs": rank_rngs,
    }
    return {
        "epoch": state.epoch,
        "step": state.step,
        **ckpt_io.best_wer_entries(state.best_wer),  # upstream's unit: a fraction
        "state_dict": unwrap(run.model).state_dict(),
        "ema_state_dict": run.ema_model.state_dict() if run.ema_model is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "config": run.cfg,
        "labels": run.labels,
        "train_state": train_state,
    }


def save(run: Run, path: Path, mid_epoch: bool) -> None:
    """Rank 0 writes the checkpoint (atomically) with every rank's random state; every rank
    waits for it."""
    rank_rngs = distributed.gather_lists([rng_state()])
    if run.rank == 0:
        run.checkpointer.save(make_checkpoint(run, mid_epoch, rank_rngs), path)
    distributed.barrier()


def restore_checkpoint(run: Run, ckpt: dict, path: Path) -> None:
    """Weights, EMA, optimizer, scaler, position and random state from ``ckpt``."""
    model = unwrap(run.model)
    ckpt_io.load_model_state(model, ckpt_io.convert_legacy_state_dict(ckpt["state_dict"]), path)
    if run.ema_model is not None:
        ema_weights = ckpt_io.model_weights(ckpt, ema=True, path=path)
        ckpt_io.load_model_state(run.ema_model, ema_weights, path)
    if ckpt.get("optimizer"):
        run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    state = run.state
    state.step = int(ckpt.get("step", 0))
    state.best_wer = ckpt_io.best_wer_from_checkpoint(ckpt)  # percent (or inf), read both units
    train_state = ckpt.get("train_state")
    if train_state and train_state.get("mid_epoch"):
        state.epoch = int(ckpt["epoch"])
        state.epoch_batches_done = int(train_state["epoch_batches_done"])
    else:  # an end-of-epoch (or upstream) checkpoint: the next epoch starts fresh
        state.epoch = int(ckpt.get("epoch", 0)) + 1
        state.epoch_batches_done = 0
    if train_state:
        restore_rank_rng(train_state, run)
    run.logger.info(
        f"resumed from {path}: epoch {state.epoch}, step {state.step}, "
        f"{state.epoch_batches_done} micro-batches of the epoch done"
    )


def resume(run: Run) -> None:
    """Continue from the newest readable checkpoint (``--resume``), else start from ``--ckpt``."""
    found = run.checkpointer.last_checkpoint() if run.args.resume else None
    if found is None and run.args.ckpt:
        found = (Path(run.args.ckpt), ckpt_io.load_checkpoint(run.args.ckpt))
    if found is not None:
        restore_checkpoint(run, found[1], found[0])


def source_weights(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """``(weights, labels or None)`` of a checkpoint to fine-tune from: the EMA weights when it
    has them (the better model), else the raw ones; a .nemo file's own."""
    if path.suffix == ".nemo":
        from jasper import nemo

        cfg, state = nemo.load(path)
        return state, list(cfg["labels"])
    ckpt = ckpt_io.load_checkpoint(path)
    ema = ckpt.get("ema_state_dict") is not None
    labels = ckpt.get("labels") or (ckpt.get("config") or {}).get("labels")
    return ckpt_io.model_weights(ckpt, ema=ema, path=path), labels


def init_from(model: torch.nn.Module, path: Path, labels: list[str], logger: Logger) -> None:
    """Load another model's weights for fine-tuning. Everything must fit but the classifier
    (``decoder.``): for a label set of its own, each label both sets share keeps its row, and the
    blank its row; the other rows keep their fresh initialisation. A message says what was kept."""
    weights, old_labels = source_weights(path)
    classifier = weights.get("decoder.layers.0.weight")
    classes = classifier.shape[0] if classifier is not None else 0
    if old_labels is None and classes == config.num_classes(DEFAULT_LABELS):
        old_labels = DEFAULT_LABELS  # upstream's checkpoints name no labels: English's
    same_labels = old_labels is not None and list(old_labels) == list(labels)
    own = model.state_dict()
    kept, remapped = 0, []
    for key, value in own.items():
        if key not in weights:
            raise ckpt_io.CheckpointError(f"{path}: no {key}: not a model of this config")
        if key.startswith("decoder.") and not same_labels:
            remapped.append(key)
        elif weights[key].shape != value.shape:
            raise ckpt_io.CheckpointError(
                f"{path}: {key} has shape {tuple(weights[key].shape)}, the config's model "
                f"{tuple(value.shape)}: fine-tune with the config the checkpoint was trained with"
            )
        else:
            value.copy_(weights[key])
            kept += 1
    note = "the classifier included"
    if remapped:
        if old_labels is None:
            raise ckpt_io.CheckpointError(
                f"{path}: its classifier has {classes} classes, not "
                f"{config.num_classes(labels)}, and the checkpoint names no labels to map"
            )
        rows = {label: i for i, label in enumerate(old_labels)}
        pairs = [(i, rows[label]) for i, label in enumerate(labels) if label in rows]
        pairs.append((len(labels), len(old_labels)))  # the blank, last in both
        for key in remapped:
            for new, old in pairs:
                own[key][new] = weights[key][old]
        new_labels = " ".join(repr(label) for label in labels if label not in rows)
        note = (
            f"the classifier re-initialised for the new labels, keeping the rows of the "
            f"{len(pairs) - 1} labels both share and the blank; new: {new_labels or 'none'}"
        )
    logger.info(
        f"initialised from {path}: kept {kept} tensors ({note}); the optimizer, the LR schedule "
        "and the step start afresh"
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------
# Building the run


def build_run(args: argparse.Namespace) -> Run:
    """Config, loaders, model, optimizer and logger; the checkpoint to continue from is loaded."""
    device, rank, world_size = distributed.init(args.device, args.local_rank, args.cudnn_benchmark)
    seed_everything(args.seed + rank)
    cfg = load_config(args)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    train_loader = build_split_loader(
        args, cfg, "train", args.train_manifests, device, rank, world_size
    )
    val_loader = None
    if args.val_manifests:
        val_loader = build_split_loader(
            args, cfg, "val", args.val_manifests, device, rank, world_size
        )
    logger = build_logger(args, rank)  # after the data are found: a missing manifest is one line
    logger.log_params({**vars(args), "world_size": world_size, "device": str(device)})
    accum = args.grad_accumulation_steps
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch == 0:
        sys.exit(
            f"error: the training set gives {len(train_loader)} micro-batches of "
            f"{args.batch_size // accum} per process, fewer than one step of {accum}: lower "
            "BATCH_SIZE or add data"
        )

    checkpointer = ckpt_io.Checkpointer(
        Path(args.output_dir), model_name(cfg), args.keep_milestones
    )
    model = config.build_model(cfg)
    if args.init_from and not (args.resume and checkpointer.tracked()):
        with torch.no_grad():
            init_from(model, Path(args.init_from), list(cfg["labels"]), logger)
    model = model.to(device, getattr(torch, args.dtype))
    logger.info(f"Model size: {num_parameters(model) / 1e6:.1f}M params ({model_name(cfg)})")
    betas = {"betas": tuple(args.betas)} if args.betas else {}
    optimizer = build_optimizer(
        args.optimizer,
        parameter_groups(model, args.weight_decay_norm_and_bias),
        args.lr,
        args.weight_decay,
        **betas,
    )
    fp16 = args.amp and args.precision == "fp16"
    run = Run(
        args=args,
        cfg=cfg,
        device=device,
        rank=rank,
        world_size=world_size,
        logger=logger,
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        model=model,
        forward=model,
        ema_model=make_ema_model(model).eval() if args.ema > 0 else None,
        ctc=CTCLoss(config.num_classes(cfg["labels"])),
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=fp16),
        schedule=LRSchedule(
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=args.warmup_epochs,
            hold_epochs=args.hold_epochs,
            num_epochs=args.epochs,
            policy=args.lr_policy,
            exp_gamma=args.lr_exp_gamma,
            min_lr=args.min_lr,
            order=args.lr_order,
        ),
        checkpointer=checkpointer,
    )
    wrap_model(run)
    if args.pre_allocate_range and device.type == "cuda":
        pre_allocate(run)  # draws random numbers: before the saved random state is restored
    resume(run)
    return run


def wrap_model(run: Run) -> None:
    """DDP with several processes, and with ``--compile`` the compiled step: compiling the (DDP)
    module lets dynamo split the graph at DDP's gradient buckets. Evaluation and checkpoints keep
    using the plain modules."""
    if run.world_size > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    run.forward = torch.compile(run.model) if run.args.compile else run.model


def pre_allocate(run: Run) -> None:
    """Run forward/backward on the largest batches expected so the CUDA caching allocator is warm
    (upstream train.py's ``--pre_allocate_range``); BatchNorm statistics are restored afterwards
    (upstream left them polluted by the random batches)."""
    model, device = run.model, run.device
    saved = copy.deepcopy(unwrap(model).state_dict())
    n_feats = run.cfg[config.model_section(run.cfg)]["encoder"]["in_feats"]
    micro_batch = run.args.batch_size // run.accum
    lo, hi = run.args.pre_allocate_range
    for frames in range(lo, hi + 16, 16):
        feats = torch.randn(micro_batch, n_feats, frames, device=device)
        lens = torch.full((micro_batch,), frames, device=device)
        txt = torch.randint(0, len(run.labels), (micro_batch, 100), device=device)
        txt_lens = torch.full((micro_batch,), 100, device=device)
        with run.autocast():
            log_probs, enc_lens = model(feats, lens)
        run.ctc(log_probs, txt, enc_lens, txt_lens).backward()
        model.zero_grad(set_to_none=True)
    unwrap(model).load_state_dict(saved)
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Steps


@torch.no_grad()
def evaluate(model, loader, ctc: CTCLoss, labels: list[str], autocast, device) -> dict[str, float]:
    """Corpus WER and mean loss over the whole evaluation set; errors, words and losses are summed
    over ranks, so the WER is exact for any number of processes."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    errors, words, loss_sum, count = 0, 0, 0.0, 0
    for feats, feat_lens, txt, txt_lens in loader:
        with autocast():
            log_probs, enc_lens = model(feats, feat_lens)
        losses = ctc.per_utterance(log_probs, txt, enc_lens, txt_lens)
        hyps = greedy_texts(log_probs, enc_lens, labels)
        _, e, w = word_error_rate(hyps, references(txt, txt_lens, labels))
        errors, words = errors + e, words + w
        loss_sum, count = loss_sum + losses.sum().item(), count + len(hyps)
    errors, words, loss_sum, count = distributed.sum_over_ranks(
        [errors, words, loss_sum, count], device
    )
    model.train(was_training)
    return {
        "loss": loss_sum / max(count, 1),
        "wer": 100.0 * errors / words if words else float("nan"),
        "took": time.perf_counter() - t0,
    }


def references(txt: torch.Tensor, txt_lens: torch.Tensor, labels: list[str]) -> list[str]:
    txt, txt_lens = txt.cpu(), txt_lens.cpu()
    return ["".join(labels[j] for j in txt[i, : txt_lens[i]].tolist()) for i in range(len(txt))]


def run_evaluation(run: Run) -> float | None:
    """Evaluate the raw and the EMA weights; the EMA model's WER when EMA is on (upstream's
    choice for the best checkpoint), else the raw model's; None without a dev set."""
    if run.val_loader is None:
        return None
    run.last_eval_step = run.state.step
    wer = None
    # The plain module, not DDP: DDP's forward broadcasts buffers, a collective that hangs when
    # the ranks have different numbers of evaluation batches (or none at all).
    for subset, model in (("dev", unwrap(run.model)), ("dev_ema", run.ema_model)):
        if model is None:
            continue
        result = evaluate(model, run.val_loader, run.ctc, run.labels, run.autocast, run.device)
        run.logger.log(run.where(), result, subset, tb_step=run.state.step)
        wer = result["wer"]
    return wer


def train_step(run: Run, batch: tuple, last_micro_batch: bool) -> tuple[float, tuple]:
    """Forward and backward of one micro-batch; returns ``(loss summed over ranks, (log_probs,
    enc_lens))``, the loss NaN when some rank's loss is not finite (then nothing is accumulated).

    DDP all-reduces gradients only on the last micro-batch of a step (``no_sync`` before)."""
    feats, feat_lens, txt, txt_lens = batch
    model = run.model
    skip_sync = run.world_size > 1 and not last_micro_batch
    with model.no_sync() if skip_sync else contextlib.nullcontext():
        with run.autocast():
            log_probs, enc_lens = run.forward(feats, feat_lens)
        loss = run.ctc(log_probs, txt, enc_lens, txt_lens) / run.accum
        # Every rank must agree to skip, or DDP's gradient all-reduce would hang. One all-reduce
        # (and one host sync) carries both the finite count and the loss sum.
        value = loss.detach().double()
        finite = torch.isfinite(value)
        reduced = distributed.all_reduce(torch.stack([finite.double(), torch.nan_to_num(value)]))
        finite_ranks, loss_sum = reduced.tolist()
        if finite_ranks < run.world_size:
            return math.nan, (log_probs, enc_lens)
        run.scaler.scale(loss).backward()
    return loss_sum, (log_probs, enc_lens)


def note_nonfinite(run: Run, what: str = "loss") -> None:
    run.nonfinite_run += 1
    run.nonfinite_total += 1
    skipped = "batch" if what == "loss" else "step"
    run.logger.info(
        f"non-finite {what} at step {run.state.step + 1}; {skipped} skipped "
        f"({run.nonfinite_total} so far)"
    )
    if run.nonfinite_run >= run.args.max_nonfinite_steps:
        raise Diverged(
            f"error: {run.nonfinite_run} consecutive non-finite losses: the run diverged. Lower "
            "the LR, check the data, or resume from an earlier checkpoint."
        )


def gradients_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient is finite (after DDP's all-reduce: the same answer on every rank)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # One norm kernel per group of tensors and one host sync: an inf or NaN makes its norm one.
    return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()) if grads else True


def optimizer_step(run: Run) -> bool:
    """Clip (optionally), step, clear the gradients, update the EMA weights; False when the step
    was skipped for non-finite gradients (a finite loss can still overflow in backward). With
    fp16 the GradScaler finds those itself and lowers its scale, as AMP intends."""
    if not run.scaler.is_enabled() and not gradients_finite(run.model):
        run.optimizer.zero_grad(set_to_none=True)
        note_nonfinite(run, "gradient")
        return False
    if run.args.clip_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema_model is not None:
        apply_ema(unwrap(run.model), run.ema_model, run.args.ema)
    run.state.step += 1
    run.steps_this_job += 1
    run.nonfinite_run = 0
    return True


def log_step(run: Run, loss: float, utts: int, took: float, outputs: tuple, batch: tuple) -> None:
    """The training line of this step: loss, WER of the last micro-batch, throughput, LR."""
    log_probs, enc_lens = outputs
    _, _, txt, txt_lens = batch
    hyps = greedy_texts(log_probs.detach(), enc_lens, run.labels)
    refs = references(txt, txt_lens, run.labels)
    wer, _, _ = word_error_rate(hyps, refs)
    if run.state.step % run.args.prediction_frequency == 0:
        run.logger.info(f"  Decoded:   {hyps[0][:90]}")
        run.logger.info(f"  Reference: {refs[0][:90]}")
    metrics = {
        "loss": loss,
        "wer": 100.0 * wer,
        "throughput": utts / took,
        "took": took,
        "lrate": run.optimizer.param_groups[0]["lr"],
    }
    if run.nonfinite_total:
        metrics["nonfinite"] = run.nonfinite_total
    run.logger.log(run.where(), metrics, "train", tb_step=run.state.step)


def evaluate_and_keep_best(run: Run) -> None:
    wer = run_evaluation(run)
    state = run.state
    if wer is not None and wer < state.best_wer and state.epoch >= run.args.save_best_from:
        state.best_wer = wer  # recorded before saving (upstream saved the previous best)
        save(run, run.checkpointer.best_path, mid_epoch=True)


def skip_batches(loader, count: int) -> Iterator:
    """The loader's batches after the first ``count`` (a resumed epoch); samplers that can skip
    without loading audio do so."""
    if count and hasattr(loader, "skip_batches"):
        return iter(loader.skip_batches(count))
    it = iter(loader)
    for _ in range(count):
        next(it, None)
    return it


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: leave now
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, device) -> bool:
        """True on every rank when any rank was signalled (so all save and stop together)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        return bool(distributed.all_reduce(flag, dist.ReduceOp.MAX).item())


# --------------------------------------------------------------------------------------------
# Epochs


def train_one_epoch(run: Run) -> bool:
    """Train the rest of ``run.state.epoch``; True when the job must stop inside it (a step limit
    or a signal: a checkpoint has been saved)."""
    args, state, accum = run.args, run.state, run.accum
    run.train_loader.set_epoch(state.epoch)
    t0, utts, loss_total, steps = time.perf_counter(), 0, 0.0, 0
    step_loss, step_utts, accumulated, step_t0 = 0.0, 0, 0, time.perf_counter()
    steps_left = run.steps_per_epoch - state.epoch_batches_done // accum
    batches = progress(
        skip_batches(run.train_loader, state.epoch_batches_done),
        total=steps_left * accum,
        desc=f"epoch {state.epoch}",
        enabled=run.rank == 0,
    )
    run.optimizer.zero_grad(set_to_none=True)
    for batch in batches:
        state.epoch_batches_done += 1
        if accumulated == 0:
            set_lr(run.optimizer, lr_for_step(state.step + 1, args.lr, run.schedule))
            step_loss, step_utts, step_t0 = 0.0, 0, time.perf_counter()
        loss_sum, outputs = train_step(run, batch, last_micro_batch=accumulated + 1 == accum)
        if math.isnan(loss_sum):
            note_nonfinite(run)
            continue
        step_loss += loss_sum / run.world_size
        step_utts += batch[0].size(0) * run.world_size
        accumulated += 1
        if accumulated < accum:
            continue

        stepped = optimizer_step(run)
        accumulated = 0
        if not stepped:
            continue
        steps += 1
        loss_total, utts = loss_total + step_loss, utts + step_utts
        if state.step % args.log_frequency == 0:
            took = time.perf_counter() - step_t0
            log_step(run, step_loss, step_utts, took, outputs, batch)
        if state.step % args.eval_frequency == 0:
            evaluate_and_keep_best(run)
        if steps >= steps_left:
            break  # leftover micro-batches (fewer than one step) are dropped, not carried over
        limit = args.max_steps_this_job and run.steps_this_job >= args.max_steps_this_job
        if limit or run.stop.agreed(run.device):
            reason = run.stop.signal_name or f"--max_steps_this_job={args.max_steps_this_job}"
            run.logger.info(f"stopping at step {state.step} ({reason}); saving a checkpoint")
            save(run, run.checkpointer.step_path(state.epoch, state.step), mid_epoch=True)
            return True

    took = time.perf_counter() - t0
    run.epoch_throughputs.append(utts / took)
    metrics = {"throughput": utts / took, "took": took, "loss": loss_total / max(steps, 1)}
    run.logger.log((state.epoch,), metrics, "train_avg")
    return False


def end_epoch(run: Run, start_epoch: int) -> bool:
    """Save the finished epoch's checkpoint when due; True when this job's epochs are done."""
    args, state = run.args, run.state
    epoch = state.epoch
    done_epochs = epoch - start_epoch + 1
    job_done = 0 < args.epochs_this_job <= done_epochs
    due = epoch % args.save_frequency == 0 or epoch in args.keep_milestones
    if due or epoch == args.epochs or job_done:
        state.epoch_batches_done = 0  # the checkpoint records the finished epoch (upstream's)
        save(run, run.checkpointer.epoch_path(epoch), mid_epoch=False)
    state.epoch, state.epoch_batches_done = epoch + 1, 0
    if job_done:
        run.logger.info(f"stopping after {done_epochs} epochs this job (EPOCHS_THIS_JOB)")
    return job_done


def train(run: Run) -> None:
    """The epochs left of the schedule (or of this job), then the final evaluation."""
    run.stop.install()
    run.model.train()
    start_epoch, stopped_early = run.state.epoch, False
    while run.state.epoch <= run.args.epochs and not stopped_early:
        stopped_early = train_one_epoch(run) or end_epoch(run, start_epoch)
    if run.epoch_throughputs:
        n = min(run.args.benchmark_epochs_num, len(run.epoch_throughputs))
        mean = sum(run.epoch_throughputs[-n:]) / n
        run.logger.log((), {"throughput": mean, "benchmark_epochs_num": n}, "train_avg")
    if not stopped_early and run.last_eval_step != run.state.step:
        run_evaluation(run)  # the final evaluation, unless the last step was just evaluated


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    check_args(args)
    try:
        run = build_run(args)
    except (FileNotFoundError, ManifestError, ckpt_io.CheckpointError, config.ConfigError) as e:
        # MissingAudioError is a FileNotFoundError. One line, not a traceback: what is missing.
        hint = ""
        if str(e).startswith("manifest not found"):
            hint = (
                " -- download and convert LibriSpeech (scripts/download_librispeech.sh, "
                "scripts/preprocess_librispeech.sh), or set DATA_DIR / TRAIN_MANIFESTS / "
                "VAL_MANIFESTS (bash scripts/quickstart.sh makes a small corpus offline)"
            )
        print(f"error: {e}{hint}", file=sys.stderr)
        distributed.shutdown()
        return 2
    try:
        train(run)
    except Diverged as e:
        run.logger.info(str(e))
        return 3
    finally:
        run.logger.close()
        # DDP's reducer must go before its process group: destroyed after it, at interpreter
        # exit, it can abort the process ("terminate called without an active exception").
        run.model = unwrap(run.model)
        gc.collect()
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
