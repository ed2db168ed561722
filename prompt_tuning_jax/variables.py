"""The trainable variable type.

Prompts and heads hold `Trainable` variables; the frozen model holds `nnx.Param`.
Gradients, optimizer state, checkpoints and donation select `Trainable` only:
`graphdef, trainable, frozen = nnx.split(model, Trainable, ...)`.
"""
from flax import nnx


class Trainable(nnx.Variable):
    """A variable that is trained (prompt embeddings, head weights); everything else is frozen."""
