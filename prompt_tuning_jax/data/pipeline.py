"""Text examples -> fixed-shape numpy batches: tokenize, bucket, pad, shuffle, shard.

    tok = tokenize_task(task, "train", tokenizer, max_input_length=128, max_target_length=8)
    train = TrainIterator(tok, batch_size=32, seed=0)        # infinite, resumable
    for batch in Prefetch(train): ...
    for batch in EvalIterator(tokenize_task(task, "validation", ...), batch_size=64): ...

Every batch is a dict of numpy arrays (B = global batch size / process_count,
T / Tt = bucketed input / target lengths):

    input_ids      [B, T]  int32   padded with the tokenizer's pad id (GPT-2: eos 50256)
    attention_mask [B, T]  int32   1 on real tokens; the only source of lengths
    target_ids     [B, Tt] int32   always right-padded
    target_mask    [B, Tt] int32
    label          [B]     int32 class id (-1: none), float32 for regression
    task_index     [B]     int32   which task of a mixture the row came from
    weight         [B]     float32 1 for real rows, 0 for rows that pad the last eval batch
    example_index  [B]     int32   row of the Tokenized it came from (-1 on padding rows)

Shapes are static: B never changes and T, Tt take values from a few bucket
lengths (multiples of 16 below the maximum, and the maximum; evaluation, which
knows its batches ahead, fits them to the batches instead), so a jitted step
compiles a handful of times at most. All hosts pick the same bucket (from
the global batch), so the host slices concatenated are exactly the global batch.
Padding rows copy the first row of their global batch (never an all-masked row,
which some models turn into NaN), and carry weight 0.

No jax import here except to read the process index / count when not given.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TRUNCATE = ("right", "left", "error")


# --------------------------------------------------------------------------- tokenize


@dataclasses.dataclass
class Tokenized:
    """One tokenized split of N examples (ragged ids, per-example arrays).

    input_ids / target_ids: N arrays [T_i] / [Tt_i] int32, special tokens included.
    label: [N] int32 (float32 for regression). pad_id: value used to pad.
    max_input_length / max_target_length: the limits tokenization enforced.
    examples: the text examples, kept for metrics (targets, answers, groups).
    """

    input_ids: list[np.ndarray]
    target_ids: list[np.ndarray]
    label: np.ndarray
    pad_id: int
    max_input_length: int
    max_target_length: int
    num_truncated: int = 0
    examples: list[dict] | None = None

    def __post_init__(self):
        self.input_lengths = np.array([len(x) for x in self.input_ids], np.int32)
        self.target_lengths = np.array([len(x) for x in self.target_ids], np.int32)
        if not len(self.input_ids) == len(self.target_ids) == len(self.label):
            raise ValueError("input_ids, target_ids and label must have one entry per example")

    def __len__(self) -> int:
        return len(self.input_ids)


def pad_id_for(tokenizer) -> int:
    """The tokenizer's pad id; GPT-2 has none, so its eos id (50256) pads."""
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token")


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids the tokenizer adds around text: T5 ([], [1]), GPT-2 ([], [])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    raise ValueError(f"cannot locate the special tokens {type(tokenizer).__name__} adds")


def _fit(ids: list[int], budget: int, truncate: str, what: str, i: int) -> tuple[list[int], bool]:
    if len(ids) <= budget:
        return ids, False
    if truncate == "error":
        raise ValueError(f"example {i}: {len(ids)} {what} tokens exceed the limit {budget} (truncate='error')")
    return (ids[:budget] if truncate == "right" else ids[len(ids) - budget:]), True


