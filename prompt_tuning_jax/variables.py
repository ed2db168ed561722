"""The trainable variable type, and which variables a training method trains.

Prompts and heads hold `Trainable` variables; the frozen model holds `nnx.Param`.
Gradients, optimizer state, checkpoints and donation select what trains:
`graphdef, trainable, frozen = nnx.split(model, trainable_filter(method, model), ...)`.

Methods (`METHOD`): 'prompt' (the prompt, and a head if any: prompt tuning),
'probe' (a linear head on the frozen model: the classifier-only baseline), 'full'
(every weight: fine-tuning), 'first:K' / 'last:K' / 'middle:K' (the weights of K
transformer blocks of each stack), 'lora:R' (rank-R LoRA factors beside the blocks'
projections, `models/lora.py`) and 'icl:K' (in-context learning with K demonstrations:
nothing trains). Baselines other than 'prompt' run without a prompt.
"""
from __future__ import annotations

from flax import nnx

METHOD_FORMS = ("'prompt', 'probe', 'full', 'first:K', 'last:K', 'middle:K' (K >= 1 blocks), 'lora:R' (rank R >= 1) "
                "or 'icl:K' (K >= 0 demonstrations)")


class Trainable(nnx.Variable):
    """A variable that is trained (prompt embeddings, head weights); everything else is frozen."""


class LoRAParam(Trainable):
    """A LoRA factor (`models/lora.py`): trained under METHOD 'lora:R', absent otherwise."""


def parse_method(method: str) -> tuple[str, int | None]:
    """'last:2' -> ('last', 2); 'full' -> ('full', None); ValueError naming METHOD otherwise."""
    kind, sep, k = str(method).partition(":")
    if kind in ("prompt", "probe", "full") and not sep:
        return kind, None
    if kind in ("first", "last", "middle", "lora") and k.isdigit() and int(k) >= 1:
        return kind, int(k)
    if kind == "icl" and k.isdigit():
        return kind, int(k)
    raise ValueError(f"METHOD {method!r} is not a training method; use {METHOD_FORMS}")


def trainable_filter(method: str, prompted) -> nnx.filterlib.Filter:
    """The nnx filter of what `method` trains in `prompted` (a PromptedModel)."""
    kind, k = parse_method(method)
    if kind == "prompt":
        return Trainable
    head = nnx.All(Trainable, nnx.Not(nnx.PathContains("soft_prompt")))  # the baselines' empty prompt stays out
    if kind in ("probe", "lora", "icl"):  # LoRA factors are Trainable; in-context learning trains nothing
        return head
    if kind == "full":
        return nnx.Any(head, nnx.Param)
    chosen = chosen_blocks(prompted, prompted.model.BLOCK_COLLECTION, kind, k)
    in_chosen = lambda path, _: _block_of(path, prompted.model.BLOCK_COLLECTION) in chosen
    return nnx.Any(head, nnx.All(nnx.Param, in_chosen))


def _block_of(path: tuple, collection: str):
    """('model', 'encoder', 'block', 3, ...) -> (('model', 'encoder'), 3); None outside the blocks."""
    for j in range(len(path) - 1):
        if path[j] == collection and isinstance(path[j + 1], int):
            return tuple(path[:j]), path[j + 1]
    return None


def chosen_blocks(prompted, collection: str, kind: str, k: int) -> set:
    """The (stack, index) blocks that first/last/middle K picks in every stack of blocks."""
    stacks: dict[tuple, int] = {}
    for path, value in nnx.iter_graph(prompted):
        block = _block_of(path, collection) if isinstance(value, nnx.Param) else None
        if block is not None:
            stacks[block[0]] = max(stacks.get(block[0], 0), block[1] + 1)
    chosen = set()
    for stack, n in stacks.items():
        if k > n:
            raise ValueError(f"METHOD '{kind}:{k}': {'/'.join(map(str, stack)) or 'the model'} has only {n} blocks")
        start = {"first": 0, "last": n - k, "middle": (n - k) // 2}[kind]
        chosen.update((stack, i) for i in range(start, start + k))
    return chosen
