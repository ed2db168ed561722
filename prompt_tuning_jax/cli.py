"""Command lines: `python -m prompt_tuning_jax.train | .eval | .infer` with gin files, T5X style.

    python -m prompt_tuning_jax.train \
      --gin_file=models/gpt2.gin --gin_file=prompts/from_class_labels.gin --gin_file=runs/prompt_finetune.gin \
      --gin.MODEL_DIR="'runs/sst2'" --gin.MIXTURE_OR_TASK_NAME="'sst2'"

Order of gin files: models -> prompts -> sizes -> decoding -> runs (later files
and then --gin.NAME=VALUE overrides win). Paths resolve against
--gin_search_paths, the current folder and the shipped `configs/`.
Multi-host: on TPU VMs `jax.distributed` starts by itself; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

CONFIG_DIRS = (
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"),  # a checkout
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"),  # an installed package
)


def config_search_paths(extra: Sequence[str] = ()) -> list[str]:
    paths = [p for p in extra if p] + [os.getcwd()]
    return paths + [d for d in CONFIG_DIRS if os.path.isdir(d)]


def register_configurables() -> None:
    """Makes our plain functions and classes gin-configurable under the `ptj.` prefix (idempotent)."""
    import gin

    from prompt_tuning_jax import demo, run
    from prompt_tuning_jax.training import optim

    if "ptj.train" in _registered:
        return
    for fn in (run.ModelSpec, run.PromptSpec, run.train, run.evaluate, optim.make_optimizer,
               demo.demo_checkpoint):
        gin.external_configurable(fn, module="ptj")
    from prompt_tuning_jax import infer as infer_lib

    gin.external_configurable(infer_lib.infer, module="ptj")
    gin.external_configurable(infer_lib.DecodeSpec, module="ptj")
    _registered.add("ptj.train")


_registered: set[str] = set()


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    import gin

    register_configurables()
    gin.clear_config()
    # Absolute folders only (no '' prefix): a relative `include 'models/x.gin'` that misses would
    # otherwise be tried as a Python package named `models`, which breaks on namespace packages.
    gin.config._LOCATION_PREFIXES[:] = [os.path.abspath(p) for p in config_search_paths(search_paths)]
    resolved = []
    for f in gin_files:
        found = f if os.path.isabs(f) and os.path.exists(f) else next(
            (os.path.join(p, f) for p in config_search_paths(search_paths) if os.path.exists(os.path.join(p, f))),
            None)
        if found is None:
            raise FileNotFoundError(f"gin file {f} not found in {config_search_paths(search_paths)} "
                                    "(use --gin_search_paths)")
        resolved.append(found)
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)
    missing = sorted(name for (name, selector), params in gin.config._CONFIG.items()
                     if selector == "gin.macro" and repr(params.get("value")) == "%gin.REQUIRED")
    if missing:
        raise ValueError("required gin macros not set: " + ", ".join(missing) + " (pass "
                         + " ".join(f"--gin.{m}=..." for m in missing) + ")")


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later files win)")
    p.add_argument("--gin_search_paths", default="", help="comma-separated folders to resolve gin files in")
    p.add_argument("--coordinator_address", help="host:port of process 0 (multi-process runs off TPU)")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
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


def main(entry: Callable, description: str, argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, bindings = split_gin_flags(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = build_parser(description).parse_args(rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # gin logs an error for every search path an `include` is not in; only a real miss matters.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: not str(r.msg).startswith("Path not found"))
    try:
        from prompt_tuning_jax.training import distributed

        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        if not args.gin_file and not bindings:
            raise ValueError("no configuration: pass --gin_file=... (see configs/runs/)")
        parse_gin(args.gin_file, bindings, [p for p in args.gin_search_paths.split(",") if p])
        entry()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, no traceback wall (--verbose shows it)
        if args.verbose:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()
                    and not line.strip().startswith("In file") and not line.strip().startswith("^"))
    text = text or type(e).__name__
    return text if len(text) < 600 else text[:600] + "..."