def tokenize(
    examples: Sequence[dict],
    tokenizer,
    *,
    max_input_length: int,
    max_target_length: int,
    truncate: str = "right",
    target_prefix: str = "",
    add_special_tokens: bool = True,
    name: str = "",
) -> Tokenized:
    """Examples {"inputs", "targets", "label"} -> `Tokenized`.

    Special tokens are added as the tokenizer does (T5: EOS after inputs and
    after targets; GPT-2: none; Llama 3: BOS before inputs) and survive truncation.
    Targets get only the trailing ones: they continue the input (decoder-only) or
    follow the decoder's start token (T5), so a leading BOS never goes before them. truncate: "right" keeps
    the first tokens, "left" the last ones, "error" raises. The number of
    truncated examples is logged as one warning line. target_prefix is put
    before every target text (" " for GPT-2, whose targets follow the inputs).
    """
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate={truncate!r}; expected one of {TRUNCATE}")
    prefix, suffix = special_tokens(tokenizer) if add_special_tokens else ([], [])
    n_special = len(prefix) + len(suffix)
    if min(max_input_length - n_special, max_target_length - len(suffix)) <= 0:
        raise ValueError(f"max lengths must exceed the special tokens ({n_special} around inputs, "
                         f"{len(suffix)} after targets)")
    encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    raw_inputs = encode([e["inputs"] for e in examples])
    raw_targets = encode([target_prefix + e["targets"] if e["targets"] else "" for e in examples])

    input_ids, target_ids = [], []
    cut_inputs = cut_targets = cut_any = 0
    for i, (x, y) in enumerate(zip(raw_inputs, raw_targets)):
        x, cut_x = _fit(x, max_input_length - n_special, truncate, "input", i)
        y, cut_y = _fit(y, max_target_length - len(suffix), truncate, "target", i)
        input_ids.append(np.array(prefix + x + suffix, np.int32))
        target_ids.append(np.array(y + suffix, np.int32))
        cut_inputs += cut_x
        cut_targets += cut_y
        cut_any += cut_x or cut_y
    if cut_any:
        logger.warning(
            "%struncated %d of %d examples (truncate=%r): %d inputs > %d tokens, %d targets > %d tokens",
            f"{name}: " if name else "", cut_any, len(examples), truncate,
            cut_inputs, max_input_length, cut_targets, max_target_length,
        )
    labels = [e["label"] for e in examples]
    is_float = any(isinstance(v, (float, np.floating)) for v in labels)
    return Tokenized(
        input_ids=input_ids,
        target_ids=target_ids,
        label=np.array(labels, np.float32 if is_float else np.int32).reshape(len(examples)),
        pad_id=pad_id_for(tokenizer),
        max_input_length=max_input_length,
        max_target_length=max_target_length,
        num_truncated=cut_any,
        examples=list(examples),
    )


def tokenize_task(task, split: str, tokenizer, *, limit: int | None = None, **kwargs) -> Tokenized:
    """`tokenize(task.load(split, limit), tokenizer, **kwargs)`, named after the task."""
    return tokenize(task.load(split, limit=limit), tokenizer, name=f"{task.name}/{split}", **kwargs)


# --------------------------------------------------------------------------- batches


