"""`python -m prompt_tuning_jax.find_module [MODULE]`: print the folder a module is installed in.

As in the original library, for `--gin_search_paths` or for the released prompts:

    python -m prompt_tuning_jax.find_module                                       # the package
    python -m prompt_tuning_jax.find_module prompt_tuning_jax.configs             # the shipped gin files
    python -m prompt_tuning_jax.find_module prompt_tuning_jax.pretrained_prompts  # the released prompts

The original's scripts ask for `prompt_tuning`, `t5x` and `flaxformer` (as gin search paths, and
`prompt_tuning/../pretrained_prompts/...` for the released prompts): `prompt_tuning` is this package, and
`t5x` / `flaxformer`, which are not used here, answer the mirror of the original's gin files
(`configs/original`, where T5X's run defaults now live), saying so on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys


def module_folder(name: str) -> str:
    if name in ("prompt_tuning", "t5x", "flaxformer"):  # the original library's (see above)
        from prompt_tuning_jax import compat

        folder = module_folder("prompt_tuning_jax") if name == "prompt_tuning" else compat.ORIGINAL_DIR
        print(f"find_module: {name} is the original library's; answering {folder}", file=sys.stderr)
        return folder
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
