#!/usr/bin/env bash
# Train a soft prompt on SST-2 with T5 1.1 lm100k XXL (google/t5-xxl-lm-adapt, 11B parameters)
# on a pod slice, like the original library's prompt_tuning/scripts/sst2-xxl-demo.sh.
# runtime/model_parallel_8.gin keeps the frozen weights in bfloat16 and rematerialises blocks;
# MESH_SHAPE 'auto' then picks the mesh by compiling the run's programs for the slice, as the
# README's "Will it fit?" table shows: (16, 1) on a v4-32, (4, 1) on a v4-8, (8, 2) on a
# v5litepod-16. A later --gin.MESH_SHAPE="(-1, 8)" fixes the mesh instead.
#
#   scripts/tpu.sh launch --name NAME --zone ZONE --accelerator v4-32 \
#     --model-dir gs://BUCKET/sst2_xxl -- bash scripts/sst2_xxl_demo.sh
#
# MODEL_DIR must be a gs:// path: every host of the slice writes its shards of the checkpoints.
# Extra arguments are appended. PYTHON=echo prints the command.
# COMPILE_FOR=v4-32 compiles the same run for that slice instead of training (python -m
# prompt_tuning_jax.compile: per-chip memory of each program against the HBM; no TPU needed), e.g.
#   MODEL_DIR=gs://BUCKET/sst2_xxl COMPILE_FOR=v4-32 bash scripts/sst2_xxl_demo.sh --json=plan.json
set -euo pipefail
if [[ ${MODEL_DIR:-} != gs://* ]]; then
  echo "error: set MODEL_DIR to a gs:// path (got '${MODEL_DIR:-}'): a pod slice has one disk per host, e.g. MODEL_DIR=gs://BUCKET/sst2_xxl bash $0" >&2
  exit 2
fi
read -r -a python <<< "${PYTHON:-python3}"
command=(-m prompt_tuning_jax.train)
if [[ -n ${COMPILE_FOR:-} ]]; then
  command=(-m prompt_tuning_jax.compile --accelerator="${COMPILE_FOR}")
fi
exec "${python[@]}" "${command[@]}" \
  --gin_file=models/t5_1_1_lm100k_xxl.gin \
  --gin_file=prompts/from_class_labels.gin \
  --gin_file=runtime/model_parallel_8.gin \
  --gin_file=runs/prompt_finetune.gin \
  --gin.MESH_SHAPE="'auto'" \
  --gin.MODEL_DIR="'${MODEL_DIR}'" \
  --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" \
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
  --gin.BATCH_SIZE=32 \
  --gin.TRAIN_STEPS=30000 \
  --gin.EVAL_PERIOD=1000 \
  --gin.CHECKPOINT_PERIOD=500 \
  "$@"
