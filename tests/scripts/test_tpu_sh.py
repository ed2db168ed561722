"""scripts/tpu.sh and the SST-2 demo scripts, run with bash against a recording fake gcloud
(tests/scripts/fake_gcloud.py, on $GCLOUD): no network, no TPU, a few seconds in all.

The remote commands tpu.sh sends over ssh are also run here, with bash, in a sandbox HOME with a
fake `python` that records its argv: that is how the quoting of the user's command is checked.
"""
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TPU_SH = ROOT / "scripts" / "tpu.sh"
FAKE = pathlib.Path(__file__).with_name("fake_gcloud.py")
POD = ["--name", "ptj", "--zone", "us-central2-b", "--accelerator", "v4-32"]
HOST = ["--name", "ptj", "--zone", "us-central2-b", "--accelerator", "v4-8"]
TRAIN = ["python", "-m", "prompt_tuning_jax.train", "--gin_file=runs/prompt_finetune.gin",
         "--gin.MODEL_DIR='gs://bucket/run'", "--gin.MIXTURE_OR_TASK_NAME='sst2'"]
CLEAN_ENV = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR", "MODEL_DIR", "GCLOUD", "FAKE_GCLOUD_SCRIPT",
             "FAKE_GCLOUD_JOB_POLLS", "FAKE_GCLOUD_JOB_EXIT", "PYTHON", "EVAL_DIR", "CHECKPOINT_PATH")


class Gcloud:
    """The fake gcloud of one test: `run` runs tpu.sh with it on $GCLOUD, `calls` reads its log."""

    def __init__(self, tmp_path: pathlib.Path):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.binary = bin_dir / "gcloud"
        self.binary.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} "$@"\n')
        self.binary.chmod(0o755)
        self.log = tmp_path / "gcloud_calls.jsonl"
        self.env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        self.env.update(GCLOUD=str(self.binary), FAKE_GCLOUD_LOG=str(self.log),
                        FAKE_GCLOUD_STATE=str(tmp_path / "gcloud_state.json"))

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TPU_SH), *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=120, cwd=ROOT, check=False)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def gcloud(tmp_path) -> Gcloud:
    return Gcloud(tmp_path)


