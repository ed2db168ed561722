"""`evaluate(...)`: score a trained or released prompt on a task split; `python -m prompt_tuning_jax.eval` runs it.

    evaluate(ModelSpec("google/t5-base-lm-adapt"), PromptSpec(length=100),
             DataSpec("taskless_glue_sst2_v200_examples", feature_lengths={"inputs": 512, "targets": 8}),
             checkpoint_path=released_prompt("t5_1_1_lm100k_base/sst2.npy"), output_dir="runs/eval_sst2",
             decoding=DecodeSpec(max_new_tokens=8))

By default a prompt answers by greedy generation and the text must equal a
label string exactly, as the paper evaluated (`scoring="generate"`);
`scoring="rank"` ranks the label strings instead (metrics named `rank_*`); a
prompt with a head answers with the head. Writes `<output_dir>/predictions.jsonl`
(per example, in dataset order: `index`, `input` (the exact text given to the
tokenizer), `target`, `prediction` (the text compared), `valid`) and `metrics.json`.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax

from prompt_tuning_jax.decoding import DecodeSpec
from prompt_tuning_jax.experiments import loading, planning
from prompt_tuning_jax.experiments.scoring import TaskScorer, check_scoring
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec
from prompt_tuning_jax.files import atomic_write


def evaluate(model: ModelSpec, prompt: PromptSpec, data: DataSpec, checkpoint_path: str | None = None,
             output_dir: str | None = None, scoring: str = "generate", decoding: DecodeSpec = DecodeSpec(),
             mesh_shape: Sequence[int] = (-1, 1)) -> dict[str, float]:
    """Metrics of the prompt at `checkpoint_path` (a `.npy`, or a MODEL_DIR: prompt and head) on
    `data.eval_split` of `data.task` (its first `data.eval_limit` examples when set).

    A list of `.npy` prompts is a prompt ensemble (`experiments.ensemble`): each prompt's metrics
    (`prompt_<i>/...`) and the majority vote's (`ensemble/...`).
    """
    tasks = data.tasks()
    if len(tasks) != 1:
        raise ValueError(f"evaluate() scores one task; MIXTURE_OR_TASK_NAME is {data.task!r}")
    task = tasks[0]
    check_scoring(scoring, task, prompt.head is not None)
    if isinstance(checkpoint_path, (list, tuple)):
        return _evaluate_ensemble(model, prompt, data, task, list(checkpoint_path), output_dir, scoring, decoding,
                                  mesh_shape)
    mesh_shape = planning.resolve_mesh_shape(planning.Run("evaluate", model, prompt, data, decoding=decoding,
                                                          scoring=scoring, mesh_shape=mesh_shape))
    loaded = loading.load_prompted(model, prompt, tasks, loading.make_mesh(mesh_shape), checkpoint_path)
    tok = loading.tokenize_split(task, data.eval_split, loaded, data, limit=data.eval_limit)
    scorer = TaskScorer(loaded, task, tok, data, scoring=scoring, decoding=decoding, padding_side=model.padding_side)
    metrics, scored = scorer()
    if output_dir and jax.process_index() == 0:
        rows = [json.dumps({"index": i, "input": e["inputs"], "target": e["targets"], "prediction": text,
                            "valid": bool(valid)}, ensure_ascii=False)
                for i, (e, text, valid) in enumerate(zip(tok.examples, scored.texts, scored.valid))]
        atomic_write(os.path.join(output_dir, "predictions.jsonl"), "\n".join(rows) + "\n")
        summary = {"task": task.name, "split": data.eval_split, "examples": len(tok), "scoring": scorer.mode,
                   "invalid": len(scored.valid) - sum(scored.valid), **metrics}
        atomic_write(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2))
    return metrics


def _evaluate_ensemble(model, prompt, data, task, prompt_files, output_dir, scoring, decoding, mesh_shape):
    from prompt_tuning_jax.experiments.ensemble import ensemble_scores

    if len(prompt_files) < 2:
        raise ValueError(f"a prompt ensemble needs at least 2 prompt files in CHECKPOINT_PATH, got {prompt_files}")
    metrics, predictions, votes, texts, tok = ensemble_scores(
        model, prompt, task, data, prompt_files, loading.make_mesh(mesh_shape), scoring=scoring, decoding=decoding,
        padding_side=model.padding_side)
    if output_dir and jax.process_index() == 0:
        rows = [json.dumps({"index": i, "input": e["inputs"], "target": e["targets"],
                            "predictions": [texts[k][i] for k in range(len(prompt_files))],
                            "vote": task.label_names[int(votes[i])] if votes[i] >= 0 else ""}, ensure_ascii=False)
                for i, e in enumerate(tok.examples)]
        atomic_write(os.path.join(output_dir, "predictions.jsonl"), "\n".join(rows) + "\n")
        summary = {"task": task.name, "split": data.eval_split, "examples": len(tok), "prompts": prompt_files,
                   **metrics}
        atomic_write(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2))
    return metrics
