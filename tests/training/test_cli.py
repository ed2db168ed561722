"""The training command line end to end: outputs, resume after SIGKILL, SIGTERM, two processes, errors."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, cli_env, train_cmd


def run(cmd, devices=1, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(devices), timeout=timeout)


def final_prompt(model_dir):
    return np.load(os.path.join(model_dir, "prompts", "prompt_latest.npy"))


@pytest.mark.slow
def test_train_writes_a_readable_record(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "run"
    proc = run(train_cmd(out, tiny_gpt2_dir, "--gin.TRAIN_STEPS=20", "--gin.EVAL_PERIOD=10",
                         "--gin.CHECKPOINT_PERIOD=10", "--gin.ptj.DataSpec.eval_limit=40"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 20 steps" in proc.stdout
    for name in ("metrics.jsonl", "metrics.csv", "best.json", "plots/train_loss.png", "plots/eval_metrics.png",
                 "prompts/prompt_10.npy", "prompts/prompt_20.npy", "prompts/prompt_latest.npy"):
        assert (out / name).exists(), name
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 10, 20]
    assert final_prompt(out).shape == (4, 32) and final_prompt(out).dtype == np.float32
    assert sorted(os.listdir(out / "checkpoints")) == ["10", "20"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_gpt2_dir):
    steps = ["--gin.TRAIN_STEPS=30", "--gin.CHECKPOINT_PERIOD=10"]
    straight = tmp_path / "straight"
    assert run(train_cmd(straight, tiny_gpt2_dir, *steps)).returncode == 0

    killed = tmp_path / "killed"
    # Slow the steps down with a huge log period? No: kill as soon as checkpoint 10 exists.
    proc = subprocess.Popen(train_cmd(killed, tiny_gpt2_dir, *steps, "--gin.ptj.DataSpec.prefetch=0"), cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (killed / "prompts" / "prompt_10.npy").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(s) for s in os.listdir(killed / "checkpoints") if s.isdigit())
    assert done and done[-1] < 30, f"the run was not interrupted (checkpoints {done})"
    resumed = run(train_cmd(killed, tiny_gpt2_dir, *steps))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    np.testing.assert_array_equal(final_prompt(killed), final_prompt(straight))
    losses = lambda d: [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                        if r["split"] == "train"]
    np.testing.assert_allclose(losses(killed), losses(straight), rtol=1e-6)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, tiny_gpt2_dir, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=0"),
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    steps = sorted(int(s) for s in os.listdir(out / "checkpoints") if s.isdigit())
    assert len(steps) == 1 and 0 < steps[0] < 100000
    assert (out / "prompts" / f"prompt_{steps[0]}.npy").exists()
    assert "preempted" in stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_gpt2_dir):
    """A 2-host run (CPU, gloo), each host feeding half of every batch, gives the 1-host prompt."""
    steps = ["--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=6", "--gin.EVAL_PERIOD=6",
             "--gin.ptj.DataSpec.eval_limit=21"]
    single = tmp_path / "single"
    one = run(train_cmd(single, tiny_gpt2_dir, *steps))
    assert one.returncode == 0, one.stderr[-3000:]
    multi = tmp_path / "multi"
    port = _free_port()
    procs = [subprocess.Popen(train_cmd(multi, tiny_gpt2_dir, *steps, f"--coordinator_address=127.0.0.1:{port}",
                                        "--num_processes=2", f"--process_id={i}"),
                              cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(final_prompt(multi), final_prompt(single), rtol=1e-5, atol=1e-5)
    evals = lambda d: [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                       if r["split"] == "eval"]
    assert [r["step"] for r in evals(multi)] == [0, 6, 12]
    assert [r["accuracy"] for r in evals(multi)] == [r["accuracy"] for r in evals(single)]
    assert sorted(os.listdir(multi / "prompts")) == ["prompt_12.npy", "prompt_6.npy", "prompt_latest.npy"]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1], ids=["coordinator_dies", "worker_dies"])
def test_a_dead_process_stops_the_others_with_one_line(tmp_path, tiny_gpt2_dir, victim):
    """kill -9 of one host mid-run: the other says which process died and where the last checkpoint is, in one
    `error:` line, and exits 2 within the heartbeat timeout: no hang, no SIGABRT, no C++ log or stack dump."""
    out, port, heartbeat = tmp_path / "run", _free_port(), 5
    procs = [subprocess.Popen(train_cmd(out, tiny_gpt2_dir, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=20",
                                        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                        f"--process_id={i}", f"--heartbeat_timeout={heartbeat}"),
                              cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    survivor = procs[1 - victim]
    try:
        deadline = time.time() + 300
        while not (out / "prompts" / "prompt_20.npy").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
            time.sleep(0.05)
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.time()
        _, err = survivor.communicate(timeout=60)
        seconds = time.time() - killed_at
    finally:
        for p in procs:
            p.kill()
            p.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    print(f"\n{'coordinator' if victim == 0 else 'worker'} killed: exit {survivor.returncode} after {seconds:.1f} s:",
          *lines, sep="\n  ")
    assert survivor.returncode == 2 and seconds < heartbeat + 10
    assert len(lines) == 1 and lines[0].startswith(f"error: process {victim} of 2"), lines
    last = re.search(rf"stopped answering .* the last checkpoint is step (\d+) in {re.escape(str(out))}/checkpoints",
                     lines[0])
    assert last and int(last.group(1)) >= 20, lines[0]


@pytest.mark.parametrize("flag,needle", [
    ("--gin.ptj.DataSpec.bach_size=3", "bach_size"),
    ("--gin.ptj.trian.steps=3", "trian"),
])
def test_misspelled_binding_is_one_clear_line(tmp_path, tiny_gpt2_dir, flag, needle):
    proc = run(train_cmd(tmp_path / "x", tiny_gpt2_dir, flag))
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def test_missing_required_macro_is_one_clear_line(tmp_path):
    proc = run([sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=models/gpt2.gin",
                "--gin_file=prompts/random.gin", "--gin_file=runs/prompt_finetune.gin"])
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "MODEL_DIR" in lines[0] or "model_dir" in lines[0], proc.stderr


def test_unknown_gin_file(tmp_path):
    proc = run([sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=models/gpt3.gin"])
    assert proc.returncode == 2 and "models/gpt3.gin not found" in proc.stderr


@pytest.mark.slow
def test_eval_command_restores_prompt_and_head_from_a_run(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "run"
    assert run(train_cmd(out, tiny_gpt2_dir, "--gin.TRAIN_STEPS=10", "--gin.EVAL_PERIOD=10",
                         "--gin.ptj.DataSpec.eval_limit=24")).returncode == 0
    trained = json.loads((out / "best.json").read_text())
    proc = run([sys.executable, "-m", "prompt_tuning_jax.eval", "--gin_file=models/gpt2.gin",
                "--gin_file=prompts/from_sampled_vocab.gin", "--gin_file=prompts/linear_head.gin",
                "--gin_file=runs/prompt_eval.gin", f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_gpt2_dir}'",
                f"--gin.CHECKPOINT_PATH='{out}'", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
                "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'", "--gin.PROMPT_LENGTH=4",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.ptj.DataSpec.eval_limit=24"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    final = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]
    assert metrics["accuracy"] == final[-1]["accuracy"] and metrics["examples"] == 24
    assert trained["step"] in (0, 10)
