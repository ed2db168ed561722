"""METHOD 'probe': the classifier-only baseline, a linear head on the frozen model (no prompt)."""
from __future__ import annotations

from prompt_tuning_jax.methods.base import Method, register_method


@register_method
class Probe(Method):
    name = "probe"

    def check(self, spec) -> None:
        if spec.head != "linear":
            raise ValueError("METHOD 'probe' trains a linear head on the frozen model: add prompts/linear_head.gin "
                             "(ptj.PromptSpec.head = 'linear')")
