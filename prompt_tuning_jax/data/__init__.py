"""Data layer: tasks (rows -> text), metrics, and the pipeline (text -> numpy batches).

The data layer never knows the model: tasks produce text and labels, the
pipeline tokenizes with the model's tokenizer and pads to static shapes.

    sources.py         where rows come from (local files, the Hugging Face hub)
    formats.py         how a row becomes text (T5 formats, WSC, MultiRC, ReCoRD)
    tasks.py           `Task`: formatter, verbalizers, metrics of one data set
    registry.py        the named tasks, the original library's T5X names and `get_task`;
                       importing this package registers them
    demo_sentiment.py  the synthetic offline sentiment data
    metrics.py         metric fns; pipeline.py: tokenize, pad, batch, shard
"""
from prompt_tuning_jax.data import metrics, registry  # noqa: F401
from prompt_tuning_jax.data.pipeline import (
    Batcher,
    EvalIterator,
    Prefetch,
    Tokenized,
    TrainIterator,
    bucket_lengths,
    concatenate,
    fit_buckets,
    measure_throughput,
    pad_id_for,
    tokenize,
    tokenize_task,
)
from prompt_tuning_jax.data.registry import get_task, list_tasks, register_alias, register_task, t5x_names
from prompt_tuning_jax.data.sources import (
    DerivedValidation,
    FileSource,
    HFSource,
    HubError,
    LocalOrHub,
    shared_data_dir,
)
from prompt_tuning_jax.data.tasks import Task

__all__ = [
    "Batcher", "DerivedValidation", "EvalIterator", "FileSource", "HFSource", "HubError", "LocalOrHub",
    "Prefetch", "Task", "Tokenized", "TrainIterator", "bucket_lengths", "concatenate", "fit_buckets", "get_task",
    "list_tasks", "measure_throughput", "metrics", "pad_id_for", "register_alias", "register_task",
    "shared_data_dir", "t5x_names", "tokenize", "tokenize_task",
]
