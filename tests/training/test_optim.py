"""Optimizers and schedules: the paper's Adafactor defaults, schedule shapes, clear errors."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning_jax.training import optim


def test_schedules_have_the_documented_shape():
    const = optim.schedule("constant", 0.3)
    assert float(const(0)) == float(const(10_000)) == pytest.approx(0.3)
    warm = optim.schedule("linear_warmup", 1.0, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.5) and float(warm(50)) == pytest.approx(1.0)
    cos = optim.schedule("cosine", 1.0, warmup_steps=10, total_steps=110)
    assert float(cos(10)) == pytest.approx(1.0) and float(cos(110)) == pytest.approx(0.0, abs=1e-6)
    rsqrt = optim.schedule("rsqrt", 1.0, warmup_steps=100)
    assert float(rsqrt(100)) == pytest.approx(1.0) and float(rsqrt(400)) == pytest.approx(0.5)
    lin = optim.schedule("linear_decay", 1.0, total_steps=100)
    assert float(lin(50)) == pytest.approx(0.5)


def test_paper_adafactor_step_matches_optax_adafactor():
    params = {"prompt": jnp.linspace(-1, 1, 100 * 16).reshape(100, 16)}
    grads = {"prompt": jnp.cos(params["prompt"])}
    ours = optim.make_optimizer()  # adafactor, lr 0.3, decay 0.8, wd 1e-5, no parameter scaling
    ref = optax.adafactor(0.3, decay_rate=0.8, multiply_by_parameter_scale=False, weight_decay_rate=1e-5)
    u1, _ = ours.update(grads, ours.init(params), params)
    u2, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(u1["prompt"], u2["prompt"], rtol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_other_optimizers_step(name):
    params = {"w": jnp.ones(3)}
    tx = optim.make_optimizer(name, 0.1, grad_clip_norm=1.0)
    updates, _ = tx.update({"w": jnp.ones(3) * 10}, tx.init(params), params)
    assert float(jnp.abs(updates["w"]).max()) > 0


def test_bad_names_are_clear():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        optim.make_optimizer("lion")
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.schedule("triangle")
    with pytest.raises(ValueError, match="needs total_steps"):
        optim.schedule("cosine", 1.0)
