"""Released prompts that ship with the package, and their checksums.

    path = released_prompt("t5_1_1_lm100k_base/sst2.npy")   # inside the installed package

Each file sits beside a gin file that sets the whole protocol it was released
with (`t5_1_1_lm100k_base/sst2.gin`: model, task format, lengths, decoding,
scoring). `prompts.io.load_prompt` checks a released file against its sha256
before using it, so a damaged copy fails with a clear error instead of giving
wrong numbers.
"""
from __future__ import annotations

import hashlib
import os

FOLDER = os.path.dirname(os.path.abspath(__file__))

# Lester et al. (2021), trained on T5 1.1 lm100k base; copies of the files in
# google-research/prompt-tuning/prompt_tuning/pretrained_prompts/t5_1_1_lm100k_base/.
RELEASED = {
    "t5_1_1_lm100k_base/sst2.npy": "74a421fd286e967bf75eedd3e3b1e3076c884c9e02ea27561449cdcdf306cfb9",
    "t5_1_1_lm100k_base/rte.npy": "b31903cbbd7549cf64029bfd635af83b6cd39ed40e5a0252bcf2f70030a5ede5",
    "t5_1_1_lm100k_base/mrpc.npy": "b8ef84399006baf08f661f0c12eeddd2e3c56d809642988469afb86a9ecf2691",
}


def released_prompt(name: str) -> str:
    """The path of a released prompt inside the installed package, by its name in `RELEASED`."""
    if name not in RELEASED:
        raise ValueError(f"unknown released prompt {name!r}; released: {', '.join(sorted(RELEASED))}")
    path = os.path.join(FOLDER, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"released prompt {path} is missing from the installed package; reinstall it")
    return path


def expected_sha256(path: str | os.PathLike) -> str | None:
    """The checksum a file must have if it is one of the released prompts of this package, else None."""
    if "://" in os.fspath(path):  # a bucket: not a file of this package
        return None
    real = os.path.realpath(os.fspath(path))
    if os.path.commonpath([real, FOLDER]) != FOLDER:
        return None
    return RELEASED.get(os.path.relpath(real, FOLDER).replace(os.sep, "/"))


def verify(path: str | os.PathLike, data: bytes) -> None:
    """Raises ValueError if `path` is a released prompt and `data`, its bytes, are not the released ones."""
    expected = expected_sha256(path)
    if expected is None:
        return
    digest = hashlib.sha256(data)
    if digest.hexdigest() != expected:
        raise ValueError(f"released prompt {path} is damaged: sha256 {digest.hexdigest()}, expected {expected}; "
                         "reinstall prompt_tuning_jax (or restore the file from google-research/prompt-tuning)")
