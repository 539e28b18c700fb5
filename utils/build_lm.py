#!/usr/bin/env python3
"""Build a word n-gram language model in ARPA format from a text file (one sentence per line).

The estimator is interpolated modified Kneser-Ney, as KenLM's ``lmplz`` builds it (Chen & Goodman
1998, "An empirical study of smoothing techniques for language modeling", section 3.5; Heafield et
al. 2013, "Scalable modified Kneser-Ney language model estimation"), in plain Python: meant for
domain corpora of up to a few million words. For LibriSpeech-size corpora use ``lmplz`` or the
published LibriSpeech models (``utils/download_lm.py``).

- Each line is split on whitespace and wrapped in ``<s>`` ... ``</s>``; words are kept as written
  (the beam decoder matches LM words to the model's labels case-insensitively).
- Counts: the highest order uses raw counts; a lower-order n-gram uses its number of distinct left
  extensions (the continuation count), except n-grams that begin with ``<s>``, which have no left
  extension and keep their raw count.
- Discounts per order from the count-of-counts n1..n4 of those counts: ``Y = n1 / (n1 + 2 n2)``,
  ``D1 = 1 - 2Y n2/n1``, ``D2 = 2 - 3Y n3/n2``, ``D3+ = 3 - 4Y n4/n3``. A corpus too small for the
  estimate (a zero n_r or a discount outside (0, r)) falls back to ``FALLBACK_DISCOUNTS``, with a
  note. ``--discount D`` instead uses one fixed discount everywhere (interpolated Kneser-Ney).
- ``p(w | h) = (c(hw) - D(c(hw))) / c(h.) + gamma(h) p(w | h')`` with ``h'`` the context without its
  first word and ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / c(h.)``; unigrams interpolate
  with the uniform distribution over the vocabulary (the words, ``</s>`` and ``<unk>``). Written in
  backoff form: an n-gram's log10 probability and, for every n-gram that is a context, its backoff
  weight ``log10 gamma(h)``. ``<s>`` is never predicted (log10 probability -99, as lmplz writes).
- KenLM refuses an ARPA file with unigrams only, so ``--order 1`` writes order 2 with no bigrams.

Usage::

    python utils/build_lm.py corpus.txt lm.arpa [--order 3] [--discount D]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # D1, D2, D3+ where count-of-counts cannot estimate them
NEVER = -99.0  # log10 probability of <s>, which is only ever a context

Ngram = tuple[str, ...]


def read_sentences(path: str | Path) -> list[list[str]]:
    """The non-empty lines of a text file, split on whitespace."""
    with open(path, encoding="utf-8") as f:
        return [words for line in f if (words := line.split())]


def raw_counts(sentences: Iterable[list[str]], order: int) -> list[Counter]:
    """``counts[k][g]``: occurrences of each k-gram ``g`` (k = 1..order; index 0 unused) in the
    sentences wrapped in ``<s>`` ... ``</s>``."""
    counts = [Counter() for _ in range(order + 1)]
    for words in sentences:
        tokens = (BOS, *words, EOS)
        for k in range(1, order + 1):
            for i in range(len(tokens) - k + 1):
                counts[k][tokens[i : i + k]] += 1
    return counts


def adjusted_counts(raw: list[Counter]) -> list[dict[Ngram, int]]:
    """Kneser-Ney counts: raw at the highest order and for n-grams that begin with ``<s>``, the
    number of distinct left extensions otherwise. The unigram ``<s>`` is dropped (never
    predicted)."""
    order = len(raw) - 1
    adjusted = [{} for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for k in range(1, order):
        left = Counter(g[1:] for g in raw[k + 1])
        adjusted[k] = {g: (c if g[0] == BOS else left[g]) for g, c in raw[k].items()}
    adjusted[1].pop((BOS,), None)
    return adjusted


def estimate_discounts(counts: Iterable[int]) -> tuple[float, float, float] | None:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the count-of-counts of one order, or None
    where they cannot be estimated (Chen & Goodman 1998, eq. 26)."""
    n = Counter(c for c in counts if c <= 4)
    if any(n[r] == 0 for r in (1, 2, 3, 4)):
        return None
    y = n[1] / (n[1] + 2 * n[2])
    d = (1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3])
    return d if all(0 < d_r < r for r, d_r in enumerate(d, 1)) else None


