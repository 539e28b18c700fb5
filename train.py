"""Train Jasper or QuartzNet with CTC (spec 7).

One process per GPU through ``torchrun`` (NCCL on GPUs, gloo on CPU), or a single CPU/GPU process.
The step loop follows upstream's published recipe: features in fp32 outside autocast, the model under
``torch.autocast`` (fp16 with a GradScaler, or bf16), CTC in fp32, gradient accumulation with DDP
``no_sync``, Novograd, the LR set before each optimizer step, EMA after it, evaluation of the raw
and the EMA weights. What upstream got wrong is fixed here (spec 14): warmup is not skipped, the
best checkpoint records its own WER, a non-finite loss never reaches the weights, leftover
micro-batches never leak into the next epoch, and a resumed run continues exactly where it stopped.

Usage: ``python train.py --model_config configs/jasper_tiny.yaml --dataset_dir DIR --train_manifests
A.json --val_manifests B.json --output_dir OUT`` (``scripts/train.sh`` sets the recipe's values).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from common import checkpoint as ckpt_io
from common.logger import Logger, progress
from common.metrics import ctc_greedy_text, word_error_rate
from common.optimizers import apply_ema, build_optimizer, lr_for_step, set_lr
from jasper import config
from jasper.model import CTCLoss, Jasper, greedy_decode, num_parameters

OPTIMIZERS = ("novograd", "fused_novograd", "adamw", "lamb")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a Jasper/QuartzNet CTC model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("training setup")
    t.add_argument("--epochs", type=int, default=400, help="total epochs of the schedule")
    t.add_argument("--warmup_epochs", type=float, default=0, help="linear LR warmup, in epochs")
    t.add_argument("--hold_epochs", type=float, default=0, help="epochs at peak LR after warmup")
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
    t.add_argument("--seed", type=int, default=42, help="seed; rank r uses seed + r for its RNGs")
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
        default=32,
        help="utterances per GPU per optimizer step (micro-batch = batch_size / accumulation)",
    )
    o.add_argument("--grad_accumulation_steps", type=int, default=1, help="micro-batches per step")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default="novograd")
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    o.add_argument("--min_lr", type=float, default=1e-5, help="learning-rate floor")
    o.add_argument(
        "--lr_policy",
        choices=("exponential", "legacy", "cosine"),
        default="exponential",
        help="exponential/legacy: upstream's; cosine: per-step cosine decay after warmup and hold",
    )
    o.add_argument(
        "--lr_exp_gamma", type=float, default=0.99, help="per-epoch decay after the hold"
    )
    o.add_argument(
        "--lr_order",
        choices=("published", "upstream-current"),
        default="published",
        help="published: step s uses policy(s) (the recipe behind the published results); "
        "upstream-current: step s uses policy(s-1), step 1 at peak LR (spec 14.10)",
    )
    o.add_argument("--weight_decay", type=float, default=1e-3)
    o.add_argument(
        "--betas",
        type=float,
        nargs=2,
        metavar=("BETA1", "BETA2"),
        default=None,
        help="the optimizer's betas (default: its own, see common/optimizers.build_optimizer)",
    )
    o.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: off)")
    o.add_argument(
        "--clip_norm", type=float, default=0.0, help="gradient-norm clip (0: off, as upstream)"
    )

    d = p.add_argument_group("data")
    d.add_argument(
        "--dali_device",
        choices=("gpu", "cpu", "none"),
        default="gpu",
        help="DALI pipeline device; none: the PyTorch loader",
    )
    d.add_argument(
        "--bucketing",
        action="store_true",
        help="group utterances of similar length into batches (PyTorch loader)",
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
        default=False,
        help="continue from the newest readable checkpoint in --output_dir",
    )
    c.add_argument("--ckpt", default=None, help="start from this checkpoint (when none to resume)")
    c.add_argument("--save_frequency", type=int, default=10, help="save every N epochs")
    c.add_argument(
        "--keep_milestones",
        type=int,
        nargs="*",
        default=[100, 200, 300],
        help="epochs whose checkpoints are never deleted",
    )
    c.add_argument(
        "--save_best_from",
        type=int,
        default=380,
        help="epoch from which the best (EMA) dev WER is checkpointed",
    )
    c.add_argument("--eval_frequency", type=int, default=200, help="evaluate every N steps")
    c.add_argument("--log_frequency", type=int, default=25, help="log every N steps")
    c.add_argument(
        "--prediction_frequency",
        type=int,
        default=100,
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
# Setup


def setup_distributed(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """``(device, rank, world_size)``; initialises the process group when torchrun started us."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(args.local_rank)
        device = torch.device("cuda", args.local_rank)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return device, rank, world_size


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_model(cfg: dict, device: torch.device, dtype: torch.dtype = torch.float32) -> Jasper:
    n_classes = len(cfg["labels"]) + 1  # + CTC blank, the last class
    return Jasper(config.encoder(cfg), config.decoder(cfg, n_classes)).to(device, dtype)


