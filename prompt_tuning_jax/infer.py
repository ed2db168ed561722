"""Generate text with a trained prompt: `infer(...)`, and `python -m prompt_tuning_jax.infer --gin_file=...`.

    infer(ModelSpec("gpt2"), PromptSpec(length=20, placement="suffix"), checkpoint_path="runs/sst2",
          output_dir="runs/sst2/infer", task="sst2", feature_lengths={"inputs": 128, "targets": 4},
          batch_size=32, decoding=DecodeSpec(method="beam", num_beams=4))

    python -m prompt_tuning_jax.infer --gin_file=models/gpt2.gin --gin_file=prompts/random.gin \
      --gin_file=decoding/beam.gin --gin_file=runs/prompt_infer.gin \
      --gin.CHECKPOINT_PATH="'runs/sst2'" --gin.EVAL_OUTPUT_DIR="'runs/sst2/infer'" \
      --gin.MIXTURE_OR_TASK_NAME="'sst2'"

Writes `<output_dir>/predictions.jsonl` (one row per example: index, input,
prediction and, when known, target) and, when the split has targets,
`metrics.json` with the task's metrics on `task.text_to_prediction(text)`.
Inputs come from a task split or from a plain text file (one input per line).
Generation runs under one `jax.jit` per batch shape over the device mesh; each
process feeds its rows and only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from prompt_tuning_jax.decoding import DecodeSpec

DEFAULT_LENGTHS = {"inputs": 128, "targets": 8}


def infer(model, prompt, checkpoint_path: str | None, output_dir: str, task: str | None = None,
          split: str = "validation", inputs_file: str | None = None, feature_lengths: dict[str, int] | None = None,
          batch_size: int = 32, decoding: DecodeSpec = DecodeSpec(), task_overrides: dict[str, Any] | None = None,
          limit: int | None = None, mesh_shape: Sequence[int] = (-1, 1)) -> dict:
    """Generates for every input of a task split (or of `inputs_file`) with a prompt; returns a summary.

    model / prompt: `run.ModelSpec` / `run.PromptSpec`. checkpoint_path: a [P, H]
    .npy or a training MODEL_DIR (its prompts/prompt_latest.npy); None keeps the
    PromptSpec's own initializer. decoding.max_new_tokens None: the longest
    verbalizer (classification tasks: T5 labels end in EOS, GPT-2 targets have
    none, so generation stops after the label) or TASK_FEATURE_LENGTHS['targets'].
    Summary: {"predictions": path, "examples": N, "metrics": {...} or None}.
    """
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from prompt_tuning_jax import run
    from prompt_tuning_jax.data import EvalIterator, get_task, pipeline
    from prompt_tuning_jax import partitioning
    from prompt_tuning_jax.variables import Trainable

    lengths = dict(DEFAULT_LENGTHS if feature_lengths is None else feature_lengths)
    run._check_lengths(lengths)
    lengths.setdefault("targets", DEFAULT_LENGTHS["targets"])
    if (task is None) == (inputs_file is None):
        raise ValueError("infer() needs exactly one of MIXTURE_OR_TASK_NAME (a task) and INPUTS_FILE (a text file)")
    if not isinstance(task, (str, type(None))):
        raise ValueError(f"infer() generates for one task at a time, got {task!r}")
    if prompt.head is not None:
        raise ValueError(f"a prompt with head={prompt.head!r} classifies; it cannot generate text "
                         "(use evaluate() for its metrics)")
    task_obj = get_task(task, **dict(task_overrides or {})) if task else None
    if checkpoint_path:
        prompt = dataclasses.replace(prompt, init="file", file=run._prompt_file(checkpoint_path))
    elif prompt.init == "class_labels" and not prompt.class_labels and task_obj is not None:
        prompt = dataclasses.replace(prompt, class_labels=list(task_obj.label_names))

    mesh = partitioning.make_mesh(*mesh_shape)
    base = model.load(mesh=mesh)
    tokenizer = model.load_tokenizer()
    prompted = prompt.build(base, tokenizer)
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else base.config.eos_token_id

    if task_obj is not None:
        tok = run._tokenize(task_obj, split, tokenizer, base, lengths, limit=limit)
    else:
        with open(inputs_file, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()][:limit]
        examples = [{"inputs": line, "targets": "", "label": -1} for line in lines]
        tok = pipeline.tokenize(examples, tokenizer, max_input_length=lengths["inputs"],
                                max_target_length=lengths["targets"], target_prefix=run._target_prefix(base),
                                name=inputs_file)
    max_new = decoding.max_new_tokens
    if max_new is None:
        if task_obj is not None and task_obj.kind == "classification":
            max_new = int(run._labels_for(task_obj, tokenizer, base, lengths)[1].sum(-1).max())
        else:
            max_new = lengths["targets"]

    # One compiled generation: prompt replicated, frozen weights sharded by logical axes, rows over `data`.
    graphdef, trainable, frozen = nnx.split(prompted, Trainable, ...)
    replicated = partitioning.replicated(mesh)
    frozen_shardings = partitioning.state_shardings(frozen, mesh)
    rows = NamedSharding(mesh, P("data"))
    trainable = jax.device_put(nnx.to_pure_dict(trainable), replicated)
    frozen = jax.device_put(nnx.to_pure_dict(frozen), frozen_shardings)

    def generate(trainable, frozen, input_ids, attention_mask, task_index):
        live = nnx.merge(graphdef, trainable, frozen)
        return decoding.generate(live, input_ids, attention_mask, eos_id, task_index=task_index,
                                 max_new_tokens=max_new)

    generate = jax.jit(generate, in_shardings=(replicated, frozen_shardings, rows, rows, rows),
                       out_shardings=replicated)
    data_shards = mesh.shape["data"]
    if batch_size % data_shards:
        raise ValueError(f"BATCH_SIZE {batch_size} must be divisible by the {data_shards} data shards of the mesh")

    def global_rows(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(rows, x, (x.shape[0] * jax.process_count(), *x.shape[1:]))

    tokens, index = [], []
    for local in EvalIterator(tok, batch_size, padding_side=model.padding_side):
        out = generate(trainable, frozen, *(global_rows(local[k]) for k in ("input_ids", "attention_mask",
                                                                              "task_index")))
        keep = _allgather(local["weight"]) > 0
        tokens.append(np.asarray(out)[keep])
        index.append(_allgather(local["example_index"])[keep])
    tokens, index = np.concatenate(tokens), np.concatenate(index)
    tokens = tokens[np.argsort(index, kind="stable")]
    texts = [tokenizer.decode(_until_eos(row, eos_id), skip_special_tokens=True) for row in tokens.tolist()]

    examples = tok.examples
    has_targets = task_obj is not None and bool(examples) and all(
        e["label"] >= 0 if task_obj.kind == "classification" else bool(e.get("targets")) for e in examples)
    metrics = None
    if has_targets:
        predictions = [task_obj.text_to_prediction(text) for text in texts]
        metrics = {k: float(v) for k, v in task_obj.compute_metrics(task_obj.metric_targets(examples),
                                                                     predictions).items()}
    path = os.path.join(output_dir, "predictions.jsonl")
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        rows_out = []
        for i, (example, text) in enumerate(zip(examples, texts)):
            row = {"index": i, "input": example["inputs"], "prediction": text}
            if has_targets:
                row["target"] = example["targets"]
            rows_out.append(json.dumps(row, ensure_ascii=False))
        _write_atomic(path, "\n".join(rows_out) + "\n")
        if metrics is not None:
            summary = {"task": task_obj.name, "split": split, "examples": len(texts), **metrics}
            _write_atomic(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2) + "\n")
    return {"predictions": path, "examples": len(texts), "metrics": metrics}


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


def _allgather(x):
    """A per-process numpy array concatenated over processes (in process order)."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _run():
    import gin

    summary = gin.get_configurable("ptj.infer")()
    msg = f"wrote {summary['examples']} predictions to {summary['predictions']}"
    if summary["metrics"]:
        msg += "; " + ", ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items())
    print(msg)


def console_main():
    from prompt_tuning_jax import cli

    sys.exit(cli.main(_run, "Generate text with a soft prompt (gin-configured)."))


if __name__ == "__main__":
    console_main()
