#!/usr/bin/env bash
# The whole recipe on one machine, no LibriSpeech and no GPU needed: set up the environment, make a
# synthetic speech corpus (espeak-ng voices) in LibriSpeech layout, and run the same launchers a
# LibriSpeech user runs on it -- preprocess, train, evaluate, transcribe -- then plot the training
# curve and print a summary. Run it again and it reuses the corpus and manifests and resumes
# training from the newest checkpoint (RESTART=true starts training afresh).
#   bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${QUICKSTART_DIR:=runs/quickstart}"        # everything the quick start writes goes here
: "${DATA_DIR:=$QUICKSTART_DIR/LibriSpeech}"   # the corpus, its WAVs and manifests
: "${OUTPUT_DIR:=$QUICKSTART_DIR/results}"     # checkpoints, logs, TensorBoard, predictions
: "${MODEL_CONFIG:=configs/jasper_tiny.yaml}"
: "${TRAIN_UTTS:=17600}"                       # synthetic training utterances
: "${EVAL_UTTS:=200}"                          # dev-clean and test-clean utterances each
: "${VOCAB:=300}"                              # words in the corpus vocabulary
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

stage "1/7 environment ($VENV)"
bash scripts/setup_env.sh
export PYTHON="$VENV/bin/python"

stage "2/7 synthetic corpus in LibriSpeech layout ($DATA_DIR)"
"$PYTHON" utils/make_demo_corpus.py --out "$DATA_DIR" --seed "$SEED" --train "$TRAIN_UTTS" \
  --dev "$EVAL_UTTS" --test "$EVAL_UTTS" --vocab "$VOCAB"

stage "3/7 preprocessing: FLAC -> 16 kHz WAV + manifests (scripts/preprocess_librispeech.sh)"
DATA_DIR="$DATA_DIR" SPLITS="train-clean-100 dev-clean test-clean" \
  bash scripts/preprocess_librispeech.sh

stage "4/7 training (scripts/train.sh)"
if [[ "$RESTART" == true ]]; then
  rm -rf "$OUTPUT_DIR"
fi
# The recipe's launcher with settings for a 2.5M-parameter model trained for minutes: AdamW with
# betas (0.9, 0.98) (AdamW's 0.999 adapts too slowly for a run of 1,100 steps), a short warmup and
# a cosine decay over the run, evaluation twice an epoch. More distinct sentences beat more epochs
# over fewer: the model memorises sentences it hears repeatedly.
steps_per_epoch=$(( TRAIN_UTTS / BATCH_SIZE ))
DATA_DIR="$DATA_DIR" MODEL_CONFIG="$MODEL_CONFIG" OUTPUT_DIR="$OUTPUT_DIR" \
  TRAIN_MANIFESTS="$DATA_DIR/librispeech-train-clean-100-wav.json" \
  VAL_MANIFESTS="$DATA_DIR/librispeech-dev-clean-wav.json" \
  NUM_GPUS="${NUM_GPUS:-1}" DALI_DEVICE="${DALI_DEVICE:-none}" BATCH_SIZE="$BATCH_SIZE" GRAD_ACCUMULATION_STEPS=1 \
  OPTIMIZER=adamw LEARNING_RATE="$LEARNING_RATE" MIN_LEARNING_RATE=0.00001 LR_POLICY=cosine \
  EPOCHS="$EPOCHS" WARMUP_EPOCHS=0.1 HOLD_EPOCHS=0 EMA=0.99 SEED="$SEED" \
  EVAL_FREQUENCY="$(( (steps_per_epoch + 1) / 2 ))" PREDICTION_FREQUENCY=50 LOG_FREQUENCY=10 \
  SAVE_FREQUENCY=1 NUM_WORKERS=1 \
  bash scripts/train.sh --bucketing --clip_norm 5 --betas 0.9 0.98 --save_best_from 0

# The checkpoint with the best dev WER (EMA weights) of this run.
checkpoint="$OUTPUT_DIR/Jasper_best_checkpoint.pt"
[[ -f "$checkpoint" ]] || checkpoint="$OUTPUT_DIR/Jasper_epoch${EPOCHS}_checkpoint.pt"
# Our checkpoints carry their config: MODEL_CONFIG= (empty) tells inference.sh to use it.
# PAD_LEADING=0: upstream's 16 leading zero frames are nothing this model saw in training.
infer_env=(DATA_DIR="$DATA_DIR" MODEL_CONFIG= OUTPUT_DIR="$OUTPUT_DIR" CHECKPOINT="$checkpoint"
           NUM_GPUS=1 DALI_DEVICE=none BATCH_SIZE=32 NUM_WORKERS=1 PAD_LEADING=0)

stage "5/7 evaluation on the test split, an unseen voice (scripts/evaluation.sh)"
env "${infer_env[@]}" DATASET=test-clean PREDICTION_FILE="$OUTPUT_DIR/test-clean.predictions" \
  LOG_FILE="$OUTPUT_DIR/nvlog_eval_test-clean.json" bash scripts/evaluation.sh

stage "6/7 transcribing the real recordings in data/audio (scripts/inference.sh)"
env "${infer_env[@]}" VAL_MANIFESTS= PREDICTION_FILE="$OUTPUT_DIR/recordings.predictions" \
  LOG_FILE="$OUTPUT_DIR/nvlog_recordings.json" bash scripts/inference.sh --transcribe_wav data/audio

stage "7/7 training curve and summary"
"$PYTHON" utils/plot_training.py "$OUTPUT_DIR/nvlog.json" "$OUTPUT_DIR/training_curve.png" \
  --title "Quick start: jasper_tiny on the synthetic corpus"
"$PYTHON" utils/quickstart_summary.py --output_dir "$OUTPUT_DIR" \
  --manifest "$DATA_DIR/librispeech-test-clean-wav.json" \
  --predictions "$OUTPUT_DIR/test-clean.predictions" \
  --recordings "$OUTPUT_DIR/recordings.predictions" \
  --checkpoint "$checkpoint" --seconds $(( SECONDS - start ))