def estimate(
    sentences: Iterable[list[str]], order: int = 3, discount: float | None = None
) -> list[dict[Ngram, tuple[float, float]]]:
    """The model: ``model[k][g] = (log10 p, log10 backoff)`` of every k-gram ``g`` (k = 1..order;
    index 0 unused). ``discount``: one fixed discount in (0, 1]; None: modified Kneser-Ney."""
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    if discount is not None and not 0 < discount <= 1:
        raise ValueError(f"a fixed discount must lie in (0, 1], got {discount}")
    counts = adjusted_counts(raw_counts(sentences, order))
    vocab_size = len({g[0] for g in counts[1]} | {EOS, UNK})
    probs: list[dict[Ngram, float]] = [{} for _ in range(order + 1)]
    gammas: list[dict[Ngram, float]] = [{} for _ in range(order + 2)]  # [k][h]: h of length k-1
    for k in range(1, order + 1):
        d = (discount,) * 3 if discount is not None else estimate_discounts(counts[k].values())
        if d is None:
            d = FALLBACK_DISCOUNTS
            print(f"note: order {k}: counts of counts n1..n4 cannot estimate discounts, using {d}")
        by_context: dict[Ngram, dict[str, int]] = defaultdict(dict)
        for g, c in counts[k].items():
            by_context[g[:-1]][g[-1]] = c
        if k == 1:
            by_context[()].setdefault(UNK, 0)  # <unk> gets the uniform share only
        for h, followers in by_context.items():
            total = sum(followers.values())
            gamma = sum(d[min(c, 3) - 1] for c in followers.values() if c) / total
            gammas[k][h] = gamma
            for w, c in followers.items():
                below = 1 / vocab_size if k == 1 else probs[k - 1][h[1:] + (w,)]
                kept = (c - d[min(c, 3) - 1]) / total if c else 0.0
                probs[k][h + (w,)] = kept + gamma * below
    model: list[dict[Ngram, tuple[float, float]]] = [{} for _ in range(order + 1)]
    for k in range(1, order + 1):
        for g, p in probs[k].items():
            model[k][g] = (math.log10(p), math.log10(gammas[k + 1].get(g, 1.0)))
    model[1][(BOS,)] = (NEVER, math.log10(gammas[2].get((BOS,), 1.0)))
    return model


def write_arpa(model: list[dict[Ngram, tuple[float, float]]], path: str | Path) -> None:
    """Write the model in ARPA format, order 2 at least (KenLM refuses unigram-only files).

    A backoff weight is written for the n-grams that are contexts and omitted (0) for the others.
    """
    order = len(model) - 1
    written = max(order, 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for k in range(1, written + 1):
            f.write(f"ngram {k}={len(model[k]) if k <= order else 0}\n")
        for k in range(1, written + 1):
            f.write(f"\n\\{k}-grams:\n")
            for g, (logp, backoff) in sorted(model[k].items()) if k <= order else ():
                line = f"{logp:.6f}\t{' '.join(g)}"
                f.write(f"{line}\t{backoff:.6f}\n" if backoff else f"{line}\n")
        f.write("\n\\end\\\n")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("text", type=Path, help="training text, one sentence per line")
    parser.add_argument("arpa", type=Path, help="ARPA file to write")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (1: unigrams)")
    parser.add_argument(
        "--discount",
        type=float,
        default=None,
        help="one fixed discount in (0, 1] (interpolated Kneser-Ney); None: modified Kneser-Ney "
        "with discounts estimated per order",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    sentences = read_sentences(args.text)
    if not sentences:
        print(f"error: {args.text} holds no words", file=sys.stderr)
        return 1
    model = estimate(sentences, args.order, args.discount)
    write_arpa(model, args.arpa)
    sizes = ", ".join(f"{len(m)} {k}-grams" for k, m in enumerate(model) if k)
    words = sum(len(s) for s in sentences)
    print(
        f"{args.arpa}: order {args.order}, {sizes} from {len(sentences)} sentences ({words} words)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
