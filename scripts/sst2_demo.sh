#!/usr/bin/env bash
# Train a soft prompt on SST-2 in the paper's setting (like the original library's
# prompt_tuning/scripts/sst2-demo.sh): T5 1.1 lm100k base (google/t5-base-lm-adapt), P = 100,
# class-label init, Adafactor lr 0.3, taskless GLUE format, inputs 512 / targets 8, batch 32,
# 30,000 steps, computed in bfloat16.
#
#   on a TPU VM, in the checkout:  MODEL_DIR=gs://BUCKET/sst2 bash scripts/sst2_demo.sh [--gin.NAME=VALUE ...]
#   from your machine:             scripts/tpu.sh launch --name NAME --zone ZONE --accelerator v4-8 \
#                                    --model-dir gs://BUCKET/sst2 -- bash scripts/sst2_demo.sh
#
# MODEL_DIR must be gs:// on a pod slice (several hosts); a local path works on one host.
# The same command with the same MODEL_DIR resumes from the latest checkpoint.
# Extra arguments are appended (later --gin flags win). PYTHON=echo prints the command.
set -euo pipefail
if [[ -z ${MODEL_DIR:-} ]]; then
  echo "error: set MODEL_DIR to the run's folder, e.g. MODEL_DIR=gs://BUCKET/sst2 bash $0" >&2
  exit 2
fi
read -r -a python <<< "${PYTHON:-python3}"
exec "${python[@]}" -m prompt_tuning_jax.train \
  --gin_file=models/t5_1_1_lm100k_base.gin \
  --gin_file=prompts/from_class_labels.gin \
  --gin_file=runtime/bfloat16.gin \
  --gin_file=runs/prompt_finetune.gin \
  --gin.MODEL_DIR="'${MODEL_DIR}'" \
  --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" \
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
  --gin.BATCH_SIZE=32 \
  --gin.TRAIN_STEPS=30000 \
  --gin.EVAL_PERIOD=1000 \
  --gin.CHECKPOINT_PERIOD=500 \
  "$@"
