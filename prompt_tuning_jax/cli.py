"""Command lines: `python -m prompt_tuning_jax.train | .eval | .infer` with gin files, T5X style.

    python -m prompt_tuning_jax.train \
      --gin_file=models/gpt2.gin --gin_file=prompts/from_class_labels.gin --gin_file=runs/prompt_finetune.gin \
      --gin.MODEL_DIR="'runs/sst2'" --gin.MIXTURE_OR_TASK_NAME="'sst2'"

Order of gin files: models -> prompts -> models/sizes -> runtime -> models/decoding
-> runs (later files and then --gin.NAME=VALUE overrides win). A --gin_file is
looked up in --gin_search_paths, the current folder, the configs shipped in the
package and the package itself (for pretrained_prompts/); the original library's
paths (`prompt_tuning/configs/...`) in its mirror `configs/original/` (`compat.py`),
and T5X's settings (`--gin.utils.DatasetConfig.batch_size=...`) become our macros. The shipped files
include each other by package path (`include 'prompt_tuning_jax/configs/...'`),
which gin resolves from the installed package.
Multi-host: on TPU VMs `jax.distributed` starts by itself; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import threading
from typing import Callable, Sequence

import gin

from prompt_tuning_jax import compat, experiments
from prompt_tuning_jax.experiments import demo_model, sweeps
from prompt_tuning_jax.models import hub_id
from prompt_tuning_jax.pretrained_prompts import released_prompt
from prompt_tuning_jax.training import compilation_cache, distributed, optim, watchdog

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs")
CONFIGURABLES = (experiments.ModelSpec, experiments.PromptSpec, experiments.DataSpec, experiments.TrainSpec,
                 experiments.DecodeSpec, experiments.train, experiments.evaluate, experiments.infer,
                 optim.make_optimizer, demo_model.demo_checkpoint, hub_id, released_prompt, sweeps.Sweep)
_registered: set[str] = set()
_search_paths_added: set[str] = set()


def register_configurables() -> None:
    """Makes the experiment layer's functions and specs gin-configurable as `ptj.<name>` (idempotent)."""
    for fn in CONFIGURABLES:
        if fn.__name__ not in _registered:
            gin.external_configurable(fn, module="ptj")
            _registered.add(fn.__name__)


def configured(fn: Callable) -> Callable:
    """`fn` with the parsed gin bindings applied: `configured(experiments.train)()`."""
    register_configurables()
    return gin.get_configurable(fn)


def config_search_paths(extra: Sequence[str] = ()) -> list[str]:
    return [os.path.abspath(p) for p in extra if p] + [os.getcwd(), CONFIG_DIR, PACKAGE_DIR, compat.ORIGINAL_DIR]


def find_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
    """The absolute path of a --gin_file, or FileNotFoundError naming where it was looked for."""
    if os.path.isabs(name) and os.path.isfile(name):
        return name
    folders = config_search_paths(search_paths)
    for folder in folders:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    if compat.original_gin_file(name):  # the original library's path: its mirror, or an error naming what maps
        return compat.original_gin_file(name)
    raise FileNotFoundError(f"gin file {name} not found in {folders} (use --gin_search_paths)")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = (),
              command: str | None = None) -> None:
    """Clears gin, parses the files (later ones win) and then the bindings; every required macro must be set.

    T5X settings among the bindings become ours first (`compat.translate_bindings`, for `command`)."""
    register_configurables()
    gin.clear_config()
    resolved = [find_gin_file(f, search_paths) for f in gin_files]
    bindings = compat.translate_bindings(bindings, command)
    for folder in [*search_paths, compat.ORIGINAL_DIR]:  # for `include`s of the user's own files
        if os.path.abspath(folder) not in _search_paths_added:
            gin.add_config_file_search_path(os.path.abspath(folder))
            _search_paths_added.add(os.path.abspath(folder))
    gin.parse_config_files_and_bindings(resolved, [], finalize_config=False)
    check_bindings_used(bindings, gin.config_str())
    gin.parse_config(list(bindings))
    missing = re.findall(r"^([A-Za-z_]\w*) = %gin\.REQUIRED$", gin.config_str(), flags=re.MULTILINE)
    if missing:
        raise ValueError("required gin macros not set: " + ", ".join(sorted(missing)) + " (pass "
                         + " ".join(f"--gin.{m}=..." for m in sorted(missing)) + ")")


