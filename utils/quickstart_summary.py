"""The quick start's closing summary: test WER, a few predictions next to their references, the
transcripts of the real recordings (with references where known), and where the outputs are.

    python utils/quickstart_summary.py --data_dir D --output_dir O --manifest M --predictions P \
        --recordings R --recording_dir data/audio --checkpoint C --seconds S
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.metrics import word_error_rate
from common.text import DEFAULT_LABELS, normalize


def read_predictions(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        name, _, text = line.partition("\t")
        out[name] = text
    return out


def references(manifest: Path) -> dict[str, str]:
    out = {}
    for entry in json.loads(manifest.read_text()):
        speed_one = [f for f in entry["files"] if float(f.get("speed", 1)) == 1.0] or entry["files"]
        out[speed_one[-1]["fname"]] = normalize(entry["transcript"], DEFAULT_LABELS)
    return out


def known_transcript(audio: Path) -> str | None:
    """data/audio ships a .txt beside some recordings; example1's text is in its README."""
    txt = audio.with_suffix(".txt")
    if txt.is_file():
        return normalize(txt.read_text(), DEFAULT_LABELS)
    return None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True, help="the test manifest")
    p.add_argument("--predictions", type=Path, required=True, help="test predictions")
    p.add_argument(
        "--recordings", type=Path, required=True, help="predictions of the real recordings"
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--seconds", type=int, default=0, help="wall time so far")
    p.add_argument("--show", type=int, default=5, help="predictions to show")
    args = p.parse_args()

    refs = references(args.manifest)
    hyps = read_predictions(args.predictions)
    names = [n for n in refs if n in hyps]
    wer, errors, words = word_error_rate([hyps[n] for n in names], [refs[n] for n in names])
    print(
        f"\nTest WER (synthetic test-clean, a voice never heard in training): {100 * wer:.2f}% "
        f"({errors} errors / {words} words, {len(names)} utterances)"
    )
    for n in names[: args.show]:
        print(f"  ref: {refs[n]}\n  hyp: {hyps[n]}")

    print(
        "\nReal recordings (data/audio; the demo model knows only its 300 words, so expect little):"
    )
    for name, text in read_predictions(args.recordings).items():
        ref = known_transcript(Path(name))
        print(f"  {Path(name).name}: {text}" + (f"\n    (said: {ref})" if ref else ""))

    out = args.output_dir
    print("\nWhere things are:")
    print(f"  checkpoint:     {args.checkpoint}")
    print(f"  JSON log:       {out / 'nvlog.json'}")
    print(f"  TensorBoard:    tensorboard --logdir {out}")
    print(f"  training curve: {out / 'training_curve.png'}")
    print(f"  predictions:    {args.predictions}")
    if args.seconds:
        print(f"\nQuick start finished in {args.seconds // 60} min {args.seconds % 60} s.")


if __name__ == "__main__":
    main()
