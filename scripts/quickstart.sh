#!/usr/bin/env bash
# The whole recipe on one machine, no LibriSpeech and no GPU needed: set up the environment, make a
# synthetic speech corpus (espeak-ng voices) in LibriSpeech layout, and run the same launchers a
# LibriSpeech user runs on it -- preprocess, train, build and tune a word LM, evaluate, transcribe --
# then plot the training curve and print a summary with the test WER of each held-out voice, greedy
# and with the LM. Run it again and it reuses the corpus and manifests and resumes training from the
# newest checkpoint (RESTART=true starts training afresh).
#   bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${QUICKSTART_DIR:=runs/quickstart}"        # everything the quick start writes goes here
: "${DATA_DIR:=$QUICKSTART_DIR/LibriSpeech}"   # the corpus, its WAVs and manifests
: "${OUTPUT_DIR:=$QUICKSTART_DIR/results}"     # checkpoints, logs, TensorBoard, predictions
: "${MODEL_CONFIG:=configs/jasper_tiny.yaml}"
: "${TRAIN_UTTS:=33600}"                       # synthetic training utterances
: "${EVAL_UTTS:=200}"                          # dev-clean utterances, and test-clean ones per test voice
: "${SEED:=0}"
: "${EPOCHS:=2}"
: "${BATCH_SIZE:=32}"
: "${LEARNING_RATE:=0.003}"
: "${RESTART:=false}"
: "${WITH_DALI:=false}"                        # the demo uses the PyTorch loader
: "${VENV:=.venv}"
export VENV WITH_DALI

stage() { printf '\n==== %s\n' "$*"; }
start=$SECONDS

stage "1/8 environment ($VENV)"
bash scripts/setup_env.sh
export PYTHON="$VENV/bin/python"

stage "2/8 synthetic corpus in LibriSpeech layout ($DATA_DIR)"
"$PYTHON" utils/make_demo_corpus.py --out "$DATA_DIR" --seed "$SEED" --train "$TRAIN_UTTS" \
  --dev "$EVAL_UTTS" --test "$EVAL_UTTS"

stage "3/8 preprocessing: FLAC -> 16 kHz WAV + manifests (scripts/preprocess_librispeech.sh)"
DATA_DIR="$DATA_DIR" SPLITS="train-clean-100 dev-clean test-clean" \
  bash scripts/preprocess_librispeech.sh

stage "4/8 training (scripts/train.sh)"
if [[ "$RESTART" == true ]]; then
  rm -rf "$OUTPUT_DIR"
fi
# The recipe's launcher with settings for a 2.5M-parameter model trained for minutes: AdamW with
# betas (0.9, 0.98) (AdamW's 0.999 adapts too slowly for a run of 2,000 steps), a short warmup and
# a cosine decay over the run, evaluation twice an epoch, and the recipe's online speed
# perturbation (0.85-1.15), which also shifts the formants: more varied voices.
steps_per_epoch=$(( TRAIN_UTTS / BATCH_SIZE ))
DATA_DIR="$DATA_DIR" MODEL_CONFIG="$MODEL_CONFIG" OUTPUT_DIR="$OUTPUT_DIR" \
  TRAIN_MANIFESTS="$DATA_DIR/librispeech-train-clean-100-wav.json" \
  VAL_MANIFESTS="$DATA_DIR/librispeech-dev-clean-wav.json" \
  NUM_GPUS="${NUM_GPUS:-1}" DALI_DEVICE="${DALI_DEVICE:-none}" BATCH_SIZE="$BATCH_SIZE" GRAD_ACCUMULATION_STEPS=1 \
  OPTIMIZER=adamw LEARNING_RATE="$LEARNING_RATE" MIN_LEARNING_RATE=0.00001 LR_POLICY=cosine \
  EPOCHS="$EPOCHS" WARMUP_EPOCHS=0.1 HOLD_EPOCHS=0 EMA=0.99 SEED="$SEED" \
  EVAL_FREQUENCY="$(( (steps_per_epoch + 1) / 2 ))" PREDICTION_FREQUENCY=100 LOG_FREQUENCY=20 \
  SAVE_FREQUENCY=1 NUM_WORKERS=1 \
  bash scripts/train.sh --bucketing --clip_norm 5 --betas 0.9 0.98 --save_best_from 0 \
  --override_config input_train.audio_dataset.speed_perturbation.min_rate=0.85 \
  --override_config input_train.audio_dataset.speed_perturbation.max_rate=1.15

