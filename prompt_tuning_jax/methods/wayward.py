"""METHOD 'wayward': prompt tuning pulled toward a discrete prompt (Khashabi et al., 2021, "Prompt Waywardness").

The loss gains gamma * d(prompt, target), where the target is the text WAYWARD_PROMPT embedded by the
model's own table ([P, H]: its tokens' rows, cut to P, zero rows after them) and
d(x, y) = sum_p ||x_p - y_p||^2 / P, as the original library's `train/wayward.py` (gamma 0.01 there).
With K task prompts [K, P, H] the distance is averaged over them. Everything else is prompt tuning:
the prompt (and a head) trains; `prompts/wayward.gin` also starts it from the same text.
The term is added once per step to the objective's mean loss, after gradient accumulation.
`python -m prompt_tuning_jax.inspect PROMPT --toward TEXT` shows how close a prompt came to TEXT.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from prompt_tuning_jax.methods.base import Method, register_method
from prompt_tuning_jax.variables import Trainable


def discrete_prompt(table, tokenizer, text: str, length: int) -> np.ndarray:
    """`text` as a [length, H] prompt: the embeddings of its tokens (no special tokens), cut to `length`,
    then zero rows. `table`: the model's [V, H] embedding table."""
    ids = tokenizer.encode(text, add_special_tokens=False)[:length]
    table = np.asarray(table, np.float32)
    out = np.zeros((length, table.shape[1]), np.float32)
    out[:len(ids)] = table[ids]
    return out


def squared_l2_distance(prompt, target):
    """sum_p ||prompt_p - target_p||^2 / P, averaged over any leading task axis: [..., P, H] -> scalar."""
    per_prompt = jnp.sum(jnp.square(prompt - target), axis=(-2, -1)) / prompt.shape[-2]
    return jnp.mean(per_prompt)


@register_method
class Wayward(Method):
    name = "wayward"
    has_prompt = True
    settings = {"wayward_prompt": None, "wayward_gamma": 0.01}  # WAYWARD_PROMPT, WAYWARD_GAMMA

    def check(self, spec) -> None:
        if not isinstance(spec.wayward_prompt, str) or not spec.wayward_prompt.strip():
            raise ValueError("METHOD 'wayward' needs WAYWARD_PROMPT, the discrete prompt to pull toward, e.g. "
                             "--gin.WAYWARD_PROMPT=\"'Classify this review as positive or negative .'\"")
        gamma = spec.wayward_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"WAYWARD_GAMMA must be a number >= 0, got {gamma!r}")

    def trainable(self, prompted):
        return Trainable

    def load_adapter(self, prompted, folder: str) -> None:
        from prompt_tuning_jax.methods.prompt import load_prompt_adapter

        load_prompt_adapter(prompted, folder)

    def regularizer(self, spec, model, tokenizer):
        target = jnp.asarray(discrete_prompt(model.embedding_table, tokenizer, spec.wayward_prompt, spec.length))
        gamma = float(spec.wayward_gamma)
        return lambda prompted: gamma * squared_l2_distance(prompted.prompt.astype(jnp.float32), target)