def bucket_lengths(max_length: int, step: int = 16, max_buckets: int = 16) -> tuple[int, ...]:
    """Multiples of `step` below max_length, plus max_length: 100 -> (16, 32, 48, 64, 80, 96, 100).

    The step grows (in multiples of `step`) so that there are at most `max_buckets` lengths, which
    bounds the number of compiled shapes: 512 -> (32, 64, ..., 480, 512).
    """
    step *= max(1, -(-max_length // (step * max_buckets)))
    return tuple(range(step, max_length, step)) + (max_length,)


def target_bucket_lengths(max_length: int, step: int = 16, max_buckets: int = 16) -> tuple[int, ...]:
    """Target lengths: powers of two below `step`, then `bucket_lengths`: 8 -> (1, 2, 4, 8).

    Targets are mostly a label word or two; padding a one-token label to 8 would run the
    LM head (a [H, V] matmul per position) eight times for every example.
    """
    small = tuple(2**k for k in range(step.bit_length()) if 2**k < min(step, max_length))
    return small + bucket_lengths(max_length, step, max_buckets)


def fit_buckets(batch_lengths: Sequence[int], max_count: int, max_length: int,
                multiple: int = 8) -> tuple[int, ...]:
    """Input lengths for batches known ahead (evaluation), fitted to them: at most `max_count` lengths.

    batch_lengths: each batch's longest input [nb]. The lengths are multiples of `multiple` (or
    max_length) and minimise the positions padded over all batches, with each length after the first
    charged one more batch at the longest length, since it costs one more compiled program:
    SST-2's 28 batches of 32 -> (32, 48, 80) rather than the fixed (32, 64, 96), 3% fewer positions
    with the prompt. Ends with max_length, so that any longer input still fits.
    """
    needed = np.minimum(-(-np.asarray(batch_lengths, np.int64) // multiple) * multiple, max_length)
    values = np.unique(needed)                                       # [V] ascending
    covered = np.searchsorted(np.sort(needed), values, side="right")  # batches at most each value
    count = max(1, min(max_count, len(values)))
    best = [covered * values]                      # best[k][j]: k + 1 lengths, the last values[j]
    choice = []
    for _ in range(1, count):
        # one more length: values[j] takes the batches above values[i], i < j
        cost = best[-1][None, :] + (covered[:, None] - covered[None, :]) * values[:, None]   # [j, i]
        cost = np.where(np.tri(len(values), k=-1, dtype=bool), cost, np.inf)
        choice.append(cost.argmin(1))
        best.append(np.where(np.arange(len(values)) > 0, cost.min(1), np.inf))
    totals = [b[-1] + k * values[-1] for k, b in enumerate(best)]
    k, j, out = int(np.argmin(totals)), len(values) - 1, []
    while True:
        out.append(int(values[j]))
        if k == 0:
            break
        j, k = int(choice[k - 1][j]), k - 1
    return tuple(sorted(out)) + ((max_length,) if out[0] < max_length else ())


def _resolve_buckets(buckets, max_length: int, targets: bool = False) -> tuple[int, ...]:
    if buckets is True:
        return target_bucket_lengths(max_length) if targets else bucket_lengths(max_length)
    if buckets is False or buckets is None:
        return (max_length,)
    out = tuple(sorted(int(b) for b in buckets))
    if out[-1] < max_length:
        raise ValueError(f"largest bucket {out[-1]} is below the max length {max_length}")
    return out


def _processes(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only to learn where we run

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return int(process_index), int(process_count)


class Batcher:
    """Global example indices -> this host's fixed-shape batch dict.

    tokenized: all examples (every host holds them all); task_index: [N] int32.
    batch_size: the global batch size, divisible by process_count.
    padding_side: "right" (text, pads) or "left" (pads, text) for inputs.
    buckets: True (`bucket_lengths`: multiples of 16, at most 16 lengths; targets also 1, 2, 4, 8:
      `target_bucket_lengths`), False (max only) or explicit lengths.
    Counts what it built: `real_tokens` / `positions` (this host's input and target tokens and the
    positions they were padded to) and `shapes`, the distinct (inputs, targets) lengths (one
    compilation of a step each).
    """

    def __init__(self, tokenized: Tokenized, batch_size: int, *, task_index=None,
                 padding_side: str = "right", buckets=True, target_buckets=None,
                 process_index: int | None = None, process_count: int | None = None):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'right' or 'left'")
        self.process_index, self.process_count = _processes(process_index, process_count)
        if batch_size % self.process_count:
            raise ValueError(f"global batch size {batch_size} is not divisible by {self.process_count} processes")
        self.tok = tokenized
        self.batch_size = batch_size
        self.local_batch_size = batch_size // self.process_count
        self.padding_side = padding_side
        self.task_index = (np.zeros(len(tokenized), np.int32) if task_index is None
                           else np.asarray(task_index, np.int32))
        self.input_buckets = _resolve_buckets(buckets, tokenized.max_input_length)
        self.target_buckets = _resolve_buckets(buckets if target_buckets is None else target_buckets,
                                               tokenized.max_target_length, targets=True)
        self.real_tokens, self.positions, self.shapes = 0, 0, set()

    @property
    def padding_fraction(self) -> float:
        """The share of the batches' input and target positions that were padding (0 before any batch)."""
        return 1.0 - self.real_tokens / self.positions if self.positions else 0.0

    @staticmethod
    def _fit_bucket(length: int, buckets: tuple[int, ...]) -> int:
        return buckets[min(np.searchsorted(buckets, length), len(buckets) - 1)]

    def __call__(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        """global_indices: [batch_size] int, -1 for padding rows (at least one real row)."""
        global_indices = np.asarray(global_indices)
        if global_indices.shape != (self.batch_size,):
            raise ValueError(f"expected {self.batch_size} indices, got {global_indices.shape}")
        real = global_indices >= 0
        if not real.any():
            raise ValueError("a batch needs at least one real example")
        filled = np.where(real, global_indices, global_indices[real][0])
        tok = self.tok
        T = self._fit_bucket(int(tok.input_lengths[filled].max()), self.input_buckets)
        Tt = self._fit_bucket(int(tok.target_lengths[filled].max()), self.target_buckets)

        start = self.process_index * self.local_batch_size
        rows = slice(start, start + self.local_batch_size)
        local, local_real = filled[rows], real[rows]
        B = self.local_batch_size
        input_ids = np.full((B, T), tok.pad_id, np.int32)
        attention_mask = np.zeros((B, T), np.int32)
        target_ids = np.full((B, Tt), tok.pad_id, np.int32)
        target_mask = np.zeros((B, Tt), np.int32)
        for b, i in enumerate(local):
            x, y = tok.input_ids[i], tok.target_ids[i]
            cols = slice(0, len(x)) if self.padding_side == "right" else slice(T - len(x), T)
            input_ids[b, cols] = x
            attention_mask[b, cols] = 1
            target_ids[b, :len(y)] = y
            target_mask[b, :len(y)] = 1
        self.shapes.add((T, Tt))
        self.real_tokens += int(attention_mask.sum() + target_mask.sum())
        self.positions += B * (T + Tt)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target_ids": target_ids,
            "target_mask": target_mask,
            "label": tok.label[local],
            "task_index": self.task_index[local],
            "weight": local_real.astype(np.float32),
            "example_index": np.where(local_real, local, -1).astype(np.int32),
        }


class EvalIterator:
    """Every example once, in order, in fixed-shape batches; re-iterable.

    The last global batch is filled with weight-0 rows, so `num_batches =
    ceil(N / batch_size)` and each host yields the same number of batches.
    Rows with weight 1, in order of `example_index`, are the N examples.
    sort_by_length: batch the examples longest first (a stable sort by input and
    then target length), so that each batch is padded little; the consumers put
    the results back in example order with `example_index`.
    buckets: True (the default) fits the input lengths to these batches (`fit_buckets`: no more
    lengths than `bucket_lengths` would use here, padded less); False or explicit lengths as `Batcher`.
    """

    def __init__(self, tokenized: Tokenized, batch_size: int, *, task_index=0, sort_by_length: bool = True,
                 buckets=True, **batcher_kwargs):
        if len(tokenized) == 0:
            raise ValueError("nothing to evaluate: the split is empty")
        self.tokenized = tokenized
        self.batch_size = batch_size
        self.num_examples = len(tokenized)
        self.num_batches = -(-self.num_examples // batch_size)
        self.order = (np.lexsort((-tokenized.target_lengths, -tokenized.input_lengths)) if sort_by_length
                      else np.arange(self.num_examples))
        targets = None  # as `buckets`
        if buckets is True:
            buckets, targets = self._fitted_buckets(tokenized), True
        task_index = np.broadcast_to(np.asarray(task_index, np.int32), (len(tokenized),)).copy()  # one or per row
        self.batcher = Batcher(tokenized, batch_size, task_index=task_index, buckets=buckets,
                               target_buckets=targets, **batcher_kwargs)

    def _fitted_buckets(self, tokenized: Tokenized) -> tuple[int, ...]:
        longest = [int(tokenized.input_lengths[rows[rows >= 0]].max()) for rows in self._batch_indices()]
        fixed = bucket_lengths(tokenized.max_input_length)
        used = len({Batcher._fit_bucket(n, fixed) for n in longest})
        return fit_buckets(longest, used, tokenized.max_input_length)

    def _batch_indices(self) -> np.ndarray:
        """[num_batches, batch_size] example indices, -1 on the rows that pad the last batch."""
        padded = np.concatenate([self.order, np.full(self.num_batches * self.batch_size - self.num_examples, -1)])
        return padded.reshape(self.num_batches, self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for indices in self._batch_indices():
            yield self.batcher(indices)


class _Cursor:
    """Position in an endless sequence of per-epoch permutations of range(n).

    With `lengths` [n] and a `window` of examples, each epoch's permutation is grouped by
    length (`group_by_length`): neighbours in the order have similar lengths.
    """

    def __init__(self, n: int, seed: int, stream: int, shuffle: bool = True, lengths=None, window: int = 0,
                 block: int = 1):
        if n == 0:
            raise ValueError("cannot train on an empty split")
        self.n, self.seed, self.stream, self.shuffle = n, seed, stream, shuffle
        self.lengths, self.window, self.block = lengths, window, block
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, None

    def order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, 0, self.stream, self.epoch])
            order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            if self.lengths is not None and self.window > self.block:
                order = group_by_length(order, self.lengths, self.window, self.block, rng)
            self._order, self._order_epoch = order, self.epoch
        return self._order


    def take(self, count: int) -> np.ndarray:
        out = []
        while count:
            chunk = self.order()[self.position:self.position + count]
            out.append(chunk)
            count -= len(chunk)
            self.position += len(chunk)
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def group_by_length(order: np.ndarray, lengths: np.ndarray, window: int, block: int,
                    rng: np.random.Generator) -> np.ndarray:
    """`order` (a permutation) cut into windows of `window` examples; each window sorted by length
    (longest first) and cut into blocks of `block` (a batch), and the blocks shuffled within the window.

    Still a permutation of `order`'s elements: every example once per epoch. A batch then holds
    examples of similar length, so it is padded little, while which examples share a window (and
    the order of the batches) stays random.
    """
    out = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        blocks = [chunk[i:i + block] for i in range(0, len(chunk), block)]
        out.extend(blocks[i] for i in rng.permutation(len(blocks)))
    return np.concatenate(out)


def concatenate(parts: Sequence[Tokenized]) -> Tokenized:
    """Several tokenized splits as one (row i of part k is row offset_k + i)."""
    if len({p.pad_id for p in parts}) != 1:
        raise ValueError("cannot mix splits tokenized with different pad ids")
    labels = [p.label for p in parts]
    if any(lab.dtype.kind == "f" for lab in labels):
        labels = [lab.astype(np.float32) for lab in labels]
    examples = None
    if all(p.examples is not None for p in parts):
        examples = [e for p in parts for e in p.examples]
    return Tokenized(
        input_ids=[x for p in parts for x in p.input_ids],
        target_ids=[y for p in parts for y in p.target_ids],
        label=np.concatenate(labels),
        pad_id=parts[0].pad_id,
        max_input_length=max(p.max_input_length for p in parts),
        max_target_length=max(p.max_target_length for p in parts),
        num_truncated=sum(p.num_truncated for p in parts),
        examples=examples,
    )


class TrainIterator:
    """Endless shuffled training batches from one task or a mixture; resumable.

    tokenized: one `Tokenized`, or a list of them for a mixture (task_index of
      a row = position of its part in the list).
    rates: mixture weights (normalised); None = proportional to part sizes.
      Each row of a global batch draws its task from `rates`; each task walks
      its own permutation, reshuffled every epoch.
    seed: same seed -> same batches; epoch e uses permutation (seed, task, e).
    Each host yields its contiguous slice of every global batch; the global
    batch order does not depend on the process count.
    group_by_length: a window of that many batches of each epoch's shuffled order is
      sorted by length and cut into batches, whose order is shuffled within the window
      (transformers' `group_by_length` does the same with 50); 0 or 1: plain shuffling.
    `state()` -> small dict; `restore(state)` continues exactly from there.
    """

    def __init__(self, tokenized: Tokenized | Sequence[Tokenized], batch_size: int, *,
                 rates: Sequence[float] | None = None, seed: int = 0, shuffle: bool = True,
                 group_by_length: int = 0, **batcher_kwargs):
        parts = [tokenized] if isinstance(tokenized, Tokenized) else list(tokenized)
        sizes = np.array([len(p) for p in parts])
        rates = np.asarray(sizes if rates is None else rates, np.float64)
        if rates.shape != (len(parts),) or (rates < 0).any() or rates.sum() <= 0:
            raise ValueError(f"need one non-negative rate per task ({len(parts)}), got {rates}")
        self.rates = rates / rates.sum()
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        combined = parts[0] if len(parts) == 1 else concatenate(parts)
        task_index = np.repeat(np.arange(len(parts), dtype=np.int32), sizes)
        self.batcher = Batcher(combined, batch_size, task_index=task_index, **batcher_kwargs)
        self.tokenized = combined
        self.batch_size = batch_size
        self.seed = int(seed)
        self.cursors = [_Cursor(len(p), self.seed, k, shuffle, lengths=p.input_lengths,
                                window=group_by_length * batch_size, block=batch_size)
                        for k, p in enumerate(parts)]
        self.step = 0

    def next_indices(self) -> np.ndarray:
        """The next global batch as [batch_size] indices into the combined split."""
        if len(self.cursors) == 1:
            choice = np.zeros(self.batch_size, np.int64)
        else:
            rng = np.random.default_rng([self.seed, 1, self.step])
            choice = rng.choice(len(self.cursors), size=self.batch_size, p=self.rates)
        indices = np.empty(self.batch_size, np.int64)
        for k, cursor in enumerate(self.cursors):
            rows = np.flatnonzero(choice == k)
            indices[rows] = self.offsets[k] + cursor.take(len(rows))
        self.step += 1
        return indices

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self.batcher(self.next_indices())

    def state(self) -> dict[str, Any]:
        return {"seed": self.seed, "step": self.step,
                "cursors": [[c.epoch, c.position] for c in self.cursors]}

    def restore(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed or len(state["cursors"]) != len(self.cursors):
            raise ValueError(
                f"state for seed {state['seed']} with {len(state['cursors'])} tasks does not fit "
                f"this iterator (seed {self.seed}, {len(self.cursors)} tasks)"
            )
        self.step = int(state["step"])
        for cursor, (epoch, position) in zip(self.cursors, state["cursors"]):
            cursor.epoch, cursor.position = int(epoch), int(position)


# --------------------------------------------------------------------------- prefetch


class Prefetch:
    """Runs an iterator in a background thread, `size` items ahead; `close()` stops it.

    If the iterator has `state()`, `Prefetch.state()` is the state right after
    the last item handed out (not after the ones waiting in the queue), so
    resuming from it neither skips nor repeats batches.
    Errors in the thread are raised by `next()`.
    """

    _END = object()

    def __init__(self, iterable: Iterable, size: int = 2):
        if size < 1:
            raise ValueError("prefetch size must be >= 1")
        self._source = iterable
        self._iterator = iter(iterable)
        self._has_state = hasattr(iterable, "state")
        self._state = iterable.state() if self._has_state else None
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            for item in self._iterator:
                state = self._source.state() if self._has_state else None
                if not self._put((item, state, None)):
                    return
        except BaseException as e:  # re-raised in the consumer
            self._put((None, None, e))
            return
        self._put((self._END, None, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item, state, error = self._queue.get()
        if error is not None:
            self._done = True
            raise error
        if item is self._END:
            self._done = True
            raise StopIteration
        self._state = state
        return item

    def state(self) -> dict[str, Any]:
        if not self._has_state:
            raise TypeError(f"{type(self._source).__name__} has no state()")
        return self._state

    def close(self) -> None:
        """Stop the thread and drop queued items; safe to call twice."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_thread", None) is not None:
            self._stop.set()


# --------------------------------------------------------------------------- benchmark


def measure_throughput(batches: Iterable[dict], num_batches: int = 100, warmup: int = 5) -> dict[str, float]:
    """Time `num_batches` batches of a pipeline alone (after `warmup` untimed ones).

    Returns examples/s (rows with weight > 0), tokens/s (attention + target
    mask) and batches/s.
    """
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    examples = tokens = 0
    start = time.perf_counter()
    count = 0
    for batch in iterator:
        examples += int(np.count_nonzero(batch["weight"]))
        tokens += int(batch["attention_mask"].sum() + batch["target_mask"].sum())
        count += 1
        if count == num_batches:
            break
    seconds = time.perf_counter() - start
    return {
        "examples_per_s": examples / seconds,
        "tokens_per_s": tokens / seconds,
        "batches_per_s": count / seconds,
        "seconds": seconds,
        "batches": count,
    }