def printed(stdout: str) -> list[list[str]]:
    """The commands a --dry-run printed, each split as a POSIX shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def kind(argv: list[str]) -> str:
    """'create', 'describe', 'delete', 'scp', 'storage', or 'ssh:<what the remote command does>'."""
    if argv[0] == "storage":
        return "storage"
    if argv[3] != "ssh":
        return argv[3]
    command = option(argv, "--command")
    for marker, what in (("tar xzf", "setup"), ("fuser", "kill"), ("nohup", "launch"), ("exit_code", "status"),
                         ("tail", "logs")):
        if marker in command:
            return f"ssh:{what}"
    return "ssh:?"


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def run_remote(command: str, tmp_path: pathlib.Path, exit_status: int = 0, job_seconds: float = 0,
               wait: bool = True) -> dict:
    """Runs a remote command from tpu.sh with bash in a sandbox worker (HOME with ~/prompt_tuning_jax,
    a `python` that records its argv, then runs `job_seconds`; `sudo` does nothing); for a launch,
    waits for the job's ~/ptj_logs/exit_code unless `wait` is False."""
    home, bin_dir = tmp_path / "worker_home", tmp_path / "worker_bin"
    (home / "prompt_tuning_jax").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "json.dump(sys.argv[1:], open(os.path.join(os.environ['HOME'], 'argv.json'), 'w'))\n"
                      "print('step 1 of 30000', flush=True)\nimport time; time.sleep(float(os.environ['JOB_SECONDS']))\n"
                      "sys.exit(int(os.environ['JOB_EXIT']))\n")
    python.chmod(0o755)
    (bin_dir / "sudo").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sudo").chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "JOB_EXIT": str(exit_status),
           "JOB_SECONDS": str(job_seconds)}
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False)
    result = {"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr, "home": home}
    if "nohup" in command and wait:
        exit_file = home / "ptj_logs" / "exit_code"
        deadline = time.time() + 60
        while not (exit_file.exists() and exit_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.05)
        result["exit_code"] = exit_file.read_text().strip()
        result["argv"] = json.loads((home / "argv.json").read_text())
        result["logs"] = sorted(p.name for p in (home / "ptj_logs").glob("*.log"))
    return result


# ------------------------------------------------------------------------------------- dry run

def test_dry_run_prints_create_launch_and_delete_and_calls_no_gcloud(gcloud, tmp_path):
    out = gcloud.run("create", *POD, "--spot", "--dry-run")
    assert out.returncode == 0, out.stderr
    create, describe = printed(out.stdout)
    assert create[:6] == [str(gcloud.binary), "compute", "tpus", "queued-resources", "create", "ptj"]
    for word in ("--node-id=ptj", "--zone=us-central2-b", "--accelerator-type=v4-32",
                 "--runtime-version=tpu-ubuntu2204-base", "--spot"):
        assert word in create
    assert describe[4:6] == ["describe", "ptj"] and "--format=value(state.state)" in describe

    out = gcloud.run("launch", *POD, "--dry-run", "--", *TRAIN)
    assert out.returncode == 0, out.stderr
    kill, start = printed(out.stdout)
    assert kill[3:6] == ["tpu-vm", "ssh", "ptj"] and "--worker=all" in kill
    assert "sudo fuser -k /dev/accel* /dev/vfio/*" in option(kill, "--command")
    assert "/tmp/libtpu_lockfile" in option(kill, "--command")
    assert start[3:6] == ["tpu-vm", "ssh", "ptj"] and "--worker=all" in start
    job = run_remote(option(start, "--command"), tmp_path)
    assert job["rc"] == 0, job["stderr"]
    assert job["argv"] == TRAIN[1:]  # -m prompt_tuning_jax.train ... --gin.MODEL_DIR='gs://bucket/run' intact
    assert job["exit_code"] == "0" and len(job["logs"]) == 1 and job["logs"][0].startswith("worker_")

    # Options may come before the subcommand; the environment gives defaults.
    out = gcloud.run("--dry-run", "--zone", "us-central2-b", "delete", TPU_NAME="ptj", PROJECT="my-project")
    assert out.returncode == 0, out.stderr
    assert printed(out.stdout) == [[str(gcloud.binary), "compute", "tpus", "queued-resources", "delete", "ptj",
                                    "--zone=us-central2-b", "--force", "--quiet", "--project=my-project"]]
    assert gcloud.calls() == []


def test_dry_run_of_every_subcommand_calls_no_gcloud(gcloud):
    runs = [("create", *HOST, "--tpu-vm", "--reserved"), ("setup", *HOST), ("logs", *HOST, "--worker", "1", "--follow"),
            ("babysit", *POD, "--", *TRAIN), ("fetch", "--model-dir", "gs://bucket/run"), ("delete", *HOST, "--tpu-vm")]
    outputs = {}
    for args in runs:
        out = gcloud.run("--dry-run", *args)
        assert out.returncode == 0, (args, out.stderr)
        outputs[args[0]] = printed(out.stdout)
    assert gcloud.calls() == []
    create = outputs["create"][0]
    assert create[1:6] == ["compute", "tpus", "tpu-vm", "create", "ptj"]
    assert "--version=tpu-ubuntu2204-base" in create and "--reserved" in create
    git, scp, ssh = outputs["setup"]
    assert git[0] == "git" and "archive" in git and scp[4] == "scp" and "--worker=all" in scp
    setup = option(ssh, "--command")
    assert "tar xzf" in setup and "COMMIT" in setup and "-e '.[tpu]'" in setup
    assert "jax.device_count()" in setup and "--worker=all" in ssh
    logs = outputs["logs"][0]
    assert "--worker=1" in logs and "tail -v -n 200 -F ~/ptj_logs/worker_*.log" == option(logs, "--command")
    assert [kind(c[1:]) for c in outputs["babysit"] if c[0] != "git"] == [
        "describe", "ssh:status", "delete", "create", "describe", "scp", "ssh:setup", "ssh:kill", "ssh:launch"]
    assert outputs["fetch"][0][1:3] == ["storage", "cp"] and outputs["fetch"][0][-1] == "runs/run/"
    assert outputs["delete"] == [[str(gcloud.binary), "compute", "tpus", "tpu-vm", "delete", "ptj",
                                  "--zone=us-central2-b", "--quiet"]]


def test_launched_command_reaches_python_word_for_word(gcloud, tmp_path):
    words = ["a b $HOME \"q\" ;", "it's", "", "!x", "back\\slash", "$(touch pwned)", "*",
             "--gin.CLASS_LABELS=['a b', \"c\"]"]
    out = gcloud.run("launch", *HOST, "--model-dir", "gs://b/r", "--dry-run", "--", "python", *words)
    assert out.returncode == 0, out.stderr
    job = run_remote(option(printed(out.stdout)[1], "--command"), tmp_path, exit_status=3)
    assert job["argv"] == words and job["exit_code"] == "3"
    assert not (job["home"] / "prompt_tuning_jax" / "pwned").exists()


def test_job_status_command_reads_none_then_the_exit_status(gcloud, tmp_path):
    out = gcloud.run("babysit", *HOST, "--dry-run", "--", "python", "-c", "pass")
    commands = printed(out.stdout)
    status = option(commands[1], "--command")
    assert run_remote(status, tmp_path)["stdout"].strip() == "none"
    job = run_remote(option(commands[-1], "--command"), tmp_path, exit_status=0)
    assert job["exit_code"] == "0"
    assert run_remote(status, tmp_path)["stdout"].strip() == "0"


def test_launch_stops_the_previous_job_first(gcloud, tmp_path):
    out = gcloud.run("launch", *HOST, "--dry-run", "--", *TRAIN)
    kill, start = (option(c, "--command") for c in printed(out.stdout))
    run_remote(start, tmp_path, job_seconds=120, wait=False)
    logs = tmp_path / "worker_home" / "ptj_logs"
    deadline = time.time() + 30
    while not ((logs / "job.pid").exists() and (tmp_path / "worker_home" / "argv.json").exists()):
        assert time.time() < deadline
        time.sleep(0.05)
    pgid = int((logs / "job.pid").read_text())
    os.kill(pgid, 0)  # the job runs in its own process group
    started = time.time()
    assert run_remote(kill, tmp_path)["rc"] == 0
    assert time.time() - started < 30
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not (logs / "exit_code").exists() and not (logs / "job.pid").exists()


def test_setup_ships_the_commit_and_keeps_runs(gcloud, tmp_path):
    out = gcloud.run("setup", *HOST, "--dry-run", TMPDIR=str(tmp_path))
    git, scp, ssh = printed(out.stdout)
    subprocess.run(git, check=True, capture_output=True)  # the archive of HEAD, as setup makes it
    home = tmp_path / "worker_home"
    (home / "prompt_tuning_jax" / "runs" / "old_run").mkdir(parents=True)
    (home / "prompt_tuning_jax" / "stale.py").write_text("")
    (home / ".local" / "bin").mkdir(parents=True)
    (home / "ptj_venv" / "bin").mkdir(parents=True)
    for stub in (home / ".local" / "bin" / "uv", home / "ptj_venv" / "bin" / "python"):
        stub.write_text(f'#!/bin/sh\necho "$0 $*" >> {shlex.quote(str(home / "stubs.log"))}\n')
        stub.chmod(0o755)
    (home / "prompt_tuning_jax.tar.gz").write_bytes(pathlib.Path(scp[5]).read_bytes())
    remote = run_remote(option(ssh, "--command"), tmp_path)
    assert remote["rc"] == 0, remote["stderr"]
    checkout = home / "prompt_tuning_jax"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout
    assert (checkout / "COMMIT").read_text() == head
    assert (checkout / "setup.py").exists() and (checkout / "runs" / "old_run").is_dir()
    assert not (checkout / "stale.py").exists()
    stubs = (home / "stubs.log").read_text().splitlines()
    assert stubs[0].endswith(f"uv pip install -q --python {home}/ptj_venv/bin/python -e .[tpu]")
    assert stubs[1].startswith(f"{home}/ptj_venv/bin/python -c from prompt_tuning_jax.training import distributed")


# ------------------------------------------------------------------------------------ multi-host

@pytest.mark.parametrize("model_dir_args", [
    (["--", "python", "-m", "prompt_tuning_jax.train", "--gin.MODEL_DIR='runs/x'"], {}),
    (["--", "python", "-m", "prompt_tuning_jax.train", "--gin.MODEL_DIR", "runs/x"], {}),
    (["--", "env", "MODEL_DIR=runs/x", "bash", "scripts/sst2_demo.sh"], {}),
    (["--", "bash", "scripts/sst2_demo.sh"], {"MODEL_DIR": "runs/x"}),
], ids=["gin-flag", "gin-flag-two-words", "env-word", "env-var"])
def test_pod_slice_launch_refuses_a_local_model_dir(gcloud, model_dir_args):
    args, env = model_dir_args
    for accelerator in ("v4-32", "v5litepod-16"):
        out = gcloud.run("launch", "--name", "ptj", "--zone", "z", "--accelerator", accelerator, *args, **env)
        assert out.returncode == 2
        line = one_error_line(out)
        assert "gs://" in line and accelerator in line and "(got runs/x)" in line and "one disk per host" in line
    assert gcloud.calls() == []


def test_single_host_launch_takes_a_local_model_dir(gcloud, tmp_path):
    assert gcloud.run("create", *HOST, "--poll-seconds", "0").returncode == 0
    assert gcloud.run("setup", *HOST).returncode == 0
    out = gcloud.run("launch", *HOST, "--", "python", "-m", "prompt_tuning_jax.train", "--gin.MODEL_DIR='runs/x'")
    assert out.returncode == 0, out.stderr
    assert [kind(c) for c in gcloud.calls()] == ["create", "describe", "describe", "scp", "ssh:setup", "ssh:kill",
                                                 "ssh:launch"]


@pytest.mark.parametrize("accelerator,hosts", [
    ("v4-8", 1), ("v4-32", 4), ("v4-128", 16), ("v5p-8", 1), ("v5p-16", 2), ("v5litepod-1", 1),
    ("v5litepod-8", 1), ("v5litepod-16", 4), ("v5litepod-256", 64), ("v6e-8", 1), ("v6e-16", 4)])
def test_hosts_per_slice(gcloud, accelerator, hosts):
    out = gcloud.run("info", "--accelerator", accelerator)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{accelerator}: {hosts} host(s)")


# ----------------------------------------------------------------------------- the whole walk

def test_create_setup_launch_babysit_through_a_preemption_then_delete(gcloud):
    fast = ["--poll-seconds", "0"]
    for args in (["create", *POD, "--spot", *fast], ["setup", *POD], ["launch", *POD, "--", *TRAIN]):
        out = gcloud.run(*args)
        assert out.returncode == 0, (args, out.stderr)
    # The 4th describe finds the queued resource SUSPENDED (a spot preemption); the job then runs
    # for one status poll and exits 0.
    out = gcloud.run("babysit", *POD, "--spot", *fast, "--", *TRAIN,
                     FAKE_GCLOUD_SCRIPT='{"4": "SUSPENDED"}', FAKE_GCLOUD_JOB_POLLS="1")
    assert out.returncode == 0, out.stderr
    assert "SUSPENDED" in out.stderr and "recovery 1 of 5" in out.stderr and "exit status 0" in out.stderr
    assert gcloud.run("delete", *POD).returncode == 0
    calls = gcloud.calls()
    assert [kind(c) for c in calls] == [
        "create", "describe", "describe",                       # create: PROVISIONING, ACTIVE
        "scp", "ssh:setup",                                     # setup
        "ssh:kill", "ssh:launch",                               # launch
        "describe", "ssh:status",                               # babysit: ACTIVE, running
        "describe", "delete", "create", "describe", "describe",  # SUSPENDED: delete, re-create
        "scp", "ssh:setup", "ssh:kill", "ssh:launch",           # set up and relaunch
        "describe", "ssh:status", "describe", "ssh:status",     # running, then exit status 0
        "delete"]
    creates = [c for c in calls if kind(c) == "create"]
    assert creates[0] == creates[1] and "--spot" in creates[0]
    launches = [option(c, "--command") for c in calls if kind(c) == "ssh:launch"]
    assert launches[0] == launches[1]  # the relaunch runs the same command (it resumes from MODEL_DIR)
    setups = [option(c, "--command") for c in calls if kind(c) == "ssh:setup"]
    assert setups[0] == setups[1]      # the same commit
    assert calls[-1] == ["compute", "tpus", "queued-resources", "delete", "ptj", "--zone=us-central2-b", "--force",
                         "--quiet"]


def test_babysit_exits_non_zero_when_the_job_fails(gcloud):
    for args in (["create", *HOST, "--poll-seconds", "0"], ["setup", *HOST], ["launch", *HOST, "--", *TRAIN]):
        assert gcloud.run(*args).returncode == 0
    out = gcloud.run("babysit", *HOST, "--poll-seconds", "0", "--", *TRAIN, FAKE_GCLOUD_JOB_EXIT="3")
    assert out.returncode == 1 and "status 3" in out.stderr


def test_babysit_gives_up_after_max_retries(gcloud):
    # No TPU yet: recovery 1 creates it; the 4th describe finds it PREEMPTED (recovery 2); the 7th too.
    out = gcloud.run("babysit", *HOST, "--tpu-vm", "--max-retries", "2", "--poll-seconds", "0", "--", *TRAIN,
                     FAKE_GCLOUD_SCRIPT='{"4": "PREEMPTED", "7": "PREEMPTED"}')
    assert out.returncode == 1
    assert "--max-retries" in out.stderr.strip().splitlines()[-1]
    kinds = [kind(c) for c in gcloud.calls()]
    assert kinds.count("create") == 2 and kinds.count("ssh:launch") == 2 and kinds[-1] == "describe"


def test_sweep_starts_one_worker_on_every_vm_on_the_same_sweep_dir(gcloud, tmp_path):
    vms = ["sw-a", "sw-b", "sw-c"]
    for vm in vms:
        for args in (["create", "--name", vm, "--zone", "z", "--accelerator", "v4-8", "--tpu-vm",
                      "--poll-seconds", "0"], ["setup", "--name", vm, "--zone", "z"]):
            assert gcloud.run(*args).returncode == 0, args
    before = len(gcloud.calls())
    out = gcloud.run("sweep", "--names", "sw-a,sw-b", "--name", "sw-c", "--zone", "z", "--accelerator", "v4-8",
                     "--sweep-dir", "gs://bucket/sweep", "--", "--gin_file=sweeps/demo.gin", "--gin.SWEEP_PARALLEL=2")
    assert out.returncode == 0, out.stderr
    assert "3 sweep workers started on gs://bucket/sweep" in out.stderr
    calls = gcloud.calls()[before:]
    assert [(c[4], kind(c)) for c in calls] == [(vm, k) for vm in vms for k in ("ssh:kill", "ssh:launch")]
    launches = {option(c, "--command") for c in calls if kind(c) == "ssh:launch"}
    assert len(launches) == 1  # every VM runs the same worker, on the same SWEEP_DIR
    job = run_remote(launches.pop(), tmp_path)
    assert job["argv"] == ["-m", "prompt_tuning_jax.sweep", "--gin_file=sweeps/demo.gin", "--gin.SWEEP_PARALLEL=2",
                           "--gin.SWEEP_DIR='gs://bucket/sweep'"]
    assert job["exit_code"] == "0"


def test_sweep_names_the_vms_it_could_not_start_a_worker_on(gcloud):
    assert gcloud.run("create", "--name", "up", "--zone", "z", "--accelerator", "v4-8", "--poll-seconds", "0",
                      "--tpu-vm").returncode == 0
    assert gcloud.run("setup", "--name", "up", "--zone", "z").returncode == 0
    out = gcloud.run("sweep", "--names", "up,gone", "--zone", "z", "--accelerator", "v4-8", "--",
                     "--gin_file=sweeps/demo.gin", SWEEP_DIR="gs://bucket/sweep")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: no sweep worker started on gone")
    assert [kind(c) for c in gcloud.calls() if c[4] == "up"][-2:] == ["ssh:kill", "ssh:launch"]


def test_fetch_copies_the_run_from_its_bucket(gcloud, tmp_path):
    dest = tmp_path / "sst2"
    out = gcloud.run("fetch", str(dest), MODEL_DIR="gs://bucket/sst2/")
    assert out.returncode == 0, out.stderr
    assert dest.is_dir()
    assert gcloud.calls() == [["storage", "cp", "-r", "--continue-on-error", "gs://bucket/sst2/prompts",
                               "gs://bucket/sst2/metrics.jsonl", "gs://bucket/sst2/metrics.csv",
                               "gs://bucket/sst2/plots",
                               "gs://bucket/sst2/tensorboard", "gs://bucket/sst2/best.json", f"{dest}/"]]


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args,names", [
    (["create", "--zone", "z", "--accelerator", "v4-8"], ["--name", "TPU_NAME"]),
    (["create", "--name", "n", "--accelerator", "v4-8"], ["--zone"]),
    (["launch", "--name", "n", "--zone", "z", "--", "python"], ["--accelerator"]),
    (["launch", *HOST], ["after --"]),
    (["create", *HOST, "--nmae", "x"], ["--nmae"]),
    (["create", *HOST, "--poll-seconds", "soon"], ["--poll-seconds"]),
    (["create", *HOST, "--spot", "--reserved"], ["--spot", "--reserved"]),
    (["create", "--name", "n", "--zone", "z", "--accelerator", "v9z-8"], ["--runtime-version"]),
    (["create", "--name", "n", "--zone", "z", "--accelerator", "v4"], ["--accelerator"]),
    (["start", *HOST], ["start"]),
    ([], ["subcommand"]),
    (["delete", *HOST, "--", "python"], ["after --"]),
    (["fetch", "--model-dir", "runs/x"], ["gs://"]),
    (["fetch"], ["--model-dir"]),
    (["sweep", "--zone", "z", "--accelerator", "v4-8", "--sweep-dir", "gs://b/s", "--", "--gin_file=x.gin"],
     ["--names"]),
    (["sweep", "--names", "a,b", "--zone", "z", "--accelerator", "v4-8", "--", "--gin_file=x.gin"], ["--sweep-dir"]),
    (["sweep", "--names", "a,b", "--zone", "z", "--accelerator", "v4-8", "--sweep-dir", "runs/s", "--",
      "--gin_file=x.gin"], ["gs://", "runs/s"]),
    (["sweep", "--names", "a,b", *POD[2:], "--sweep-dir", "gs://b/s", "--", "--gin_file=x.gin"],
     ["v4-32", "single-host"]),
    (["sweep", "--names", "a,b", "--zone", "z", "--accelerator", "v4-8", "--sweep-dir", "gs://b/s"], ["after --"]),
    (["sweep", "--names", "a", "--zone", "z", "--accelerator", "v4-8", "--sweep-dir", "gs://b/s", "--",
      "--gin.SWEEP_DIR='gs://b/t'"], ["--sweep-dir"]),
    (["create", "--name", "a", "--name", "b", "--zone", "z", "--accelerator", "v4-8"], ["only sweep"]),
])
def test_bad_input_is_one_error_line_and_no_gcloud_call(gcloud, args, names):
    out = gcloud.run(*args)
    assert out.returncode == 2
    line = one_error_line(out)
    for name in names:
        assert name in line
    assert gcloud.calls() == []