# The checkpoint with the best dev WER (EMA weights) of this run.
checkpoint="$OUTPUT_DIR/Jasper_best_checkpoint.pt"
[[ -f "$checkpoint" ]] || checkpoint="$OUTPUT_DIR/Jasper_epoch${EPOCHS}_checkpoint.pt"
# Our checkpoints carry their config: MODEL_CONFIG= (empty) tells inference.sh to use it.
infer_env=(DATA_DIR="$DATA_DIR" MODEL_CONFIG= OUTPUT_DIR="$OUTPUT_DIR" CHECKPOINT="$checkpoint"
           NUM_GPUS=1 DALI_DEVICE=none BATCH_SIZE=32 NUM_WORKERS=1)

stage "5/8 word LM of the training transcripts (utils/build_lm.py), tuned on dev (scripts/tune_lm.sh)"
lm_dir="$OUTPUT_DIR/lm"
mkdir -p "$lm_dir"
cat "$DATA_DIR"/train-clean-100/*/*/*.trans.txt | cut -d " " -f 2- > "$lm_dir/train_transcripts.txt"
"$PYTHON" utils/build_lm.py "$lm_dir/train_transcripts.txt" "$lm_dir/words.3gram.arpa" --order 3
# Greedy log-probs of dev-clean. PAD_LEADING=0: upstream's 16 leading zero frames are nothing this
# model heard in training; tune_lm.sh records it with the best LM weights in the checkpoint, whose
# decoding settings evaluation.sh and inference.sh then use without being told.
env "${infer_env[@]}" DATASET=dev-clean DECODER=greedy PAD_LEADING=0 \
  LOGITS_FILE="$lm_dir/dev-clean.logits.pt" bash scripts/evaluation.sh
DATA_DIR="$DATA_DIR" DATASET=dev-clean LOGITS_FILE="$lm_dir/dev-clean.logits.pt" \
  LM="$lm_dir/words.3gram.arpa" ALPHAS="0.3 0.6 0.9 1.2 1.5" BETAS="-1 0 1 2" NUM_WORKERS=2 \
  OUTPUT_PREFIX="$lm_dir/dev-clean.lm_tuning" bash scripts/tune_lm.sh --checkpoint "$checkpoint"

stage "6/8 evaluation on the test split, voices never heard in training (scripts/evaluation.sh)"
# No decoding variables: beam search with the LM, as the checkpoint now says.
env "${infer_env[@]}" DATASET=test-clean PREDICTION_FILE="$OUTPUT_DIR/test-clean.predictions" \
  LOGITS_FILE="$OUTPUT_DIR/test-clean.logits.pt" OUTPUT_FORMAT="txt json srt" \
  LOG_FILE="$OUTPUT_DIR/nvlog_eval_test-clean.json" bash scripts/evaluation.sh

stage "7/8 transcribing the real recordings in data/audio (scripts/inference.sh)"
env "${infer_env[@]}" VAL_MANIFESTS= PREDICTION_FILE="$OUTPUT_DIR/recordings.predictions" \
  LOG_FILE="$OUTPUT_DIR/nvlog_recordings.json" bash scripts/inference.sh --transcribe_wav data/audio

stage "8/8 training curve and summary"
"$PYTHON" utils/plot_training.py "$OUTPUT_DIR/nvlog.json" "$OUTPUT_DIR/training_curve.png" \
  --title "Quick start: jasper_tiny on the synthetic corpus"
"$PYTHON" utils/quickstart_summary.py --output_dir "$OUTPUT_DIR" --data_dir "$DATA_DIR" \
  --manifest "$DATA_DIR/librispeech-test-clean-wav.json" \
  --logits "$OUTPUT_DIR/test-clean.logits.pt" \
  --predictions "$OUTPUT_DIR/test-clean.predictions" \
  --recordings "$OUTPUT_DIR/recordings.predictions" \
  --checkpoint "$checkpoint" --seconds $(( SECONDS - start ))
