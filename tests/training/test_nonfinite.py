"""A NaN or Inf loss or gradient: the step leaves the state unchanged; the run stops naming the last good
checkpoint (nonfinite='stop'), or counts the step and goes on ('skip')."""
import jax
import numpy as np
import pytest
from helpers import tiny_model
from test_trainer import GPT2, batch

import prompt_tuning_jax as ptj
from prompt_tuning_jax.training import optim
from prompt_tuning_jax.training.hooks import standard_hooks
from prompt_tuning_jax.training.loop import NonFiniteError, fit
from prompt_tuning_jax.training.trainer import Trainer


def _trainer():
    prompted = ptj.with_prompt(tiny_model("gpt2", dropout_rate=0.0, **GPT2), 3, None, placement="prefix", seed=1)
    return Trainer(prompted, optim.make_optimizer("adamw", 0.05, weight_decay=0.0), objective="lm")


def _stream(rng, bad_steps):
    """Batches 1, 2, ...; the ones in bad_steps carry a NaN example weight (so a NaN loss and gradient)."""
    step = 0
    while True:
        step += 1
        b = batch(rng)
        if step in bad_steps:
            b["weight"] = np.full_like(b["weight"], np.nan)
        yield b


def test_a_nan_step_leaves_prompt_and_optimizer_state_unchanged(rng):
    trainer = _trainer()
    trainer.train_step(batch(rng))
    before = (trainer.prompt.copy(), [np.asarray(x).copy() for x in jax.tree.leaves(trainer.opt_state)])
    bad = batch(rng)
    bad["weight"][:] = np.nan
    metrics = trainer.train_step(bad)
    assert float(metrics["nonfinite_steps"]) == 1.0 and float(metrics["loss_sum"]) == 0.0
    np.testing.assert_array_equal(trainer.prompt, before[0])
    for a, b in zip(jax.tree.leaves(trainer.opt_state), before[1]):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert float(trainer.train_step(batch(rng))["nonfinite_steps"]) == 0.0  # and training goes on


def test_stop_names_the_last_good_checkpoint_and_saves_nothing_after_it(rng, tmp_path):
    hooks = standard_hooks(str(tmp_path), checkpoint_every=4, log_every=3, progress=False)
    with pytest.raises(NonFiniteError, match=rf"NaN or Inf in 1 of the .* up to step 6.*Last good checkpoint: step 4 "
                                             rf"in {tmp_path}/checkpoints"):
        fit(_trainer(), _stream(rng, bad_steps={6}), 12, hooks.hooks, resume_from=hooks.checkpointer, prefetch=0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]


def test_skip_counts_the_steps_and_finishes(rng, tmp_path):
    hooks = standard_hooks(str(tmp_path), checkpoint_every=4, log_every=3, progress=False)
    trainer = _trainer()
    summary = fit(trainer, _stream(rng, bad_steps={2, 7, 8}), 10, hooks.hooks, resume_from=hooks.checkpointer,
                  prefetch=0, nonfinite="skip")
    assert summary["step"] == 10 and summary["nonfinite_steps"] == 3
    assert np.isfinite(trainer.prompt).all() and np.isfinite(summary["train"]["loss"])
