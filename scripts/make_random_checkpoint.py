"""Write a random-weight Hugging Face checkpoint of a released size (no download).

    python scripts/make_random_checkpoint.py gpt2 /tmp/gpt2-random
    python scripts/make_random_checkpoint.py google/t5-base-lm-adapt /tmp/t5-base-random --tokenizer ../shared/data/t5_tokenizer

For benchmarks and pipeline checks on machines that cannot reach the hub: the
architecture is exactly the named model's (see `prompt_tuning_jax.models.preset`);
the weights are random, so metrics are near chance. `--tokenizer` copies a
tokenizer folder next to the weights so the folder works as INITIAL_CHECKPOINT_PATH alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a released size: gpt2, gpt2-medium, t5-small, google/t5-base-lm-adapt, ...")
    p.add_argument("out", help="folder to write (config.json + model.safetensors)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id to save alongside")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a config field, e.g. n_layer=2 (repeatable)")
    args = p.parse_args(argv)
    try:
        import prompt_tuning_jax as ptj
        from prompt_tuning_jax.models import preset

        config = preset(args.model)
        for item in args.override:
            field, _, value = item.partition("=")
            if field not in {f.name for f in dataclasses.fields(config)}:
                raise ValueError(f"--override {item}: {type(config).__name__} has no field {field!r}")
            config = dataclasses.replace(config, **{field: type(getattr(config, field) or 0)(value)})
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
