"""Shared fixtures, the `slow` marker and the test environment.

Eight fake CPU devices are configured before JAX starts so mesh tests can run anywhere.

Markers: `slow` marks the tests that take more than a few seconds on a 2-core CPU (command-line runs
in subprocesses, training loops, parity with PEFT/transformers on bigger batches). They run by default:

    python -m pytest tests -q                  # everything (the README and CI command)
    python -m pytest tests -m "not slow" -q    # the quick subset, under two minutes

Plain helper functions (tiny-model builder, batches, comparisons, command lines) are in helpers.py:
`from helpers import ...`; never import from this file.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
from helpers import save_tiny_gpt2


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU; deselect with "
                                       "-m 'not slow'")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    """A random 2-layer GPT-2 (hidden 32) with the demo's word-level tokenizer, as a Hugging Face folder."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))
