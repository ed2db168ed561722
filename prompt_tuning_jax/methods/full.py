"""METHOD 'full': fine-tuning, every weight of the model trains (and a head if there is one; no prompt)."""
from __future__ import annotations

from flax import nnx

from prompt_tuning_jax.methods.base import HEAD, Method, register_method


@register_method
class FineTuning(Method):
    name = "full"

    def trainable(self, prompted):
        return nnx.Any(HEAD, nnx.Param)
