#!/usr/bin/env python3
"""Convert between NeMo ``.nemo`` files and this recipe's ``.pt`` checkpoints, by extension.

- ``SRC.nemo -> DEST.pt``: a checkpoint with ``state_dict``, ``config`` (this recipe's YAML schema,
  front end set to reproduce NeMo's preprocessor) and ``labels``; ``inference.py`` rebuilds the model
  from it alone. ``--config_out`` also writes the config as YAML, e.g. for fine-tuning.
- ``SRC.pt -> DEST.nemo``: the EMA weights (``--no-ema``: the raw ones) and the checkpoint's own
  config; a checkpoint without one (upstream's, e.g. ``nvidia_quartznet_210504.pt``) needs
  ``--model_config``. NeMo's ``EncDecCTCModel.restore_from`` loads the result.

A DEST that is a folder receives ``<SRC stem>.pt`` or ``<SRC stem>.nemo``.

Usage::

    python utils/convert_nemo.py stt_de_quartznet15x5.nemo pretrained_models/quartznet_de.pt
    python utils/convert_nemo.py nvidia_quartznet_210504.pt quartznet.nemo \\
        --model_config configs/quartznet15x5_speedp-online-1.15_speca.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.checkpoint import CheckpointError, atomic_save, load_checkpoint
from jasper import config, nemo


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="a .nemo file or a .pt checkpoint")
    parser.add_argument("dest", type=Path, help="the .pt or .nemo file to write (or a folder)")
    parser.add_argument(
        "--model_config",
        "--dle_config_yaml",
        type=Path,
        default=None,
        help=".pt -> .nemo: YAML config for a checkpoint that does not carry its own",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=".pt -> .nemo: write the EMA weights (falls back to the raw ones with a warning)",
    )
    parser.add_argument(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=".pt -> .nemo: write tar.gz, as NeMo before 1.7 expects (newer NeMo reads both)",
    )
    parser.add_argument(
        "--config_out", type=Path, default=None, help=".nemo -> .pt: also write the config as YAML"
    )
    return parser


def _destination(src: Path, dest: Path, suffix: str) -> Path:
    if dest.is_dir():
        return dest / (src.stem + suffix)
    if dest.suffix != suffix:
        raise SystemExit(f"error: converting {src.name} gives a {suffix} file; DEST is {dest}")
    return dest


def nemo_to_checkpoint(src: Path, dest: Path, config_out: Path | None = None) -> Path:
    cfg, state_dict = nemo.load(src)
    dest = _destination(src, dest, ".pt")
    atomic_save({"state_dict": state_dict, "config": cfg, "labels": list(cfg["labels"])}, dest)
    if config_out is not None:
        config_out.parent.mkdir(parents=True, exist_ok=True)
        config_out.write_text(config.to_yaml(cfg), encoding="utf-8")
    return dest


def checkpoint_to_nemo(
    src: Path, dest: Path, model_config: Path | None = None, ema: bool = True, gzip: bool = False
) -> Path:
    ckpt = load_checkpoint(src)
    if model_config is not None:
        cfg = config.load(model_config)
    elif isinstance(ckpt.get("config"), dict):
        cfg = ckpt["config"]
        config.validate(cfg, source=f"{src} (config)")
    else:
        raise SystemExit(
            f"error: {src} carries no config; name the model's YAML with --model_config"
        )
    labels = ckpt.get("labels")
    if labels is not None and list(labels) != list(cfg["labels"]):
        raise SystemExit(f"error: the labels stored in {src} differ from the config's labels")
    dest = _destination(src, dest, ".nemo")
    return nemo.save(dest, cfg, ckpt, ema=ema, compress=gzip)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.src.suffix == ".nemo":
            out = nemo_to_checkpoint(args.src, args.dest, args.config_out)
        elif args.src.suffix in (".pt", ".pth", ".ckpt"):
            out = checkpoint_to_nemo(args.src, args.dest, args.model_config, args.ema, args.gzip)
        else:
            print(f"error: {args.src}: expected a .nemo or a .pt file", file=sys.stderr)
            return 2
    except (nemo.NemoFormatError, CheckpointError, config.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
