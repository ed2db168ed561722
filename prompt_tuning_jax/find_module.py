"""`python -m prompt_tuning_jax.find_module [MODULE]`: print the folder a module is installed in.

As in the original library, for `--gin_search_paths` or for the released prompts:

    python -m prompt_tuning_jax.find_module                                       # the package
    python -m prompt_tuning_jax.find_module prompt_tuning_jax.configs             # the shipped gin files
    python -m prompt_tuning_jax.find_module prompt_tuning_jax.pretrained_prompts  # the released prompts
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys


def module_folder(name: str) -> str:
    module = importlib.import_module(name)
    if getattr(module, "__file__", None) is None:
        raise ModuleNotFoundError(f"{name} is a namespace package with no single folder")
    return os.path.dirname(os.path.abspath(module.__file__))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", default="prompt_tuning_jax")
    args = parser.parse_args(argv)
    try:
        print(module_folder(args.module))
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
