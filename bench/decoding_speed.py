"""Decoding speed: greedy, beam search, beam search with a word trigram LM (jasper/decoding.py).

Input: synthetic log-probs of 10 s utterances (500 encoder frames of 20 ms, K = 29: the English
labels and the blank), made from random sentences of the demo corpus' vocabulary
(``utils/demo_words.txt``): each letter is emitted on one of its ~3 frames, blanks elsewhere,
separators between words, plus Gaussian noise on the logits so that greedy decoding makes some
errors. The LM is a trigram built by ``utils/build_lm.py`` from other random sentences of the
same vocabulary (its unigrams are the lexicon). Speed depends on how peaked the log-probs are and
on the LM's size: the figures are for comparing decoders and settings on one machine, not a
promise for LibriSpeech with its 200k-word LMs.

RTF = seconds of decoding per second of audio, one process; utterances/s likewise. WER against the
sentences shows what each decoder buys.

    python bench/decoding_speed.py   # writes bench/results/decoding_speed.{md,json}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import machine
from common.metrics import word_error_rate
from jasper.decoding import FRAME_SECONDS, BeamDecoder, GreedyDecoder
from utils import build_lm

REPO = Path(__file__).resolve().parents[1]
LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
FRAMES_PER_LETTER = 3


def vocabulary(n: int) -> list[str]:
    lines = (REPO / "utils" / "demo_words.txt").read_text().splitlines()
    return [w for w in lines if w and not w.startswith("#")][:n]


def sentence(rng: np.random.Generator, words: list[str], n_frames: int) -> str:
    """Random words (Zipf-distributed by rank) while the spelled sentence fits ``n_frames``."""
    weights = 1 / np.arange(1, len(words) + 1)
    out: list[str] = []
    while True:
        word = str(rng.choice(words, p=weights / weights.sum()))
        if (len(" ".join(out)) + 1 + len(word)) * FRAMES_PER_LETTER > n_frames:
            return " ".join(out)
        out.append(word)


def log_probs_of(text: str, n_frames: int, noise: float, rng: np.random.Generator) -> torch.Tensor:
    """(n_frames, K): each character on one of its frames, blank on the others, plus noise."""
    blank = len(LABELS)
    target = np.full(n_frames, blank)
    for i, ch in enumerate(text):
        target[i * FRAMES_PER_LETTER + int(rng.integers(FRAMES_PER_LETTER))] = LABELS.index(ch)
    logits = rng.normal(0.0, noise, (n_frames, blank + 1))
    logits[np.arange(n_frames), target] += 6.0
    return torch.log_softmax(torch.from_numpy(logits).float(), dim=-1)


def measure(decoder, batch: list[torch.Tensor]) -> tuple[list[str], float]:
    decoder.decode_batch(batch[:2])  # warm-up (and worker processes started)
    start = time.perf_counter()
    texts = [h.text for h in decoder.decode_batch(batch)]
    return texts, time.perf_counter() - start


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--utterances", type=int, default=20, help="10 s utterances decoded")
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds per utterance")
    p.add_argument("--vocab", type=int, default=1000, help="words of utils/demo_words.txt used")
    p.add_argument("--lm_sentences", type=int, default=20000, help="LM training sentences")
    p.add_argument("--noise", type=float, default=1.2, help="std of the logit noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decoding_speed")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    rng = np.random.default_rng(args.seed)
    words = vocabulary(args.vocab)
    n_frames = round(args.seconds / FRAME_SECONDS)
    references = [sentence(rng, words, n_frames) for _ in range(args.utterances)]
    batch = [log_probs_of(text, n_frames, args.noise, rng) for text in references]
    corpus = [sentence(rng, words, n_frames).split() for _ in range(args.lm_sentences)]
    with tempfile.TemporaryDirectory() as tmp:
        lm = Path(tmp) / "lm.arpa"
        build_lm.write_arpa(build_lm.estimate(corpus, order=3), lm)
        beam_lm = BeamDecoder(LABELS, lm=lm, alpha=0.8, beta=1.0)
        variants = {
            "greedy": GreedyDecoder(LABELS),
            "beam 8, no LM": BeamDecoder(LABELS, beam_width=8),
            "beam 32, no LM": BeamDecoder(LABELS, beam_width=32),
            "beam 8 + 3-gram LM + lexicon": beam_lm.with_options(beam_width=8),
            "beam 32 + 3-gram LM + lexicon": beam_lm.with_options(beam_width=32),
            "beam 32 + 3-gram LM + lexicon, 2 processes": beam_lm.with_options(num_workers=2),
            "beam 32 + 3-gram LM, no lexicon": BeamDecoder(LABELS, lm=lm, lexicon=False, alpha=0.8),
        }
        rows = []
        for name, decoder in variants.items():
            texts, seconds = measure(decoder, batch)
            if isinstance(decoder, BeamDecoder):
                decoder.close()
            wer = word_error_rate(texts, references)[0]
            audio = args.utterances * args.seconds
            rows.append({"decoder": name, "utterances_per_s": args.utterances / seconds,
                         "rtf": seconds / audio, "wer": 100 * wer})  # fmt: skip
            print(f"{name}: {rows[-1]['utterances_per_s']:.1f} utt/s, RTF {rows[-1]['rtf']:.2e}, "
                  f"WER {100 * wer:.2f} %", flush=True)  # fmt: skip
    where = machine.summary()
    lines = [
        f"# Decoding speed: {args.utterances} synthetic utterances of {args.seconds:g} s "
        f"({n_frames} frames, K = {len(LABELS) + 1})",
        "",
        f"Machine: {where}. LM: trigram of {args.lm_sentences} sentences over {len(words)} words "
        f"(utils/build_lm.py), alpha 0.8, beta 1.0. One process unless stated; RTF = decoding "
        "seconds per audio second.",
        "",
        "| decoder | utterances/s | RTF | WER % |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['decoder']} | {r['utterances_per_s']:.1f} | {r['rtf']:.2e} | {r['wer']:.2f} |"
            for r in rows
        ),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    report = {"machine": machine.describe(), "args": {**vars(args), "out": str(args.out)},
              "results": rows}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}.md, {args.out}.json")


if __name__ == "__main__":
    main()
