"""The trainable variable type.

Prompts and heads hold `Trainable` variables; the frozen model holds `nnx.Param`.
Which variables a run trains is its METHOD's filter (`methods/`, e.g. `Trainable` for
prompt tuning, `nnx.Param` too for fine-tuning); gradients, optimizer state, checkpoints
and donation follow it: `graphdef, trainable, frozen = nnx.split(model, method.trainable(model), ...)`.
"""
from __future__ import annotations

from flax import nnx


class Trainable(nnx.Variable):
    """A variable that is trained (prompt embeddings, head weights); everything else is frozen."""


class LoRAParam(Trainable):
    """A LoRA factor (`models/lora.py`): trained under METHOD 'lora:R', absent otherwise."""


class IA3Param(Trainable):
    """An IA3 scaling vector (`models/ia3.py`): trained under METHOD 'ia3', absent otherwise."""


class PrefixParam(Trainable):
    """Prefix keys and values, or the embedding and MLP making them (`models/prefix.py`): trained under METHOD
    'prefix:P', absent otherwise."""
