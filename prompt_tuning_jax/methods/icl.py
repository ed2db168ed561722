"""METHOD 'icl:K': in-context learning, K demonstrations from TRAIN_SPLIT before each evaluated input.

Nothing trains (no prompt, no head): a "training" run scores the eval split once
(`experiments.training`), and evaluation adds the demonstrations (`experiments.loading.tokenize_split`).
"""
from __future__ import annotations

from prompt_tuning_jax.methods.base import Method, register_method


@register_method
class InContext(Method):
    name = "icl"
    argument = "K"
    minimum = 0
    trains = False

    @property
    def demonstrations(self) -> int:
        return self.n

    def check(self, spec) -> None:
        if spec.head is not None:
            raise ValueError(f"METHOD '{self}' (in-context learning) answers with the LM head and trains nothing: "
                             "drop prompts/linear_head.gin")