def model_name(cfg: dict) -> str:
    return "QuartzNet" if config.model_section(cfg) == "quartznet" else "Jasper"


def build_loader(
    args: argparse.Namespace,
    cfg: dict,
    split: str,
    manifests: list[str],
    batch_size: int,
    device: torch.device,
    rank: int,
    world_size: int,
):
    """The batch iterator for ``split``: DALI or the PyTorch loader, chosen here and only here.

    Both yield ``(feats (B, F, T) fp32 on device, feat_lens, txt, txt_lens)`` and have ``len()``
    (batches per epoch, equal on every rank in training) and ``set_epoch(epoch)``.
    """
    dataset_kw, features_kw = config.input(cfg, split)
    train = split == "train"
    if args.dali_device != "none":
        from common.dali import DaliDataLoader

        return DaliDataLoader(
            manifests,
            args.dataset_dir,
            cfg["labels"],
            dataset_kw,
            features_kw,
            batch_size,
            train=train,
            device=args.dali_device,
            device_id=device.index if args.dali_device == "gpu" else None,
            world_size=world_size,
            rank=rank,
            seed=args.seed,
            grad_accumulation=args.grad_accumulation_steps if train else 1,
        )
    from common.dataset import AudioDataset, FeatureLoader, get_data_loader
    from common.features import FilterbankFeatures

    # Missing audio files are reported here, before any step (AudioDataset checks them all).
    dataset = AudioDataset(args.dataset_dir, manifests, cfg["labels"], seed=args.seed, **dataset_kw)
    loader = get_data_loader(
        dataset,
        batch_size,
        train=train,
        world_size=world_size,
        rank=rank,
        seed=args.seed,
        num_workers=args.num_workers,
        bucketing=args.bucketing and train,
        grad_accumulation=args.grad_accumulation_steps if train else 1,
    )
    features = FilterbankFeatures(**features_kw).to(device)
    features.train(train)
    return FeatureLoader(
        loader, features, device, dtype=getattr(torch, getattr(args, "dtype", "float32"))
    )


# --------------------------------------------------------------------------------------------
# Training state


class TrainState:
    """Where the run is: 1-based ``epoch`` in progress, ``step`` = optimizer steps done, the
    micro-batches of the current epoch already consumed, and the best dev WER so far."""

    def __init__(self) -> None:
        self.epoch = 1
        self.step = 0
        self.epoch_batches_done = 0
        self.best_wer = math.inf

    def to_dict(self) -> dict:
        return {
            "epoch_batches_done": self.epoch_batches_done,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_rng_pos": int(np.random.get_state()[2]),
            "python_rng": random.getstate(),
        }

    def restore_rngs(self, saved: dict) -> None:
        torch.set_rng_state(saved["torch_rng"])
        if torch.cuda.is_available() and saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        np.random.set_state(
            (
                "MT19937",
                saved["numpy_rng"].numpy().astype(np.uint32),
                saved["numpy_rng_pos"],
                0,
                0.0,
            )
        )
        version, internal, gauss = saved["python_rng"]
        random.setstate((version, tuple(internal), gauss))


