"""Data layer: tasks (rows -> text), metrics, and the pipeline (text -> numpy batches).

The data layer never knows the model: tasks produce text and labels, the
pipeline tokenizes with the model's tokenizer and pads to static shapes.
"""
from prompt_tuning_jax.data import metrics
from prompt_tuning_jax.data.pipeline import (
    Batcher,
    EvalIterator,
    Prefetch,
    Tokenized,
    TrainIterator,
    bucket_lengths,
    concatenate,
    measure_throughput,
    pad_id_for,
    tokenize,
    tokenize_task,
)
from prompt_tuning_jax.data.tasks import (
    FileSource,
    HFSource,
    Task,
    get_task,
    list_tasks,
    register_task,
    shared_data_dir,
)

__all__ = [
    "Batcher", "EvalIterator", "FileSource", "HFSource", "Prefetch", "Task", "Tokenized",
    "TrainIterator", "bucket_lengths", "concatenate", "get_task", "list_tasks", "measure_throughput",
    "metrics", "pad_id_for", "register_task", "shared_data_dir", "tokenize", "tokenize_task",
]
