"""`common.dense`: float32 is a plain matmul; bfloat16 multiplies in bfloat16 and sums in float32, backward too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning_jax.models import common


def _loss(out_in):
    return lambda x, w: jnp.sum(jnp.tanh(common.dense(x, w, out_in=out_in)).astype(jnp.float32) ** 2)


@pytest.mark.parametrize("out_in", [False, True])
def test_float32_dense_is_the_plain_matmul(out_in):
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, (2, 5, 6)), jax.random.normal(kw, (6, 7))
    weight = w.T if out_in else w
    np.testing.assert_allclose(common.dense(x, weight, out_in=out_in), x @ w, rtol=1e-6, atol=1e-6)
    assert common.dense(x, weight, out_in=out_in, out_dtype=jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("out_in", [False, True])
def test_bfloat16_dense_values_and_gradients_follow_float32(out_in):
    kx, kw = jax.random.split(jax.random.key(1))
    x, w = jax.random.normal(kx, (4, 32, 48)), jax.random.normal(kw, (48, 64)) / 8
    w = w.T if out_in else w
    ref = jax.grad(_loss(out_in), (0, 1))(x, w)
    low = jax.grad(_loss(out_in), (0, 1))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    for a, b in zip(ref, low):
        assert b.dtype == jnp.bfloat16 and b.shape == a.shape
        assert float(jnp.max(jnp.abs(a - b.astype(jnp.float32)))) < 0.02 * float(jnp.max(jnp.abs(a)))
    y = common.dense(x.astype(jnp.bfloat16), w, out_in=out_in, out_dtype=jnp.float32)
    assert y.dtype == jnp.float32


def test_bfloat16_backward_matmuls_stay_bfloat16_summed_in_float32():
    """JAX's own transpose would multiply the float32 cotangent in float32 (half the speed on CPUs with BF16)."""
    x, w = jnp.ones((3, 8, 16), jnp.bfloat16), jnp.ones((16, 4), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(common.dense(x, w, out_dtype=jnp.float32))))(x)
    dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) >= 2  # forward and the input gradient
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eqn.params["preferred_element_type"] == jnp.float32


def _equations(jaxpr):
    """Every equation of a jaxpr, inside custom-VJP and pjit sub-jaxprs too."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from _equations(inner if hasattr(inner, "eqns") else inner.jaxpr)