def make_checkpoint(
    cfg: dict, state: TrainState, model, ema_model, optimizer, scaler, stop_mid_epoch: bool
) -> dict:
    return {
        "epoch": state.epoch,
        "step": state.step,
        "best_wer": state.best_wer if math.isfinite(state.best_wer) else 1e6,
        "state_dict": unwrap(model).state_dict(),
        "ema_state_dict": ema_model.state_dict() if ema_model is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "config": cfg,
        "labels": list(cfg["labels"]),
        "train_state": {**state.to_dict(), "mid_epoch": stop_mid_epoch},
    }


def restore_checkpoint(
    ckpt: dict, path, state: TrainState, model, ema_model, optimizer, scaler, logger
) -> None:
    ckpt_io.load_model_state(
        unwrap(model), ckpt_io.convert_legacy_state_dict(ckpt["state_dict"]), path
    )
    if ema_model is not None:
        ckpt_io.load_model_state(ema_model, ckpt_io.model_weights(ckpt, ema=True, path=path), path)
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    state.step = int(ckpt.get("step", 0))
    best = ckpt.get("best_wer")
    state.best_wer = float(best) if best is not None and best < 1e5 else math.inf
    train_state = ckpt.get("train_state")
    if train_state and train_state.get("mid_epoch"):
        state.epoch = int(ckpt["epoch"])
        state.epoch_batches_done = int(train_state["epoch_batches_done"])
    else:  # an end-of-epoch (or upstream) checkpoint: the next epoch starts fresh
        state.epoch = int(ckpt.get("epoch", 0)) + 1
        state.epoch_batches_done = 0
    if train_state:
        state.restore_rngs(train_state)
    logger.info(
        f"resumed from {path}: epoch {state.epoch}, step {state.step}, "
        f"{state.epoch_batches_done} micro-batches of the epoch done"
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------
# Steps


def all_reduce(value: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value, op=op)
    return value


@torch.no_grad()
def evaluate(model, loader, ctc: CTCLoss, labels: list[str], amp_ctx, device) -> dict[str, float]:
    """Corpus WER and mean loss over the whole evaluation set; errors, words and losses are summed
    over ranks, so the WER is exact for any number of processes."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # errors, words, loss*B, utterances
    for feats, feat_lens, txt, txt_lens in loader:
        with amp_ctx():
            log_probs, enc_lens = model(feats, feat_lens)
        losses = ctc.per_utterance(log_probs, txt, enc_lens, txt_lens)
        hyps, refs = decode_batch(log_probs, enc_lens, txt, txt_lens, labels)
        _, errors, words = word_error_rate(hyps, refs)
        sums += torch.tensor(
            [errors, words, losses.sum().item(), len(refs)], dtype=torch.float64, device=device
        )
    all_reduce(sums)
    model.train(was_training)
    errors, words, loss_sum, count = sums.tolist()
    return {
        "loss": loss_sum / max(count, 1),
        "wer": 100.0 * errors / words if words else float("nan"),
        "took": time.perf_counter() - t0,
    }


def decode_batch(log_probs, enc_lens, txt, txt_lens, labels) -> tuple[list[str], list[str]]:
    ids = greedy_decode(log_probs, enc_lens).cpu()
    enc_lens, txt, txt_lens = enc_lens.cpu(), txt.cpu(), txt_lens.cpu()
    hyps = [ctc_greedy_text(ids[i, : enc_lens[i]].tolist(), labels) for i in range(len(ids))]
    refs = ["".join(labels[j] for j in txt[i, : txt_lens[i]].tolist()) for i in range(len(txt))]
    return hyps, refs


def skip_batches(loader, count: int) -> Iterator:
    """The loader's batches after the first ``count`` (a resumed epoch); samplers that can skip
    without loading audio do so."""
    if count and hasattr(loader, "skip_batches"):
        return iter(loader.skip_batches(count))
    it = iter(loader)
    for _ in range(count):
        next(it, None)
    return it


def pre_allocate(model, ctc, args, cfg, device, amp_ctx, micro_batch: int) -> None:
    """Run forward/backward on the largest batches expected so the CUDA caching allocator is warm
    (spec 7.2 step 11); BatchNorm statistics are restored afterwards (upstream polluted them: 14.21)."""
    saved = copy.deepcopy(unwrap(model).state_dict())
    n_feats = cfg[config.model_section(cfg)]["encoder"]["in_feats"]
    lo, hi = args.pre_allocate_range
    for frames in range(lo, hi + 16, 16):
        feats = torch.randn(micro_batch, n_feats, frames, device=device)
        lens = torch.full((micro_batch,), frames, device=device)
        txt = torch.randint(0, len(cfg["labels"]), (micro_batch, 100), device=device)
        txt_lens = torch.full((micro_batch,), 100, device=device)
        with amp_ctx():
            log_probs, enc_lens = model(feats, lens)
        ctc(log_probs, txt, enc_lens, txt_lens).backward()
        model.zero_grad(set_to_none=True)
    unwrap(model).load_state_dict(saved)
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
        return bool(all_reduce(flag, dist.ReduceOp.MAX).item())


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.batch_size % args.grad_accumulation_steps:
        sys.exit("error: --batch_size must be a multiple of --grad_accumulation_steps")
    if args.prediction_frequency % args.log_frequency:
        sys.exit("error: --prediction_frequency must be a multiple of --log_frequency")
    if args.dtype == "float64" and (args.amp or args.dali_device != "none"):
        sys.exit(
            "error: --dtype float64 needs --dali_device none (DALI computes float32) and no --amp"
        )
    device, rank, world_size = setup_distributed(args)
    seed_everything(args.seed + rank)

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
    labels = list(cfg["labels"])
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    subsets = ("train", "train_avg", "dev") + (("dev_ema",) if args.ema > 0 else ())
    logger = Logger(
        output_dir,
        args.log_file,
        enabled=rank == 0,
        tensorboard_subsets=[s for s in subsets if s != "train_avg"],
    )
    logger.log_params({**vars(args), "world_size": world_size, "device": str(device)})

    micro_batch = args.batch_size // args.grad_accumulation_steps
    accum = args.grad_accumulation_steps
    train_loader = build_loader(
        args, cfg, "train", args.train_manifests, micro_batch, device, rank, world_size
    )
    val_loader = (
        build_loader(args, cfg, "val", args.val_manifests, micro_batch, device, rank, world_size)
        if args.val_manifests
        else None
    )
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch == 0:
        sys.exit(
            f"error: the training set gives {len(train_loader)} micro-batches of {micro_batch} per "
            f"process, fewer than one step of {accum}: lower BATCH_SIZE or add data"
        )

    model = build_model(cfg, device, getattr(torch, args.dtype))
    logger.info(f"Model size: {num_parameters(model) / 1e6:.1f}M params ({model_name(cfg)})")
    ctc = CTCLoss(len(labels) + 1)
    betas = {"betas": tuple(args.betas)} if args.betas else {}
    optimizer = build_optimizer(
        args.optimizer, model.parameters(), args.lr, args.weight_decay, **betas
    )
    amp_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)

    def amp_ctx():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)

    ema_model = copy.deepcopy(model).eval() if args.ema > 0 else None
    state = TrainState()
    checkpointer = ckpt_io.Checkpointer(output_dir, model_name(cfg), args.keep_milestones)
    found = checkpointer.last_checkpoint() if args.resume else None
    if found is None and args.ckpt:
        found = (Path(args.ckpt), ckpt_io.load_checkpoint(args.ckpt))
    if found is not None:
        restore_checkpoint(found[1], found[0], state, model, ema_model, optimizer, scaler, logger)

    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if args.pre_allocate_range and device.type == "cuda":
        pre_allocate(model, ctc, args, cfg, device, amp_ctx, micro_batch)

    def lr_at(step: int) -> float:
        return lr_for_step(
            step, args.lr, order=args.lr_order, steps_per_epoch=steps_per_epoch,
            warmup_epochs=args.warmup_epochs, hold_epochs=args.hold_epochs,
            num_epochs=args.epochs, policy=args.lr_policy, exp_gamma=args.lr_exp_gamma,
            min_lr=args.min_lr,
        )  # fmt: skip

    def save(path: Path, mid_epoch: bool) -> None:
        if rank == 0:
            checkpointer.save(
                make_checkpoint(cfg, state, model, ema_model, optimizer, scaler, mid_epoch), path
            )
        if dist.is_initialized():
            dist.barrier()

    last_eval_step = -1

    def run_evaluation() -> float | None:
        nonlocal last_eval_step
        if val_loader is None:
            return None
        last_eval_step = state.step
        wer = None
        for subset, m in (("dev", model), ("dev_ema", ema_model)):
            if m is None:
                continue
            result = evaluate(m, val_loader, ctc, labels, amp_ctx, device)
            where = (state.epoch, state.epoch_batches_done // accum, steps_per_epoch)
            logger.log(where, result, subset, tb_step=state.step)
            wer = result["wer"]
        return wer  # the EMA model's WER when EMA is on (upstream's choice for the best file)

    stop = StopRequest()
    stop.install()
    start_epoch, steps_this_job, nonfinite_run, nonfinite_total = state.epoch, 0, 0, 0
    epoch_throughputs: list[float] = []
    stopped_early = False
    model.train()

    while state.epoch <= args.epochs and not stopped_early:
        epoch = state.epoch
        train_loader.set_epoch(epoch)
        epoch_t0, epoch_utts, epoch_loss, epoch_steps = time.perf_counter(), 0, 0.0, 0
        step_loss, step_utts, accumulated, step_t0 = 0.0, 0, 0, time.perf_counter()
        batches = skip_batches(train_loader, state.epoch_batches_done)
        steps_left = steps_per_epoch - state.epoch_batches_done // accum
        bar = progress(batches, total=steps_left * accum, desc=f"epoch {epoch}", enabled=rank == 0)
        optimizer.zero_grad(set_to_none=True)
        for feats, feat_lens, txt, txt_lens in bar:
            state.epoch_batches_done += 1
            if accumulated == 0:
                set_lr(optimizer, lr_at(state.step + 1))
                step_loss, step_utts, step_t0 = 0.0, 0, time.perf_counter()
            sync_ctx = (
                model.no_sync()
                if world_size > 1 and accumulated + 1 < accum
                else contextlib.nullcontext()
            )
            with sync_ctx:
                with amp_ctx():
                    log_probs, enc_lens = model(feats, feat_lens)
                loss = ctc(log_probs, txt, enc_lens, txt_lens) / accum
                # Every rank must agree to skip, or DDP's gradient all-reduce would hang. One
                # all-reduce (and one host sync) carries both the finite count and the loss sum.
                loss_value = loss.detach().double()
                reduced = all_reduce(torch.stack([torch.isfinite(loss_value).float(),
                                                  torch.nan_to_num(loss_value)]))  # fmt: skip
                finite_ranks, loss_sum = reduced.tolist()
                if finite_ranks < world_size:
                    nonfinite_run += 1
                    nonfinite_total += 1
                    logger.info(f"non-finite loss at step {state.step + 1}; batch skipped "
                                f"({nonfinite_total} so far)")  # fmt: skip
                    if nonfinite_run >= args.max_nonfinite_steps:
                        logger.info(
                            f"error: {nonfinite_run} consecutive non-finite losses: the run "
                            "diverged. Lower the LR, check the data, or resume from an earlier "
                            "checkpoint."
                        )
                        return 3
                    continue
                nonfinite_run = 0
                scaler.scale(loss).backward()
            step_loss += loss_sum / world_size
            step_utts += feats.size(0) * world_size
            accumulated += 1
            if accumulated < accum:
                continue

            # ---- optimizer step
            if args.clip_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema_model is not None:
                apply_ema(unwrap(model), ema_model, args.ema)
            state.step += 1
            steps_this_job += 1
            epoch_steps += 1
            accumulated = 0
            epoch_loss += step_loss
            epoch_utts += step_utts
            step_time = time.perf_counter() - step_t0

            if state.step % args.log_frequency == 0:
                hyps, refs = decode_batch(log_probs.detach(), enc_lens, txt, txt_lens, labels)
                wer, _, _ = word_error_rate(hyps, refs)
                if state.step % args.prediction_frequency == 0:
                    logger.info(f"  Decoded:   {hyps[0][:90]}")
                    logger.info(f"  Reference: {refs[0][:90]}")
                logger.log(
                    (epoch, state.epoch_batches_done // accum, steps_per_epoch),
                    {
                        "loss": step_loss,
                        "wer": 100.0 * wer,
                        "throughput": step_utts / step_time,
                        "took": step_time,
                        "lrate": optimizer.param_groups[0]["lr"],
                        **({"nonfinite": nonfinite_total} if nonfinite_total else {}),
                    },
                    "train",
                    tb_step=state.step,
                )
            if state.step % args.eval_frequency == 0:
                wer = run_evaluation()
                if wer is not None and wer < state.best_wer and epoch >= args.save_best_from:
                    state.best_wer = wer  # recorded before saving (upstream saved the old one)
                    save(checkpointer.best_path, mid_epoch=True)
            if epoch_steps >= steps_left:
                break  # leftover micro-batches (fewer than one step) are dropped, not carried over
            limit = args.max_steps_this_job and steps_this_job >= args.max_steps_this_job
            if limit or stop.agreed(device):
                reason = stop.signal_name or f"--max_steps_this_job={args.max_steps_this_job}"
                logger.info(f"stopping at step {state.step} ({reason}); saving a checkpoint")
                save(checkpointer.step_path(epoch, state.step), mid_epoch=True)
                stopped_early = True
                break
        if stopped_early:
            break

        took = time.perf_counter() - epoch_t0
        epoch_throughputs.append(epoch_utts / took)
        logger.log(
            (epoch,),
            {
                "throughput": epoch_utts / took,
                "took": took,
                "loss": epoch_loss / max(epoch_steps, 1),
            },
            "train_avg",
        )
        state.epoch += 1
        state.epoch_batches_done = 0
        done_epochs = epoch - start_epoch + 1
        last = epoch == args.epochs
        job_done = 0 < args.epochs_this_job <= done_epochs
        if epoch % args.save_frequency == 0 or epoch in args.keep_milestones or last or job_done:
            state.epoch = epoch  # checkpoint records the finished epoch, upstream's convention
            save(checkpointer.epoch_path(epoch), mid_epoch=False)
            state.epoch = epoch + 1
        if job_done:
            logger.info(f"stopping after {done_epochs} epochs this job (EPOCHS_THIS_JOB)")
            stopped_early = True

    if epoch_throughputs:
        n = min(args.benchmark_epochs_num, len(epoch_throughputs))
        logger.log(
            (),
            {"throughput": sum(epoch_throughputs[-n:]) / n, "benchmark_epochs_num": n},
            "train_avg",
        )
    if not stopped_early and last_eval_step != state.step:
        run_evaluation()  # the final evaluation, unless the last step was just evaluated
    logger.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
