"""The demo model is the same whoever builds it: its build is pinned to one device and one core."""
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import cli_env

from prompt_tuning_jax.experiments import demo_model


@pytest.mark.slow
def test_the_demo_model_does_not_depend_on_the_callers_devices(tmp_path):
    """Built from this 8-device test process and from a 1-device process: the same weights, bit for bit.

    Unpinned, the two differ after the first optimizer step (by ~1e-7) and end up different models.
    """
    from safetensors.numpy import load_file

    here = demo_model.demo_checkpoint(str(tmp_path / "here"), pretrain_steps=20)
    code = f"from prompt_tuning_jax.experiments import demo_model; demo_model.demo_checkpoint({str(tmp_path / 'there')!r}, pretrain_steps=20)"
    subprocess.run([sys.executable, "-c", code], check=True, env=cli_env(devices=1), timeout=300)
    a, b = (load_file(os.path.join(f, "model.safetensors")) for f in (here, str(tmp_path / "there")))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert os.path.exists(os.path.join(here, "tokenizer.json"))


def test_the_llama_demo_model_builds_and_loads(tmp_path):
    """`demo_checkpoint(family="llama")`: a Hugging Face Llama folder (grouped-query attention, a tied head) with the
    demo's tokenizer, which `from_pretrained` loads as our Llama and runs; an unknown family is refused."""
    import jax.numpy as jnp

    import prompt_tuning_jax as ptj

    folder = demo_model.demo_checkpoint(str(tmp_path / "llama"), pretrain_steps=2, family="llama")
    model = ptj.from_pretrained(folder)
    assert isinstance(model, ptj.Llama) and model.config.num_key_value_heads == 2 and model.config.tie_word_embeddings
    tokenizer = ptj.load_tokenizer(folder)
    ids = jnp.asarray(tokenizer(["sentence : a great film ."])["input_ids"])
    assert model(ids).shape == (1, ids.shape[1], len(tokenizer))
    with pytest.raises(ValueError, match="the demo model's family must be one of"):
        demo_model.demo_checkpoint(str(tmp_path / "x"), family="bert")
