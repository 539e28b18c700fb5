#!/usr/bin/env python3
"""Grid-search the LM weight alpha and word bonus beta (and beam width) of the beam decoder.

Reads the log-probs that ``inference.py --save_logits`` writes (``{"names", "log_probs",
"labels", "blank"}``) and the references, either the manifests the logits came from
(``--manifests``, with ``--dataset_dir``: transcripts normalised as evaluation does, utterances
matched by the speed-1.0 file relative to the data folder, as predictions name them) or a file of
``<name>\\t<reference>`` lines (``--references``, the layout of ``--save_predictions``). Every
(beam width, alpha, beta) of the grid decodes all utterances; the LM and lexicon load once.

Writes ``<out>.md`` (a table of WER per setting, greedy first, the best in bold) and ``<out>.json``
(the same rows, the greedy WER and the best setting), and prints the best setting. Tune on a dev
split, then evaluate the chosen alpha and beta once on the test splits. With ``--checkpoint CKPT``
the best setting becomes the checkpoint's decoding settings (beam search with this LM, the best
alpha, beta and beam width, and the ``pad_leading`` the log-probs were made with; see
``jasper/decoding_settings.py``): ``inference.py``, ``inference.sh`` and ``evaluation.sh`` then
use them whenever they are not given.

Usage::

    python utils/tune_lm.py dev-other.logits.pt --manifests librispeech-dev-other-wav.json \\
        --dataset_dir /datasets/LibriSpeech --lm 4-gram.arpa.gz --out dev-other.lm_tuning \\
        [--alphas 0.5 1 1.5 ...] [--betas -1 0 1 ...] [--beam_widths 32 ...] [--num_workers N] \
        [--checkpoint Jasper_best_checkpoint.pt]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Literal

import torch

from common.checkpoint import CheckpointError
from common.dataset import read_manifests
from common.metrics import word_error_rate
from jasper import decoding_settings
from jasper.decoding import BeamDecoder, GreedyDecoder


def load_logits(path: str | Path) -> tuple[list[str], list[torch.Tensor], list[str], int | None]:
    """``(names, log_probs, labels, pad_leading)`` of a ``--save_logits`` file (``pad_leading``
    None for files written before it was recorded)."""
    saved = torch.load(path, weights_only=True)
    if saved["blank"] != len(saved["labels"]):
        raise ValueError(f"{path}: blank {saved['blank']} is not the last class")
    names, labels = list(saved["names"]), list(saved["labels"])
    return names, list(saved["log_probs"]), labels, saved.get("pad_leading")


def manifest_references(
    manifests: list[str], dataset_dir: str, labels: list[str]
) -> dict[str, str]:
    """Name -> normalised reference of every manifest entry with a transcript."""
    utterances = read_manifests(manifests, dataset_dir, labels, min_duration=0.0)
    root = Path(dataset_dir)
    references = {}
    for u in utterances:
        path = u.speed_one_file().path
        # Named as inference.py names predictions: relative to the data folder when inside it.
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        references[name] = "".join(labels[i] for i in u.ids)
    return references


def tsv_references(path: str | Path) -> dict[str, str]:
    """Name -> reference of a file of ``<name>\\t<reference>`` lines."""
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)


def tune(
    log_probs: list[torch.Tensor],
    references: list[str],
    labels: list[str],
    *,
    lm: str | Path,
    alphas: list[float],
    betas: list[float],
    beam_widths: list[int],
    lexicon: str | Path | Literal[False] | None = None,
    num_workers: int = 1,
) -> dict:
    """WER of greedy decoding and of every grid setting: ``{"greedy", "results", "best"}``."""
    greedy = [h.text for h in GreedyDecoder(labels).decode_batch(log_probs)]
    wer, errors, words = word_error_rate(greedy, references)
    out = {"greedy": {"wer": 100 * wer, "errors": errors, "words": words}, "results": []}
    base = BeamDecoder(labels, lm=lm, lexicon=lexicon, beam_width=beam_widths[0])
    for beam_width, alpha, beta in itertools.product(beam_widths, alphas, betas):
        start = time.perf_counter()
        with base.with_options(
            beam_width=beam_width, alpha=alpha, beta=beta, num_workers=num_workers
        ) as decoder:
            hypotheses = [h.text for h in decoder.decode_batch(log_probs)]
        wer, errors, words = word_error_rate(hypotheses, references)
        seconds = time.perf_counter() - start
        row = {"beam_width": beam_width, "alpha": alpha, "beta": beta, "wer": 100 * wer,
               "errors": errors, "words": words, "seconds": seconds}  # fmt: skip
        out["results"].append(row)
        print(
            f"beam {beam_width} alpha {alpha:g} beta {beta:g}: WER {100 * wer:.3f} % "
            f"({errors}/{words}) in {row['seconds']:.1f} s",
            flush=True,
        )
    out["best"] = min(out["results"], key=lambda r: (r["wer"], r["beam_width"]))
    return out


def markdown(table: dict, title: str) -> str:
    greedy, best = table["greedy"], table["best"]
    lines = [
        f"# {title}",
        "",
        "| beam width | alpha | beta | WER % | errors | words |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| greedy | | | {greedy['wer']:.3f} | {greedy['errors']} | {greedy['words']} |",
    ]
    for r in table["results"]:
        cells = [str(r["beam_width"]), f"{r['alpha']:g}", f"{r['beta']:g}", f"{r['wer']:.3f}"]
        if r is best:
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| {' | '.join(cells)} | {r['errors']} | {r['words']} |")
    return "\n".join(lines) + "\n"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("logits", type=Path, help="log-probs from inference.py --save_logits")
    refs = parser.add_mutually_exclusive_group(required=True)
    refs.add_argument("--manifests", nargs="+", help="manifests with the reference transcripts")
    refs.add_argument("--references", type=Path, help="<name>\\t<reference> lines")
    parser.add_argument("--dataset_dir", default=".", help="data folder of the manifests")
    parser.add_argument("--lm", type=Path, required=True, help="ARPA (.arpa, .arpa.gz) or KenLM")
    parser.add_argument(
        "--lexicon",
        default=None,
        help="word list or lexicon file (first column); default: the LM's unigrams",
    )
    parser.add_argument(
        "--use_lexicon",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restrict words to the lexicon (--no-use_lexicon: any letter sequence)",
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    parser.add_argument("--betas", type=float, nargs="+", default=[-1.0, 0.0, 1.0, 2.0, 3.0])
    parser.add_argument("--beam_widths", type=int, nargs="+", default=[32])
    parser.add_argument("--num_workers", type=int, default=4, help="decoding processes")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="store the best setting in this checkpoint as its decoding settings",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.checkpoint is not None and not args.checkpoint.is_file():  # before the search
        print(f"error: --checkpoint {args.checkpoint}: no such file", file=sys.stderr)
        return 2
    names, log_probs, labels, pad_leading = load_logits(args.logits)
    if args.manifests:
        references = manifest_references(args.manifests, args.dataset_dir, labels)
    else:
        references = tsv_references(args.references)
    missing = [n for n in names if n not in references]
    if missing:
        print(
            f"error: {len(missing)} of {len(names)} utterances have no reference, e.g. "
            f"{missing[0]!r}",
            file=sys.stderr,
        )
        return 1
    table = tune(
        log_probs, [references[n] for n in names], labels, lm=args.lm,
        alphas=args.alphas, betas=args.betas, beam_widths=args.beam_widths,
        lexicon=args.lexicon if args.use_lexicon else False, num_workers=args.num_workers,
    )  # fmt: skip
    table = {"logits": str(args.logits), "lm": str(args.lm), "utterances": len(names), **table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(table, indent=2) + "\n")
    title = f"LM tuning: {args.lm.name} on {args.logits.name} ({len(names)} utterances)"
    args.out.with_name(args.out.name + ".md").write_text(markdown(table, title))
    best = table["best"]
    print(
        f"best: --beam_width {best['beam_width']} --alpha {best['alpha']:g} --beta "
        f"{best['beta']:g}: WER {best['wer']:.3f} % (greedy {table['greedy']['wer']:.3f} %); "
        f"table in {args.out}.md and {args.out}.json"
    )
    if args.checkpoint is not None:
        settings = {"decoder": "beam", "beam_width": best["beam_width"], "lm": str(args.lm),
                    "lm_alpha": best["alpha"], "lm_beta": best["beta"]}  # fmt: skip
        if pad_leading is not None:
            settings["pad_leading"] = int(pad_leading)
        try:
            stored = decoding_settings.write(args.checkpoint, settings)
        except CheckpointError as e:
            print(f"error: the table is written, but not the checkpoint: {e}", file=sys.stderr)
            return 2
        print(f"decoding settings stored in {args.checkpoint}: {stored}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