def test_runtime_version_overrides_the_family_default(gcloud):
    out = gcloud.run("create", "--name", "n", "--zone", "z", "--accelerator", "v9z-8", "--runtime-version=v9-base",
                     "--dry-run")
    assert out.returncode == 0 and "--runtime-version=v9-base" in printed(out.stdout)[0]


def test_help(gcloud):
    out = gcloud.run("--help")
    assert out.returncode == 0 and "babysit" in out.stdout and "v5litepod-16: 4 hosts" in out.stdout


# ---------------------------------------------------------------------------------- demo scripts

def demo_argv(script: str, tmp_path: pathlib.Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    """Runs scripts/<script> with PYTHON set to an argv recorder: stdout is the argv, as JSON."""
    recorder = tmp_path / "argv.py"
    recorder.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    clean = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *extra], capture_output=True, text=True,
                          env={**clean, "PYTHON": f"{sys.executable} {recorder}", **env}, timeout=60, check=False)


def check_gin(argv: list[str]) -> None:
    """The demo's gin files resolve and its bindings parse, as the CLI would read them."""
    from prompt_tuning_jax import cli

    rest, bindings = cli.split_gin_flags(argv[2:])
    args = cli.build_parser("demo").parse_args(rest)
    cli.parse_gin(args.gin_file, bindings)


