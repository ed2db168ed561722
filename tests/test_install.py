"""The package as TPU users install it: a wheel (not an editable checkout) carries its gin configs.

Builds the wheel, installs it into a folder of its own, and runs the README's demo
command from a directory outside the checkout, with that folder first on the path.
"""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("prompt_tuning_jax-*.whl")
    return path


def test_the_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.split("prompt_tuning_jax/configs/", 1)[1] for n in names
               if n.startswith("prompt_tuning_jax/configs/") and n.endswith(".gin")}
    in_checkout = {p.relative_to(REPO / "prompt_tuning_jax" / "configs").as_posix()
                   for p in (REPO / "prompt_tuning_jax" / "configs").rglob("*.gin")}
    assert shipped == in_checkout and "runs/demo.gin" in shipped and "models/sizes/xxl.gin" in shipped
    assert "prompt_tuning_jax/pretrained_prompts/README.md" in names
    for task in ("sst2", "rte", "mrpc"):
        assert {f"prompt_tuning_jax/pretrained_prompts/t5_1_1_lm100k_base/{task}.{ext}" for ext in ("npy", "gin")} <= names


@pytest.mark.slow
def test_the_demo_command_runs_from_an_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    where = subprocess.run([sys.executable, "-c", "import prompt_tuning_jax; print(prompt_tuning_jax.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel, not the checkout
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin",
                           "--gin.TRAIN_STEPS=20", "--gin.EVAL_PERIOD=10", "--gin.ptj.TrainSpec.progress=False"],
                          capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 20 steps" in proc.stdout
    assert np.load(work / "runs" / "demo" / "prompts" / "prompt_latest.npy").shape == (8, 64)
    # The released prompts' gin files and prompts are found in the installed package too.
    code = ("import gin\n"
            "from prompt_tuning_jax import cli\n"
            "@gin.configurable\n"
            "def capture(x=None):\n"
            "    return x\n"
            "cli.parse_gin(['pretrained_prompts/t5_1_1_lm100k_base/sst2.gin'], [\"EVAL_OUTPUT_DIR='e'\"])\n"
            "gin.parse_config('capture.x = %CHECKPOINT_PATH')\n"
            "print(capture())\n")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, env=env,
                           timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    assert found.stdout.strip() == str(site / "prompt_tuning_jax" / "pretrained_prompts" / "t5_1_1_lm100k_base"
                                       / "sst2.npy")
