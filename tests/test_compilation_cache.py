"""The persistent compilation cache (`training/compilation_cache.py`): where it goes, and what a command does
with it: a second run loads the programs the first compiled, `off` turns it off, and a cache that cannot be
written costs one warning line, never the run."""
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cli_env, train_cmd

from prompt_tuning_jax import cli
from prompt_tuning_jax.training import compilation_cache

HIT = "Persistent compilation cache hit for"
SHORT = ("--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=4", "--gin.ptj.DataSpec.eval_limit=16")
HOME = os.path.expanduser("~/.cache/prompt_tuning_jax/xla")


# --- where: the rule, as a unit --------------------------------------------------------------


def test_a_single_host_uses_the_local_default_or_ptj_cache():
    assert compilation_cache.location(environ={}) == HOME
    assert compilation_cache.location(environ={"PTJ_CACHE": "/data/ptj"}) == "/data/ptj/xla"
    # a bucket MODEL_DIR on one process: still the local default
    assert compilation_cache.location(model_dir="gs://b/runs/sst2", process_count=1, environ={}) == HOME


def test_several_processes_with_a_bucket_model_dir_share_a_folder_beside_it():
    at = lambda model_dir: compilation_cache.location(model_dir=model_dir, process_count=4, environ={})  # noqa: E731
    assert at("gs://b/runs/sst2") == "gs://b/runs/xla_cache"
    assert at("gs://b/runs/sst2/") == "gs://b/runs/xla_cache"
    assert at("gs://b/sst2") == "gs://b/xla_cache"
    assert at("gs://b") == "gs://b/xla_cache"
    assert at("runs/sst2") == HOME  # a local MODEL_DIR: each host its own disk
    assert at(None) == HOME


def test_an_explicit_setting_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"PTJ_COMPILATION_CACHE": "/env/xla", "PTJ_CACHE": "/data/ptj"}
    many = dict(model_dir="gs://b/runs/sst2", process_count=4)
    assert compilation_cache.location(**many, environ=env) == "/env/xla"
    assert compilation_cache.location("gs://other/xla", **many, environ=env) == "gs://other/xla"
    assert compilation_cache.location("rel/xla", **many, environ=env) == str(tmp_path / "rel" / "xla")
    assert compilation_cache.location("~/xla", environ={}) == os.path.expanduser("~/xla")
    assert compilation_cache.location(environ={"JAX_COMPILATION_CACHE_DIR": "/jax/own"}) == "/jax/own"
    for off in ("off", "OFF"):
        assert compilation_cache.location(off, **many, environ=env) is None
        assert compilation_cache.location(**many, environ={"PTJ_COMPILATION_CACHE": off}) is None
    assert cli.build_parser("x").parse_args(["--compilation_cache=off"]).compilation_cache == "off"


# --- what a command does with it ---------------------------------------------------------------


def run(cmd, env, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def cache_env(**variables) -> dict:
    """cli_env() where jax says each cache hit (JAX_LOG_COMPILES) and no outside setting picks the folder."""
    env = {k: v for k, v in cli_env().items() if k not in ("PTJ_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    return {**env, "JAX_LOG_COMPILES": "1", **variables}


def entries(folder) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith("-cache")} if os.path.isdir(folder) else set()


@pytest.mark.slow
def test_a_second_run_loads_the_programs_the_first_compiled(tmp_path, tiny_gpt2_dir):
    cache = tmp_path / "xla"
    first = run(train_cmd(tmp_path / "first", tiny_gpt2_dir, *SHORT), cache_env(PTJ_COMPILATION_CACHE=str(cache)))
    assert first.returncode == 0, first.stderr[-3000:]
    written = entries(cache)
    assert any(n.startswith("jit__train_step-") for n in written), sorted(written)

    second = run(train_cmd(tmp_path / "second", tiny_gpt2_dir, *SHORT), cache_env(PTJ_COMPILATION_CACHE=str(cache)))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{HIT} 'jit__train_step'" in second.stderr
    assert second.stderr.count(HIT) >= len(written)  # every program written is read back ...
    assert entries(cache) == written  # ... and none compiled again
    np.testing.assert_array_equal(np.load(tmp_path / "second" / "prompts" / "prompt_latest.npy"),
                                  np.load(tmp_path / "first" / "prompts" / "prompt_latest.npy"))


@pytest.mark.slow
def test_off_turns_it_off_and_the_flag_wins_over_the_variable(tmp_path, tiny_gpt2_dir):
    home, named = tmp_path / "home", tmp_path / "named"
    off = run(train_cmd(tmp_path / "run", tiny_gpt2_dir, *SHORT, "--compilation_cache=off"),
              cache_env(PTJ_CACHE=str(home), PTJ_COMPILATION_CACHE=str(named)))
    assert off.returncode == 0, off.stderr[-3000:]
    assert not (home / "xla").exists() and not named.exists()
    assert HIT not in off.stderr

    default = run(train_cmd(tmp_path / "run2", tiny_gpt2_dir, *SHORT), cache_env(PTJ_CACHE=str(home)))
    assert default.returncode == 0, default.stderr[-3000:]
    assert entries(home / "xla")  # without a setting: $PTJ_CACHE/xla


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_is_one_warning_line_and_the_run_succeeds(tmp_path, tiny_gpt2_dir):
    """A file where the folder should be (root can write to any read-only folder, so a test cannot use one)."""
    (tmp_path / "a_file").write_text("not a folder")
    folder = tmp_path / "a_file" / "xla"
    proc = run(train_cmd(tmp_path / "run", tiny_gpt2_dir, *SHORT),
               {**cli_env(), "PTJ_COMPILATION_CACHE": str(folder)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 4 steps" in proc.stdout
    said = [line for line in proc.stderr.splitlines() if "compilation cache" in line.lower()]
    assert len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith("WARNING") and str(folder) in said[0] and "going on without it" in said[0]


FAILS_MID_RUN = """
import os, shutil, sys
import jax, jax.numpy as jnp
from prompt_tuning_jax.training import compilation_cache
import logging; logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
folder = sys.argv[1]
compilation_cache.enable(folder)
print(float(jax.jit(lambda x: x + 1)(jnp.ones(3)).sum()))   # written: the cache works
shutil.rmtree(folder); open(folder, "w").close()              # now every write fails (as on a full disk)
for k in range(2, 5):
    print(float(jax.jit(lambda x: x * k)(jnp.ones(3)).sum()))
"""


@pytest.mark.slow
def test_a_cache_failing_mid_run_is_said_once_and_turned_off(tmp_path):
    folder = tmp_path / "xla"
    proc = run([sys.executable, "-c", FAILS_MID_RUN, str(folder)], {**cli_env()}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["6.0", "6.0", "9.0", "12.0"]
    assert proc.stderr.count("\n") == 1 and "going on without it" in proc.stderr, proc.stderr