def test_sst2_demo_trains_the_papers_setting(tmp_path):
    out = demo_argv("sst2_demo.sh", tmp_path, "--gin.TRAIN_STEPS=10", MODEL_DIR="gs://bucket/sst2")
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)
    assert argv[:2] == ["-m", "prompt_tuning_jax.train"]
    assert [a for a in argv if a.startswith("--gin_file=")] == [
        "--gin_file=models/t5_1_1_lm100k_base.gin", "--gin_file=prompts/from_class_labels.gin",
        "--gin_file=runtime/bfloat16.gin", "--gin_file=runs/prompt_finetune.gin"]
    assert "--gin.MODEL_DIR='gs://bucket/sst2'" in argv
    assert "--gin.MIXTURE_OR_TASK_NAME='taskless_glue_sst2_v200_examples'" in argv
    assert argv[-1] == "--gin.TRAIN_STEPS=10"  # extra arguments come last and win
    check_gin(argv)

    clean = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    echoed = subprocess.run(["bash", str(ROOT / "scripts" / "sst2_demo.sh")], capture_output=True, text=True,
                            env={**clean, "PYTHON": "echo", "MODEL_DIR": "runs/sst2"}, check=True)
    assert echoed.stdout.startswith("-m prompt_tuning_jax.train --gin_file=models/t5_1_1_lm100k_base.gin")
    assert "--gin.MODEL_DIR='runs/sst2'" in echoed.stdout