def gin_macro(name: str):
    """The value of a gin macro in the parsed configuration, or None when no loaded file defines it."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return None


def check_bindings_used(bindings: Sequence[str], config: str) -> None:
    """A `--gin.NAME=...` macro binding must name a macro the loaded files use (`%NAME`), or it would be
    silently ignored: ValueError with the closest macro names."""
    used = set(re.findall(r"%([A-Za-z_]\w*)", config + "\n" + "\n".join(bindings)))
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if re.fullmatch(r"[A-Za-z_]\w*", name) and name not in used:
            close = difflib.get_close_matches(name, sorted(used), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f" (they use: {', '.join(sorted(used))})"
            raise ValueError(f"--gin.{name}: no loaded gin file uses the macro {name}, so it would do nothing{hint}")


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later files win)")
    p.add_argument("--gin_search_paths", default="", help="comma-separated folders to resolve gin files in")
    p.add_argument("--coordinator_address", help="host:port of process 0 (multi-process runs off TPU)")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    p.add_argument("--heartbeat_timeout", type=int, default=distributed.HEARTBEAT_TIMEOUT_S,
                   help="seconds after which a silent process counts as dead and the others exit non-zero")
    p.add_argument("--tfds_data_dir", help="T5X's flag, accepted for the original's scripts: tasks here do not read "
                                           "TFDS (see compat.note_tfds_data_dir)")
    p.add_argument("--compilation_cache", help="where compiled programs are kept between runs: a folder, a gs:// "
                                               "URL or 'off' (default: $PTJ_COMPILATION_CACHE, else "
                                               "~/.cache/prompt_tuning_jax/xla; see training/compilation_cache.py)")
    p.add_argument("--verbose", action="store_true")
    return p


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pulls `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) out of argv -> (other args, gin bindings)."""
    rest, bindings = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--gin.") and arg != "--gin.":
            body = arg[len("--gin."):]
            if "=" in body:
                name, value = body.split("=", 1)
            elif i + 1 < len(argv):
                name, value = body, argv[i + 1]
                i += 1
            else:
                raise ValueError(f"{arg} has no value; write --gin.NAME=VALUE")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
        i += 1
    return rest, bindings


def main(entry: Callable[..., None], description: str, argv=None,
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parses flags and gin, starts multi-host JAX, runs `entry`; errors are one `error:` line and exit 2.

    add_arguments: adds a command's own flags to the parser; `entry` then gets the parsed args.
    T5X settings that apply to one command only are read for `entry`'s (prompt_tuning_jax.train -> 'train').
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, bindings = split_gin_flags(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = build_parser(description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(rest)
    if not args.verbose:  # a library's worker thread failing with the main error prints no traceback of its own
        threading.excepthook = lambda hook_args: logging.getLogger(__name__).debug(
            "thread %s: %s", hook_args.thread, hook_args.exc_value)
        sys.unraisablehook = lambda hook_args: logging.getLogger(__name__).debug(
            "ignored in %s: %s", hook_args.object, hook_args.exc_value)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("datasets").propagate = False  # it prints its messages itself: once is enough
    # gin logs an error for every search path an `include` is not in; only a real miss matters.
    # orbax (and fsspec, in a bucket) log a damaged checkpoint's read errors themselves; the fallback's
    # warning says it in one line.
    noise = ("Path not found", "Failed to json parse", "Failed to read Metadata file", "Global error state set")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: not str(r.msg).startswith(noise))
        if not args.verbose:  # a library's logged traceback (orbax's save thread): the error line says it
            handler.addFilter(lambda r: not (r.exc_info and not r.name.startswith("prompt_tuning_jax")))
    try:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                               heartbeat_timeout_s=args.heartbeat_timeout, watch=not args.verbose)
        if distributed.is_initialized() and distributed.process_index() != 0:
            logging.getLogger().setLevel(logging.ERROR)  # only process 0 logs (errors still show)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - and prints its summary
        if not args.gin_file and not bindings:
            raise ValueError("no configuration: pass --gin_file=... (see configs/runs/)")
        command = entry.__module__.rpartition(".")[2]
        compat.note_tfds_data_dir(args.tfds_data_dir)
        parse_gin(args.gin_file, bindings, [p for p in args.gin_search_paths.split(",") if p],
                  command if command in ("train", "eval", "infer") else None)
        if command != "compile":  # programs compiled for a TPU topology absent here are not reused
            compilation_cache.enable(args.compilation_cache, gin_macro("MODEL_DIR"))
        entry(args) if add_arguments is not None else entry()
        watchdog.finish()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, no traceback wall (--verbose shows it)
        if args.verbose:
            raise
        watchdog.explain(e)  # a collective failed because a process died: that is the line to print
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


GIN_WRAPPER = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)")


def _one_line(e: BaseException) -> str:
    """The exception's message on one line, without gin's "In call to configurable ..." and file context."""
    message = re.sub(r"\s+in scope '[^']*'\s*$", "", GIN_WRAPPER.sub("", str(e)))
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip()
                    and not line.strip().startswith("In file") and not line.strip().startswith("^"))
    text = text or type(e).__name__
    return text if len(text) < 600 else text[:600] + "..."


def exit_process(code: int) -> None:
    """Ends a `python -m` process with `code`. After an error it skips interpreter teardown, where
    libraries' worker threads (orbax's after a failed save) would print tracebacks below the one
    `error:` line; every file was written atomically before, so nothing is left half-written."""
    if code == 0:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
