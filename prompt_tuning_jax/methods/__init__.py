"""Training methods (METHOD), one module each behind a registry: see `base.py` for the seam.

Built in: 'prompt' (prompt tuning), 'probe' (a linear head only), 'full' (fine-tuning),
'first:K' / 'last:K' / 'middle:K' (K blocks of each stack), 'lora:R', 'icl:K', 'wayward'
(prompt tuning pulled toward a discrete prompt), 'multitask' (a shared prompt and per-task parts),
'per_layer' (a prompt at every block's input), 'ptuning' (P-tuning: a prompt encoder makes the prompt),
'ia3' (vectors rescaling keys, values and MLP activations) and 'mpt' (multitask prompt tuning: a shared
prompt rescaled by each task's low-rank matrix, PEFT's MultitaskPromptTuningConfig) and 'prefix:P' (prefix
tuning: trained keys and values before every self-attention's own, PEFT's PrefixTuningConfig).
"""
# Registered in this order (the order error messages list them in).
from prompt_tuning_jax.methods import prompt  # noqa: F401, I001
from prompt_tuning_jax.methods import probe, full, blocks, lora, icl, wayward  # noqa: F401
from prompt_tuning_jax.methods import multitask, per_layer, ptuning  # noqa: F401
from prompt_tuning_jax.methods import ia3  # noqa: F401
from prompt_tuning_jax.methods import mpt  # noqa: F401
from prompt_tuning_jax.methods import prefix  # noqa: F401
from prompt_tuning_jax.methods.base import HEAD, Method, get_method, method_forms, register_method, registered

__all__ = ["HEAD", "Method", "get_method", "method_forms", "register_method", "registered"]