def test_sst2_demo_needs_a_model_dir(tmp_path):
    out = demo_argv("sst2_demo.sh", tmp_path)
    assert out.returncode == 2 and "MODEL_DIR" in one_error_line(out) and out.stdout == ""


def test_sst2_xxl_demo_lets_the_compiler_pick_the_mesh_and_needs_gs(tmp_path):
    out = demo_argv("sst2_xxl_demo.sh", tmp_path, MODEL_DIR="gs://bucket/xxl")
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)
    assert "--gin_file=models/t5_1_1_lm100k_xxl.gin" in argv and "--gin_file=runtime/model_parallel_8.gin" in argv
    assert argv.index("--gin.MESH_SHAPE='auto'") > argv.index("--gin_file=runtime/model_parallel_8.gin")
    assert "--gin.MODEL_DIR='gs://bucket/xxl'" in argv
    check_gin(argv)
    local = demo_argv("sst2_xxl_demo.sh", tmp_path, MODEL_DIR="runs/xxl")
    assert local.returncode == 2 and "gs://" in one_error_line(local)


def test_sst2_demo_eval_evaluates_the_released_prompt(tmp_path):
    out = demo_argv("sst2_demo_eval.sh", tmp_path)
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)
    assert argv == ["-m", "prompt_tuning_jax.eval", "--gin_file=pretrained_prompts/t5_1_1_lm100k_base/sst2.gin",
                    "--gin.EVAL_OUTPUT_DIR='runs/eval_sst2'"]
    check_gin(argv)
    mine = json.loads(demo_argv("sst2_demo_eval.sh", tmp_path, EVAL_DIR="gs://b/eval",
                                CHECKPOINT_PATH="gs://b/sst2").stdout)
    assert mine[3:] == ["--gin.EVAL_OUTPUT_DIR='gs://b/eval'", "--gin.CHECKPOINT_PATH='gs://b/sst2'"]
