"""The original library's commands, as written: its gin file paths and the T5X flags its scripts pass.

A script of google-research/prompt-tuning (`scripts/sst2-demo.sh`) runs here once
`python3 -m t5x.train` reads `python -m prompt_tuning_jax.train` (and `t5x.eval`
`.eval`, `prompt_tuning.scripts.find_module` `prompt_tuning_jax.find_module`):

- gin files by the original's paths (`prompt_tuning/configs/models/t5_1_1_base_prompt.gin`)
  resolve in `configs/original/`, a mirror of the original's layout (`prompt_tuning/configs/...`)
  whose files include ours and set the original's and T5X's defaults;
- T5X's settings on the command line (`--gin.utils.DatasetConfig.batch_size=128`,
  `--gin.partitioning.PjitPartitioner.model_parallel_submesh=(4, 4, 1, 2)`) become our
  macros, each said on one `t5x:` line (`translate_bindings`); a T5X setting with no
  counterpart is an error that names the ones that map;
- `--tfds_data_dir` is accepted and said to be unused (`note_tfds_data_dir`).
MIXTURE_OR_TASK_MODULE and USE_CACHED_TASKS are macros of the runs/ files (`data.registry.import_task_module`).
"""
from __future__ import annotations

import ast
import math
import os
import re
import sys
from typing import Sequence

ORIGINAL_PREFIX = "prompt_tuning/configs/"
ORIGINAL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "original")


def original_gin_file(name: str) -> str | None:
    """The mirror of an original gin path (`prompt_tuning/configs/models/t5_1_1_base_prompt.gin`), or None
    when `name` is not one; FileNotFoundError naming what maps when the original's file has no mirror.

    ORIGINAL_DIR is also a gin search path, so the original's `include`s in a user's own files resolve."""
    if not name.startswith(ORIGINAL_PREFIX):
        return None
    path = os.path.join(ORIGINAL_DIR, name)
    if os.path.isfile(path):
        return path
    mirror = os.path.join(ORIGINAL_DIR, ORIGINAL_PREFIX)
    mapped = sorted(os.path.relpath(os.path.join(root, f), mirror)
                    for root, _, names in os.walk(mirror) for f in names if f.endswith(".gin"))
    raise FileNotFoundError(f"gin file {name}: the original library's file has no counterpart here; the ones that "
                            f"map are {ORIGINAL_PREFIX}{{{', '.join(mapped)}}}")


def _mesh_from_partitions(value) -> tuple[str, str]:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_partitions must be a positive integer, got {value!r}")
    return "MESH_SHAPE", f"(-1, {value})"


def _mesh_from_submesh(value) -> tuple[str, str]:
    """T5X's model-parallel submesh (x, y, z, cores) of chips -> our model axis: their product of devices."""
    if value is None:
        return "MESH_SHAPE", "(-1, 1)"
    if not (isinstance(value, tuple) and len(value) == 4 and all(isinstance(v, int) and v >= 1 for v in value)):
        raise ValueError(f"model_parallel_submesh must be (x, y, z, cores) of positive integers, got {value!r}")
    return "MESH_SHAPE", f"(-1, {math.prod(value)})"


def _macro(name: str):
    return lambda value: (name, repr(value))


# T5X setting -> (commands it applies to, how it becomes one of our macros). In T5X training the scoped
# `train/` and `train_eval/` DatasetConfig bindings of train.gin win over unscoped ones.
T5X_SETTINGS = {
    "utils.DatasetConfig.split": (("eval", "infer"), _macro("EVAL_SPLIT")),
    "utils.DatasetConfig.batch_size": (("eval", "infer"), _macro("BATCH_SIZE")),
    "train/utils.DatasetConfig.split": (("train",), _macro("TRAIN_SPLIT")),
    "train_eval/utils.DatasetConfig.split": (("train",), _macro("EVAL_SPLIT")),
    "infer_eval/utils.DatasetConfig.split": (("train",), _macro("EVAL_SPLIT")),
    "train/utils.DatasetConfig.batch_size": (("train",), _macro("BATCH_SIZE")),
    "utils.SaveCheckpointConfig.keep": (("train",), _macro("KEEP_CHECKPOINTS")),
    "utils.SaveCheckpointConfig.period": (("train",), _macro("CHECKPOINT_PERIOD")),
    "partitioning.PjitPartitioner.num_partitions": (("train", "eval", "infer"), _mesh_from_partitions),
    "partitioning.PjitPartitioner.model_parallel_submesh": (("train", "eval", "infer"), _mesh_from_submesh),
}


def translate_bindings(bindings: Sequence[str], command: str | None) -> list[str]:
    """`NAME = VALUE` bindings with T5X's settings turned into ours, each said on a `t5x:` line (stderr).

    Bindings of our own (macros, `ptj.*`) pass unchanged. A T5X setting that does not apply to
    `command` or has no counterpart raises ValueError naming what maps.
    """
    out = []
    for binding in bindings:
        name, _, value = (part.strip() for part in binding.partition("="))
        if re.fullmatch(r"[A-Za-z_]\w*", name) or name.startswith("ptj.") or "/ptj." in name:
            out.append(binding)
            continue
        if name not in T5X_SETTINGS:
            raise ValueError(f"--gin.{name}: a T5X setting with no counterpart here; the T5X settings that map are "
                             f"{', '.join(T5X_SETTINGS)} (our own macros are listed in configs/runs/*.gin)")
        commands, convert = T5X_SETTINGS[name]
        if command is not None and command not in commands:
            raise ValueError(f"--gin.{name} does nothing in T5X's {command} (T5X's train.gin scopes its datasets: "
                             "train/, train_eval/); set our macro instead (BATCH_SIZE, EVAL_SPLIT, ...)")
        try:
            macro, ours = convert(ast.literal_eval(value))
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"--gin.{name}={value}: {e}") from None
        print(f"t5x: --gin.{name}={value} -> {macro} = {ours}", file=sys.stderr)
        out.append(f"{macro} = {ours}")
    return out


def note_tfds_data_dir(tfds_data_dir: str | None) -> None:
    """T5X's --tfds_data_dir: accepted, and said why it is not needed."""
    if tfds_data_dir:
        print(f"t5x: --tfds_data_dir={tfds_data_dir} is not used: tasks here read TSV files ($PTJ_SHARED_DATA, or "
              "TASK_OVERRIDES={'data_dir': ...}) or Hugging Face datasets, not TFDS", file=sys.stderr)
