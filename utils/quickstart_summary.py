"""The quick start's closing summary: test WER of each held-out voice with greedy decoding, beam
search without an LM (both decoded here from the saved log-probs) and beam search with the LM
(evaluation.sh's predictions, made with the checkpoint's decoding settings), a few predictions
next to their references, the transcripts of the real recordings, and where the
outputs are. The per-voice table is also written to ``OUTPUT_DIR/test_wer_by_voice.{md,json}``.

    python utils/quickstart_summary.py --output_dir O --data_dir D --logits L --predictions P \
        --recordings R --checkpoint C --seconds S
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.metrics import word_error_rate
from common.text import DEFAULT_LABELS, normalize
from jasper import decoding_settings
from jasper.decoding import BeamDecoder, GreedyDecoder
from utils.make_demo_corpus import read_speakers, speaker_of
from utils.tune_lm import load_logits, manifest_references


def read_predictions(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        name, _, text = line.partition("\t")
        out[name] = text
    return out


def known_transcript(audio: Path) -> str | None:
    """data/audio ships a .txt beside some recordings."""
    txt = audio.with_suffix(".txt")
    if txt.is_file():
        return normalize(txt.read_text(), DEFAULT_LABELS)
    return None


def wer_by_voice(
    names: list[str], hypotheses: dict[str, list[str]], refs: dict[str, str], voice_of: dict
) -> list[dict]:
    """One row per voice (and one for all): WER in % of each decoding."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(voice_of[speaker_of(name)], []).append(i)
    rows = []
    for voice, idx in [*groups.items(), ("all", list(range(len(names))))]:
        row = {"voice": voice, "utterances": len(idx)}
        for kind, texts in hypotheses.items():
            wer, _, words = word_error_rate([texts[i] for i in idx], [refs[names[i]] for i in idx])
            row[kind] = round(100 * wer, 2)
            row["words"] = words
        rows.append(row)
    return rows


def markdown(rows: list[dict], settings: dict) -> str:
    lm = (
        f"{Path(settings['lm']).name}, alpha {settings['lm_alpha']:g}, beta {settings['lm_beta']:g}"
    )
    lines = [
        f"| test voice | utterances | greedy WER % | beam {settings['beam_width']}, no LM | "
        f"beam + LM ({lm}) | LM vs greedy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        change = 100 * (r["lm"] - r["greedy"]) / r["greedy"] if r["greedy"] else 0.0
        cells = [r["voice"], str(r["utterances"]), f"{r['greedy']:.2f}", f"{r['beam']:.2f}",
                 f"{r['lm']:.2f}", f"{change:+.0f}%"]  # fmt: skip
        if r["voice"] == "all":
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--data_dir", type=Path, required=True, help="the corpus (SPEAKERS.TXT)")
    p.add_argument("--manifest", type=Path, required=True, help="the test manifest")
    p.add_argument("--logits", type=Path, required=True, help="test log-probs (--save_logits)")
    p.add_argument("--predictions", type=Path, required=True, help="test predictions")
    p.add_argument(
        "--recordings", type=Path, required=True, help="predictions of the real recordings"
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--seconds", type=int, default=0, help="wall time so far")
    p.add_argument("--show", type=int, default=4, help="predictions to show")
    args = p.parse_args()

    names, log_probs, labels, pad_leading = load_logits(args.logits)
    refs = manifest_references([str(args.manifest)], str(args.data_dir), labels)
    settings, _ = decoding_settings.for_checkpoint(args.checkpoint)
    beam = BeamDecoder(labels, beam_width=settings["beam_width"], num_workers=2)
    final = read_predictions(args.predictions)  # evaluation.sh's, with the settings above
    hypotheses = {
        "greedy": [h.text for h in GreedyDecoder(labels).decode_batch(log_probs)],
        "beam": [h.text for h in beam.decode_batch(log_probs)],
        "lm": [final[n] for n in names],
    }
    beam.close()
    rows = wer_by_voice(names, hypotheses, refs, read_speakers(args.data_dir / "SPEAKERS.TXT"))
    table = markdown(rows, settings)
    (args.output_dir / "test_wer_by_voice.md").write_text(table)
    (args.output_dir / "test_wer_by_voice.json").write_text(
        json.dumps({"decoding": settings, "pad_leading": pad_leading, "rows": rows}, indent=1)
        + "\n"
    )
    print("\nTest WER by voice (synthetic test-clean: voices never heard in training, sentences")
    print(
        "never seen; the LM is a 3-gram of the training transcripts, alpha and beta tuned on dev):"
    )
    print(table)
    for i in range(min(args.show, len(names))):
        print(f"  ref:    {refs[names[i]]}\n  greedy: {hypotheses['greedy'][i]}")
        print(f"  LM:     {hypotheses['lm'][i]}")

    print("\nReal recordings (data/audio; the demo model knows a few hundred words of synthetic")
    print("speech, not English, so expect little):")
    for name, text in read_predictions(args.recordings).items():
        ref = known_transcript(Path(name))
        print(f"  {Path(name).name}: {text}" + (f"\n    (said: {ref})" if ref else ""))

    out = args.output_dir
    print("\nWhere things are:")
    print(f"  checkpoint:     {args.checkpoint} (with its decoding settings)")
    print(f"  LM:             {settings['lm']}")
    print(f"  JSON log:       {out / 'nvlog.json'}")
    print(f"  TensorBoard:    tensorboard --logdir {out}")
    print(f"  training curve: {out / 'training_curve.png'}")
    print(f"  predictions:    {args.predictions} (and .json, .srt next to it)")
    print(f"  WER by voice:   {out / 'test_wer_by_voice.md'}")
    if args.seconds:
        print(f"\nQuick start finished in {args.seconds // 60} min {args.seconds % 60} s.")


if __name__ == "__main__":
    main()
