"""METHOD 'per_layer': a [P, H] prompt at the input of every block (the original's `extended/train/per_layer.py`).

Between prompt tuning (Lester et al., 2021) and prefix tuning (Li and Liang, 2021): the prompt is
[L, P, H], one per block the input passes through (`config.prompt_blocks`: GPT-2's L blocks, T5's
encoder blocks). Block 0's is inserted into the embedded input like any prompt (prefix or suffix);
before each block i > 0, the hidden states at the prompt's P positions become (PER_LAYER_COMBINE)

- 'replace': the layer's prompt, what the block before wrote there is discarded (the original's default);
- 'add': the block before's output plus the layer's prompt (closer to Qin and Eisner, 2021).

The frozen model projects each layer's prompt to its queries, keys and values, so unlike prefix
tuning no keys or values are learned directly. L x P x H values train (plus a head); the prompt saves
as `prompts/prompt_<step>.npy` [L, P, H] and loads back as PROMPT_FILE or CHECKPOINT_PATH. Every layer
starts from PROMPT_INIT, drawn per layer (the original drew each from uniform(0.5)); PROMPT_FILE gives
all [L, P, H]. Decoding runs the prompt in the prefill only: the positions a step adds are never the
prompt's (`models.common.PromptSite`), so no step re-adds it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prompt_tuning_jax.methods.base import Method, register_method
from prompt_tuning_jax.models.common import combine_at
from prompt_tuning_jax.variables import Trainable

COMBINES = ("replace", "add")


def _prefix_slots(batch: int, length: int, prompt_length: int) -> jax.Array:
    """[B, S]: the prompt row at each of the first P positions, -1 after them."""
    positions = jnp.arange(length)
    return jnp.broadcast_to(jnp.where(positions < prompt_length, positions, -1), (batch, length))


def replace_prompt(prompt: jax.Array, x: jax.Array) -> jax.Array:
    """prompt [B, P, H] in place of x [B, S, H]'s first P positions -> [B, S, H] (the original's `replace_prompt`)."""
    return combine_at(x, prompt, _prefix_slots(x.shape[0], x.shape[1], prompt.shape[1]), "replace")


def add_prompt(prompt: jax.Array, x: jax.Array) -> jax.Array:
    """prompt [B, P, H] added to x [B, S, H]'s first P positions -> [B, S, H] (the original's `add_prompt`)."""
    return combine_at(x, prompt, _prefix_slots(x.shape[0], x.shape[1], prompt.shape[1]), "add")


@register_method
class PerLayer(Method):
    name = "per_layer"
    has_prompt = True
    settings = {"per_layer_combine": "replace"}  # PER_LAYER_COMBINE

    def check(self, spec) -> None:
        if spec.per_layer_combine not in COMBINES:
            raise ValueError(f"PER_LAYER_COMBINE must be 'replace' or 'add', got {spec.per_layer_combine!r}")
        if spec.num_tasks > 1:
            raise ValueError(f"METHOD 'per_layer' trains one prompt per block for one task, but there are "
                             f"{spec.num_tasks} tasks: give one MIXTURE_OR_TASK_NAME, or use METHOD 'multitask'")

    def prompt_options(self, spec) -> dict:
        return {"layer_combine": spec.per_layer_combine}

    def trainable(self, prompted):
        return Trainable
