"""JAX's persistent compilation cache, on by default: a command started again loads its compiled programs.

    compilation_cache.enable()                                    # ~/.cache/prompt_tuning_jax/xla
    compilation_cache.enable("/scratch/xla")                      # a folder, or a bucket: "gs://bucket/xla"
    compilation_cache.enable("off")                               # no cache
    compilation_cache.enable(model_dir="gs://bucket/runs/sst2")   # on several hosts: gs://bucket/runs/xla_cache

`cli.main` calls `enable` for every command, once `jax.distributed` has started and gin is parsed (it passes
the setting of --compilation_cache and the MODEL_DIR macro). Where the cache goes (`location`):
- the setting wins: --compilation_cache, else the PTJ_COMPILATION_CACHE variable, else jax's own
  JAX_COMPILATION_CACHE_DIR; a folder, a gs:// URL or `off`;
- on several processes (a pod slice) with MODEL_DIR in a bucket: `xla_cache` beside MODEL_DIR, where every
  host finds it, and so does the same job relaunched on new hosts after a preemption;
- otherwise `$PTJ_CACHE/xla` (PTJ_CACHE defaults to ~/.cache/prompt_tuning_jax, as for `files.CACHE_DIR`).

What jax 0.10 does with it: every backend is cached, the CPU included. An entry is keyed by the program's
HLO, the devices, the compile options and the jax/jaxlib versions, so a changed model, shape or mesh only
misses. Only process 0 writes; every process reads. jax writes a program only when it took at least
`jax_persistent_cache_min_compile_time_secs` to compile (jax's default: 1 s, which on a CPU skips all but
the train step of the demo: 2.6 of its 4.7 s of compiling). MIN_COMPILE_SECONDS sets it (unless
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS does): 0 s on a disk, where reading an entry back costs about a
millisecond, less than the smallest compile; jax's 1 s in a bucket, where each read is a round trip to the
store, as long as a small program takes to compile, so only the programs that matter are written there.
jax's minimum entry size keeps its default (0: none).

A cache that cannot be used never fails a run. jax already turns a failed read or write into a Python
warning, one per program; here the first becomes one `WARNING` line naming the folder, the cache is
turned off for the rest of the process, and the rest say nothing. (An entry cut short by a killed
write fails to read the same way: delete the folder to empty it.)
"""
from __future__ import annotations

import logging
import os
import posixpath
import warnings
from typing import Mapping

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from prompt_tuning_jax import files

logger = logging.getLogger(__name__)

SETTING_VARIABLE = "PTJ_COMPILATION_CACHE"
JAX_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
OFF = "off"
BUCKET_FOLDER = "xla_cache"  # beside a bucket MODEL_DIR on several processes
MIN_COMPILE_SECONDS = {"disk": 0.0, "bucket": 1.0}
JAX_CACHE_ERRORS = ("Error reading persistent compilation cache entry",
                    "Error writing persistent compilation cache entry")
_state = {"location": None, "hooked": False}


def default_location(environ: Mapping[str, str] = os.environ) -> str:
    """`$PTJ_CACHE/xla`, PTJ_CACHE defaulting to ~/.cache/prompt_tuning_jax."""
    return os.path.join(os.path.expanduser(environ.get("PTJ_CACHE", "~/.cache/prompt_tuning_jax")), "xla")


def beside(model_dir: str) -> str:
    """The cache folder next to a bucket MODEL_DIR: gs://b/runs/sst2 -> gs://b/runs/xla_cache (gs://b ->
    gs://b/xla_cache)."""
    scheme, _, rest = model_dir.rstrip("/").partition("://")
    parent = posixpath.dirname(rest) or rest
    return f"{scheme}://{parent}/{BUCKET_FOLDER}"


def location(setting: str | None = None, model_dir: str | None = None, process_count: int | None = None,
             environ: Mapping[str, str] = os.environ) -> str | None:
    """Where the cache goes, or None for none (see the module's docstring for the rule).

    process_count: the number of JAX processes; asked of jax only when it matters (a bucket MODEL_DIR)."""
    setting = setting or environ.get(SETTING_VARIABLE) or environ.get(JAX_VARIABLE)
    if setting:
        return None if setting.strip().lower() == OFF else files.absolute(setting)
    if isinstance(model_dir, str) and not files.is_local(model_dir):
        if (jax.process_count() if process_count is None else process_count) > 1:
            return beside(model_dir)
    return default_location(environ)


def enable(setting: str | None = None, model_dir: str | None = None) -> str | None:
    """Turns the cache on where `location` says (or off) for this process, before its first compile.

    Returns the folder, or None when the cache is off."""
    folder = location(setting, model_dir)
    _state["location"] = folder
    if folder is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        kind = "disk" if files.is_local(folder) else "bucket"
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS[kind])
    if not files.is_local(folder):  # XLA's GPU autotuning cache beside it is written by C++, which has no gs://
        jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    _say_errors_once()
    logger.info("compilation cache: %s", folder)
    return folder


def _say_errors_once() -> None:
    """Routes jax's warnings about failed cache reads and writes through `_give_up` (installed once)."""
    if _state["hooked"]:
        return
    _state["hooked"] = True
    show = warnings.showwarning

    def show_or_give_up(message, category, filename, lineno, file=None, line=None):
        if str(message).startswith(JAX_CACHE_ERRORS):
            _give_up(str(message))
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_or_give_up


def _give_up(message: str) -> None:
    """The first failure: one line, and the cache off for the rest of the process; later ones: nothing."""
    if _state["location"] is None:
        return
    reason = " ".join(message.split(": ", 1)[-1].split())
    logger.warning("compilation cache %s cannot be used (%s); going on without it", _state["location"],
                   reason[:300])
    _state["location"] = None
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cache.reset_cache()  # jax then asks again whether to use a cache, and finds it disabled
