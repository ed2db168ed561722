"""METHOD 'first:K', 'last:K', 'middle:K': the weights of K transformer blocks of each stack train (no prompt).

The blocks are the model's `BLOCK_COLLECTION` (GPT-2's `h`, T5's `block`); an encoder-decoder
trains K blocks of each of its two stacks. 'middle' takes the K around the centre.
"""
from __future__ import annotations

from flax import nnx

from prompt_tuning_jax.methods.base import HEAD, Method, register_method


class Blocks(Method):
    argument = "K"

    def trainable(self, prompted):
        collection = prompted.model.BLOCK_COLLECTION
        chosen = chosen_blocks(prompted, collection, self.name, self.n)
        in_chosen = lambda path, _: _block_of(path, collection) in chosen
        return nnx.Any(HEAD, nnx.All(nnx.Param, in_chosen))


@register_method
class FirstBlocks(Blocks):
    name = "first"


@register_method
class LastBlocks(Blocks):
    name = "last"


@register_method
class MiddleBlocks(Blocks):
    name = "middle"


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
