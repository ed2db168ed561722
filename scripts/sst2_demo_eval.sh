#!/usr/bin/env bash
# Evaluate Lester et al.'s released SST-2 prompt (T5 1.1 lm100k base, P = 100) under the paper's
# protocol: taskless GLUE SST-2 validation, inputs 512 / targets 8, greedy decoding, exact match
# (the paper reports 95.07). Like the original library's prompt_tuning/scripts/sst2-demo-eval.sh.
#
#   EVAL_DIR=runs/eval_sst2 bash scripts/sst2_demo_eval.sh [--gin.NAME=VALUE ...]
#   CHECKPOINT_PATH=gs://BUCKET/sst2 bash scripts/sst2_demo_eval.sh   # your trained prompt instead
#   from your machine: scripts/tpu.sh launch --name NAME --zone ZONE --accelerator v4-8 -- \
#                        env EVAL_DIR=gs://BUCKET/eval_sst2 bash scripts/sst2_demo_eval.sh
#
# EVAL_DIR (default runs/eval_sst2; only process 0 writes) gets predictions.jsonl and metrics.json.
# CHECKPOINT_PATH: a training MODEL_DIR or a [100, 768] .npy. PYTHON=echo prints the command.
set -euo pipefail
EVAL_DIR=${EVAL_DIR:-runs/eval_sst2}
args=(--gin_file=pretrained_prompts/t5_1_1_lm100k_base/sst2.gin --gin.EVAL_OUTPUT_DIR="'${EVAL_DIR}'")
if [[ -n ${CHECKPOINT_PATH:-} ]]; then args+=(--gin.CHECKPOINT_PATH="'${CHECKPOINT_PATH}'"); fi
read -r -a python <<< "${PYTHON:-python3}"
exec "${python[@]}" -m prompt_tuning_jax.eval "${args[@]}" "$@"
