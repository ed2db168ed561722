"""The compiled training step over a device mesh.

    trainer = Trainer(prompted, make_optimizer(), objective="lm", mesh=make_mesh())
    metrics = trainer.train_step(local_batch)     # on-device sums; fetch them when you log

The hot path is a pure function

    step(trainable, opt_state, frozen, batch, step) -> (trainable, opt_state, metrics)

compiled once per batch shape with `jax.jit(in_shardings=..., out_shardings=...,
donate_argnums=(0, 1))`: the trainable state (prompt, head) and its optimizer
state are replicated and donated; the frozen weights are sharded by their
logical axes, never donated and never differentiated; the batch is split over
the `data` axis, each process supplying only its own rows (`MeshState`).
Gradient accumulation is a `lax.scan` over micro-batches inside the same step.

Dropout (the model's rates, as in transformers' train mode): the step number is
an array argument (no recompilation per step), the step key is
fold_in(key(seed), step), and row i of the global batch gets
fold_in(step_key, i), from which the model draws all of that row's masks. So a
run is reproducible from its seed, a resumed run draws the masks an
uninterrupted one would, and masks do not depend on how the batch is split
(`accum_steps` micro-batches, data shards, processes). `seed=None` trains with
no dropout at all (eval mode); a model whose rates are 0 draws nothing.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prompt_tuning_jax.training import objectives
from prompt_tuning_jax.training.predict import Predictor
from prompt_tuning_jax.training.runtime import MeshState


def dropout_keys(seed: int | None, step: jax.Array, rows: int) -> jax.Array | None:
    """Row i of the global batch at `step` -> fold_in(fold_in(key(seed), step), i): typed keys [rows]."""
    if seed is None:
        return None
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.vmap(jax.random.fold_in, (None, 0))(step_key, jnp.arange(rows))


def _train_step(trainable, opt_state, frozen, batch, step, *, graphdef, tx, objective, accum_steps, seed,
                regularizer=None):
    def sums(tr, micro):
        micro = dict(micro)
        keys = micro.pop("dropout_rng", None)
        terms = objectives.loss_terms(nnx.merge(graphdef, tr, frozen), micro, objective, dropout_rng=keys)
        return terms["loss_sum"], terms

    grad_fn = jax.grad(sums, has_aux=True)
    keys = dropout_keys(seed, step, batch["input_ids"].shape[0])
    if keys is not None:  # the keys travel with their rows into the micro-batches
        batch = {**batch, "dropout_rng": keys}
    if accum_steps == 1:
        grads, terms = grad_fn(trainable, batch)
    else:
        # Row i*A + a goes to micro-batch a: each micro-batch stays spread over all data shards.
        micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
                             .swapaxes(0, 1), batch)
        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, trainable, jax.tree.map(lambda x: x[0], micro)))

        def body(carry, mb):
            return jax.tree.map(jnp.add, carry, grad_fn(trainable, mb)), None

        (grads, terms), _ = jax.lax.scan(body, zero, micro)
    denominator = jnp.maximum(terms["denominator"], 1e-9)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    if regularizer is not None:  # the method's extra term, on the mean loss: once per step
        value, extra = jax.value_and_grad(lambda tr: regularizer(nnx.merge(graphdef, tr, frozen)))(trainable)
        grads = jax.tree.map(jnp.add, grads, extra)
        terms = {**terms, "regularizer": value}
    grad_norm = optax.tree.norm(grads)
    with jax.named_scope("optimizer"):
        updates, new_opt_state = tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
    # A NaN or Inf loss or gradient leaves the state as it was; the loop counts these steps and stops or
    # skips (TrainSpec.nonfinite) when it next reads the metrics, without a host round trip per step.
    finite = jnp.isfinite(terms["loss_sum"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    terms = jax.tree.map(lambda t: jnp.where(finite, t, jnp.zeros_like(t)), terms)  # logged sums: finite steps
    metrics = {**terms, "grad_norm": jnp.where(finite, grad_norm, 0.0), "nonfinite_steps": 1.0 - finite}
    return keep(new_trainable, trainable), keep(new_opt_state, opt_state), metrics


class Trainer:
    """The optimizer state and the compiled step of a prompted model on a mesh.

    prompted: a PromptedModel (split and placed here, on `mesh` with `rules`) or
    an existing `MeshState`. `predictor` evaluates the current state (never
    with dropout). seed: the run's dropout seed (module docstring); None trains
    without dropout whatever the model's rates. regularizer: PromptedModel -> scalar added to the
    mean loss once per step (a method's extra term, `methods.Method.regularizer`), or None.
    """

    def __init__(self, prompted, optimizer: optax.GradientTransformation, *, objective: str = "lm", mesh=None,
                 rules=None, accum_steps: int = 1, seed: int | None = 0, regularizer=None):
        state = prompted if isinstance(prompted, MeshState) else MeshState(prompted, mesh, rules)
        objectives.check_objective(objective, state.merge())
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.state, self.tx, self.objective, self.accum_steps = state, optimizer, objective, accum_steps
        self.seed = seed
        if state.is_abstract:
            self.opt_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=state.replicated),
                                          jax.eval_shape(optimizer.init, state.trainable))
        else:
            self.opt_state = jax.jit(optimizer.init, out_shardings=state.replicated)(state.trainable)
        self.step = 0
        step_fn = functools.partial(_train_step, graphdef=state.graphdef, tx=optimizer, objective=objective,
                                    accum_steps=accum_steps, seed=seed, regularizer=regularizer)
        rep, tr = state.replicated, state.trainable_shardings
        self._step = jax.jit(step_fn, in_shardings=(tr, rep, state.frozen_shardings, state.batch_sharding, rep),
                             out_shardings=(tr, rep, rep), donate_argnums=(0, 1))
        self.predictor = Predictor(state, objective)

    @property
    def mesh(self):
        return self.state.mesh

    @property
    def trainable(self):
        return self.state.trainable

    @trainable.setter
    def trainable(self, value):
        self.state.trainable = value

    @property
    def prompt(self) -> np.ndarray:
        return self.state.prompt

    def train_step(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """One optimizer step on a batch (this process's rows); returns on-device metric sums.

        Its dropout masks depend on the seed, `self.step` (restored on resume) and each row's global index.
        """
        self.state.check_batch(local_batch, self.accum_steps)
        batch = self.state.put_batch(local_batch)
        self.state.trainable, self.opt_state, metrics = self._step(self.state.trainable, self.opt_state,
                                                                   self.state.frozen, batch, np.int32(self.step))
        self.step += 1
        return metrics

    def lower(self, batch: dict[str, jax.ShapeDtypeStruct]) -> jax.stages.Lowered:
        """The step lowered for a global batch (`MeshState.abstract_batch`); `.compile()` it to see its
        memory and FLOPs per device without running it (works on an abstract state)."""
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.state.replicated)
        return self._step.lower(self.state.trainable, self.opt_state, self.state.frozen, batch, step)

    def prompted_model(self):
        """A live PromptedModel with the current trainable state (for decoding, export, notebooks)."""
        return self.state.merge()
