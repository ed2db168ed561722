"""`infer(...)`: generate text with a prompt; `python -m prompt_tuning_jax.infer` runs it.

    infer(ModelSpec("gpt2"), PromptSpec(length=20, placement="suffix"),
          DataSpec("sst2", feature_lengths={"inputs": 128, "targets": 4}),
          checkpoint_path="runs/sst2", output_dir="runs/sst2/infer", decoding=DecodeSpec(method="beam"))

Writes `<output_dir>/predictions.jsonl` (one row per example: index, input,
prediction and, when known, target) and, when the split has targets,
`metrics.json` with the task's metrics on `task.text_to_prediction(text)`.
Inputs come from a task split or from a plain text file (one input per line).
Generation runs under one `jax.jit` per batch shape over the device mesh; each
process feeds its rows and only process 0 writes.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax

from prompt_tuning_jax.data import EvalIterator, pipeline
from prompt_tuning_jax.decoding import DecodeSpec
from prompt_tuning_jax.experiments import loading, planning, scoring
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec
from prompt_tuning_jax import files
from prompt_tuning_jax.files import atomic_write


def infer(model: ModelSpec, prompt: PromptSpec, data: DataSpec, checkpoint_path: str | None, output_dir: str,
          inputs_file: str | None = None, decoding: DecodeSpec = DecodeSpec(),
          mesh_shape: Sequence[int] = (-1, 1)) -> dict:
    """Generates for every input of `data.eval_split` of `data.task` (or of `inputs_file`) -> a summary.

    checkpoint_path: a [P, H] .npy or a training MODEL_DIR; None keeps the
    PromptSpec's own initializer. decoding.max_new_tokens None: the longest
    verbalizer (classification tasks: T5 labels end in EOS, GPT-2 targets have
    none, so generation stops after the label) or TASK_FEATURE_LENGTHS['targets'].
    Summary: {"predictions": path, "examples": N, "metrics": {...} or None}.
    """
    if (data.task is None) == (inputs_file is None):
        raise ValueError("infer() needs exactly one of MIXTURE_OR_TASK_NAME (a task) and INPUTS_FILE (a text file)")
    if not isinstance(data.task, (str, type(None))):
        raise ValueError(f"infer() generates for one task at a time, got {data.task!r}")
    if prompt.head is not None:
        raise ValueError(f"a prompt with head={prompt.head!r} classifies; it cannot generate text "
                         "(use evaluate() for its metrics)")
    tasks = data.tasks()
    task = tasks[0] if tasks else None
    mesh_shape = planning.resolve_mesh_shape(planning.Run("infer", model, prompt, data, decoding=decoding,
                                                          mesh_shape=mesh_shape))
    loaded = loading.load_prompted(model, prompt, tasks, loading.make_mesh(mesh_shape), checkpoint_path)
    tok = _inputs(task, inputs_file, loaded, data)
    generator = scoring.make_generator(loaded, decoding, scoring.default_max_new_tokens(task, loaded, data))
    texts = scoring.generate_texts(generator, EvalIterator(tok, data.batch_size, padding_side=model.padding_side),
                                   loaded)
    return _write(output_dir, task, data.eval_split, tok.examples, texts)


def _inputs(task, inputs_file: str | None, loaded, data: DataSpec) -> pipeline.Tokenized:
    if task is not None:
        return loading.tokenize_split(task, data.eval_split, loaded, data, limit=data.eval_limit)
    lines = [line for line in files.read_text(inputs_file).splitlines() if line.strip()][:data.eval_limit]
    examples = [{"inputs": line, "targets": "", "label": -1} for line in lines]
    return pipeline.tokenize(examples, loaded.tokenizer, max_input_length=data.feature_lengths["inputs"],
                             max_target_length=data.feature_lengths["targets"],
                             target_prefix=loaded.model.target_prefix, name=inputs_file)


def _write(output_dir: str, task, split: str, examples: list[dict], texts: list[str]) -> dict:
    """predictions.jsonl and, when every example has a target, metrics.json (process 0 writes)."""
    has_targets = task is not None and bool(examples) and all(
        e["label"] >= 0 if task.kind == "classification" else bool(e.get("targets")) for e in examples)
    metrics = None
    if has_targets:
        predictions = [task.text_to_prediction(text) for text in texts]
        metrics = {k: float(v) for k, v in task.compute_metrics(task.metric_targets(examples), predictions).items()}
    path = os.path.join(output_dir, "predictions.jsonl")
    if jax.process_index() == 0:
        rows = []
        for i, (example, text) in enumerate(zip(examples, texts)):
            row = {"index": i, "input": example["inputs"], "prediction": text}
            if has_targets:
                row["target"] = example["targets"]
            rows.append(json.dumps(row, ensure_ascii=False))
        atomic_write(path, "\n".join(rows) + "\n")
        if metrics is not None:
            summary = {"task": task.name, "split": split, "examples": len(texts), **metrics}
            atomic_write(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2) + "\n")
    return {"predictions": path, "examples": len(texts), "metrics": metrics}
