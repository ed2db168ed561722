"""Write a random-weight checkpoint of a released size (no download): Hugging Face (default) or T5X.

    python scripts/make_random_checkpoint.py gpt2 /tmp/gpt2-random
    python scripts/make_random_checkpoint.py google/t5-base-lm-adapt /tmp/t5-base-random --tokenizer ../shared/data/t5_tokenizer
    python scripts/make_random_checkpoint.py t5_1_1_lm100k_base /tmp/t5_1_1_lm100k_base/checkpoint_1100000 --format t5x

For benchmarks and pipeline checks on machines that cannot reach the hub: the
architecture is exactly the named model's (see `prompt_tuning_jax.models.preset`);
the weights are random, so metrics are near chance. The model is a Hugging Face id
or preset name (gpt2, t5-small, google/t5-base-lm-adapt, ...) or the original
library's T5X name of a released size (t5_1_1_lm100k_base, t5_1_1_xl, t5_small,
mt5_large, ...: `prompt_tuning_jax.models.HUB_IDS`).

--format hf writes config.json + model.safetensors into OUT; `--tokenizer` copies a
tokenizer folder next to the weights so the folder works as INITIAL_CHECKPOINT_PATH alone.

--format t5x writes a T5X checkpoint (T5 only) and OUT is its step directory (T5X
names them checkpoint_<step>). Each variable is drawn on its own (normal with std
1/sqrt(fan-in), embeddings std 1, norm scales ones) and written before the next is
drawn, so memory stays near one variable whatever the size (xxl included). T5X
checkpoints hold no tokenizer and no config: --tokenizer is refused, and config
fields the arrays do not tell (relative_attention_max_distance, dropout_rate, ...)
must be given as config_overrides when loading if they are not the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import zlib
from collections.abc import Mapping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)

T5X_STEP = 1_100_000  # the lm100k checkpoints' step: 1M pre-training steps + 100k LM adaptation


def hub_id_of(name: str) -> str:
    """A T5X name of a released size ('t5_1_1_lm100k_base') -> its hub id; any other name as given."""
    from prompt_tuning_jax.models import HUB_IDS

    for family, sizes in HUB_IDS.items():
        for size, hub_id in sizes.items():
            if name == f"{family}_{size}":
                return hub_id
    return name


def build_config(model: str, overrides: list[str]):
    from prompt_tuning_jax.models import preset

    config = preset(hub_id_of(model))
    for item in overrides:
        field, _, value = item.partition("=")
        if field not in {f.name for f in dataclasses.fields(config)}:
            raise ValueError(f"--override {item}: {type(config).__name__} has no field {field!r}")
        config = dataclasses.replace(config, **{field: type(getattr(config, field) or 0)(value)})
    return config


class RandomT5XVariables(Mapping):
    """The variables of a random T5 of `config` by T5X name, each drawn (float32) when it is looked up."""

    def __init__(self, config, seed: int):
        from flax import nnx

        import prompt_tuning_jax as ptj
        from prompt_tuning_jax.models import t5x

        abstract = nnx.eval_shape(lambda: ptj.init_random(config))  # shapes only: nothing is allocated
        self.shapes = t5x.variable_shapes(abstract)
        self.seed = seed

    def __getitem__(self, name: str):
        import numpy as np

        shape = self.shapes[name]
        if name.endswith("/scale"):  # a layer norm [d]
            return np.ones(shape, np.float32)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])  # the same whatever the order
        std = 1.0 if name.endswith("token_embedder/embedding") else shape[-2] ** -0.5  # kernels are [in, out]
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(std)
        return array

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)


def write_t5x(config, out: str, step: int, seed: int) -> int:
    """A random T5X checkpoint of `config` at `out`; -> its number of parameters."""
    from prompt_tuning_jax.models import t5x

    variables = RandomT5XVariables(config, seed)
    t5x.write_checkpoint(out, variables, step)  # one variable drawn at a time
    return sum(math.prod(shape) for shape in variables.shapes.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a released size: gpt2, gpt2-medium, t5-small, google/t5-base-lm-adapt, "
                                 "t5_1_1_lm100k_base, mt5_xl, ...")
    p.add_argument("out", help="--format hf: the folder to write; t5x: the step directory (.../checkpoint_1100000)")
    p.add_argument("--format", choices=["hf", "t5x"], default="hf")
    p.add_argument("--step", type=int, default=None, help=f"t5x only: the step saved in it (default {T5X_STEP})")
    p.add_argument("--tokenizer", help="hf only: tokenizer folder or hub id to save alongside (T5X checkpoints "
                                       "hold no tokenizer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a config field, e.g. n_layer=2 (repeatable)")
    args = p.parse_args(argv)
    try:
        import prompt_tuning_jax as ptj
        from prompt_tuning_jax.models import T5Config

        if args.format == "hf" and args.step is not None:
            raise ValueError("--step is for --format t5x (a Hugging Face folder has no step)")
        if args.format == "t5x" and args.tokenizer:
            raise ValueError("--tokenizer: a T5X checkpoint holds no tokenizer; pass the tokenizer to the "
                             "command that loads it, or write --format hf")
        config = build_config(args.model, args.override)
        if args.format == "t5x":
            if not isinstance(config, T5Config):
                raise ValueError(f"--format t5x: T5X checkpoints hold T5 models only; {args.model} is "
                                 f"{config.model_type}")
            step = T5X_STEP if args.step is None else args.step
            count = write_t5x(config, args.out, step, args.seed)
            named = args.model if hub_id_of(args.model) == args.model else f"{args.model} ({hub_id_of(args.model)})"
            print(f"wrote a random T5X checkpoint of {named}, {count:,} parameters (float32), step {step}, "
                  f"to {args.out}")
            return 0
        ptj.save_pretrained(ptj.init_random(config, seed=args.seed), args.out)
        if args.tokenizer:
            ptj.load_tokenizer(args.tokenizer).save_pretrained(args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote a random {args.model} ({config.model_type}) checkpoint to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
