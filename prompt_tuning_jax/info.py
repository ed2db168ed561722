"""`python -m prompt_tuning_jax.info MODEL [--text TEXT --tokenizer TOK]`: load a checkpoint and describe it.

Prints the family, sizes, parameter count and, given a tokenizer, the model's
next-token prediction for a text: a quick check that a checkpoint loads and runs.
"""
from __future__ import annotations

import argparse
import sys


def describe(model) -> str:
    import jax
    from flax import nnx

    cfg = model.config
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if cfg.model_type == "gpt2":
        shape = f"{cfg.n_layer} layers, hidden {cfg.n_embd}, {cfg.n_head} heads, vocab {cfg.vocab_size}"
    else:
        kind = "v1.1-style (gated, untied)" if not cfg.tie_word_embeddings else "v1.0-style (tied, rescaled)"
        shape = (f"{cfg.num_layers}+{cfg.n_decoder_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads "
                 f"x {cfg.d_kv}, d_ff {cfg.d_ff} ({cfg.feed_forward_proj}), vocab {cfg.vocab_size}, {kind}")
    return f"{cfg.model_type}: {shape}; {n:,} parameters"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="hub id or local Hugging Face checkpoint folder")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the model's)")
    parser.add_argument("--text", help="text whose next token to predict")
    args = parser.parse_args(argv)
    try:
        import numpy as np

        import prompt_tuning_jax as ptj

        model = ptj.from_pretrained(args.model)
        print(describe(model))
        if args.text:
            tok = ptj.load_tokenizer(args.tokenizer or args.model)
            ids = np.asarray([tok(args.text)["input_ids"]], np.int32)
            if model.config.model_type == "gpt2":
                logits = model(ids)[0, -1]
            else:
                start = np.full((1, 1), model.config.decoder_start_token_id, np.int32)
                logits = model(ids, decoder_input_ids=start)[0, -1]
            top = np.argsort(-np.asarray(logits))[:5]
            print(f"next token after {args.text!r}: " + ", ".join(f"{tok.decode([int(i)])!r}" for i in top))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def console_main():
    sys.exit(main())


if __name__ == "__main__":
    console_main()
