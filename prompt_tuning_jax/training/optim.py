"""Optimizers and learning-rate schedules (optax), with the paper's defaults.

Lester et al. (2021) for T5: Adafactor, constant learning rate 0.3, decay_rate
0.8, weight decay 1e-5, no parameter scaling. Everything here is a plain
function returning an optax transformation; gin only binds the arguments.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear_warmup", "cosine", "rsqrt", "linear_decay")
OPTIMIZERS = ("adafactor", "adamw", "adam", "sgd")


def schedule(name: str = "constant", learning_rate: float = 0.3, warmup_steps: int = 0,
             total_steps: int | None = None, end_value: float = 0.0) -> optax.Schedule:
    """constant | linear_warmup (then constant) | cosine | rsqrt (T5's) | linear_decay; all with optional warmup."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; use one of {SCHEDULES}")
    if name in ("cosine", "linear_decay") and not total_steps:
        raise ValueError(f"the {name} schedule needs total_steps")
    if name == "constant" and not warmup_steps:
        return optax.constant_schedule(learning_rate)
    if name in ("constant", "linear_warmup"):
        return optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, end_value)
    if name == "linear_decay":
        decay = optax.linear_schedule(learning_rate, end_value, max(total_steps - warmup_steps, 1))
        if not warmup_steps:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])
    # rsqrt: lr / sqrt(max(step, warmup)) scaled so the peak equals learning_rate.
    w = max(warmup_steps, 1)
    warmup = optax.linear_schedule(0.0, learning_rate, w)
    return lambda step: jnp.where(step < w, warmup(step), learning_rate * jnp.sqrt(w / jnp.maximum(step, w)))


def make_optimizer(name: str = "adafactor", learning_rate: float = 0.3, schedule_name: str = "constant",
                   warmup_steps: int = 0, total_steps: int | None = None, weight_decay: float = 1e-5,
                   decay_rate: float = 0.8, multiply_by_parameter_scale: bool = False,
                   clipping_threshold: float | None = 1.0, grad_clip_norm: float | None = None,
                   b1: float = 0.9, b2: float = 0.999, momentum: float | None = None) -> optax.GradientTransformation:
    """An optax optimizer for the trainable state (prompt and head).

    adafactor: the paper's setting (decay_rate 0.8, weight decay 1e-5, no parameter scaling).
    adamw / adam / sgd: common alternatives; `weight_decay` is decoupled for adamw.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")
    lr = schedule(schedule_name, learning_rate, warmup_steps, total_steps)
    if name == "adafactor":
        tx = optax.adafactor(lr, decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
                             clipping_threshold=clipping_threshold, weight_decay_rate=weight_decay or None)
    elif name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    elif name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2)
    else:
        tx = optax.sgd(lr, momentum=momentum)
    if grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx
