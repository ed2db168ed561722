#!/usr/bin/env python3
"""A recording fake of the gcloud commands scripts/tpu.sh runs, for tests/scripts/test_tpu_sh.py.

Every call appends its argv (after `gcloud`) as one JSON line to $FAKE_GCLOUD_LOG. The simulated
TPUs live in the JSON file $FAKE_GCLOUD_STATE:

- `queued-resources create` / `tpu-vm create` make a TPU in state PROVISIONING (CREATING); the
  first describe reports that state, later ones ACTIVE (READY). Creating an existing name fails.
- $FAKE_GCLOUD_SCRIPT, a JSON object {"N": "STATE"}, makes the Nth describe (1-based, counted over
  the whole test) put the TPU in STATE, e.g. {"4": "SUSPENDED"}; anything but ACTIVE/READY kills the
  job and loses the VM's disk (what a preemption does), and the TPU stays in that state.
- describe/delete/scp/ssh of a missing TPU fail like gcloud: `NOT_FOUND` on stderr, exit 1; scp/ssh
  to a TPU that is not up fail too.
- ssh commands are recognised by what they contain: `tar xzf` (setup: needs the scp'd archive),
  `fuser` (stale-process kill: stops the job), `nohup` (launch: needs setup; starts the job),
  `exit_code` (job status, worker 0: `none`, `running`, or the exit status $FAKE_GCLOUD_JOB_EXIT
  (default 0) once the job has been seen running $FAKE_GCLOUD_JOB_POLLS times (default 1)), `tail`.
- `storage` calls succeed. Anything else exits 2, so an unexpected call fails the test.
"""
import json
import os
import sys

UP = ("ACTIVE", "READY")


def fail(message: str, code: int = 1) -> None:
    print(f"ERROR: (gcloud) {message}", file=sys.stderr)
    sys.exit(code)


def flag(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def load() -> dict:
    path = os.environ["FAKE_GCLOUD_STATE"]
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {"tpus": {}, "describes": 0}


def save(state: dict) -> None:
    with open(os.environ["FAKE_GCLOUD_STATE"], "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)


def existing(state: dict, name: str, api: str) -> dict:
    if name not in state["tpus"]:
        fail(f"NOT_FOUND: Resource 'projects/p/locations/z/{api}/{name}' was not found")
    return state["tpus"][name]


def describe(state: dict, name: str, api: str) -> None:
    state["describes"] += 1
    tpu = existing(state, name, api)
    scripted = json.loads(os.environ.get("FAKE_GCLOUD_SCRIPT") or "{}").get(str(state["describes"]))
    if scripted:
        tpu["state"] = scripted
        if scripted not in UP:  # preempted: the VM, its disk and the job are gone
            tpu.update(job=None, archive=False, setup=False)
    print(tpu["state"])
    if tpu["state"] in ("PROVISIONING", "CREATING"):
        tpu["state"] = "ACTIVE" if tpu["api"] == "queued-resources" else "READY"


def ssh(tpu: dict, argv: list[str]) -> None:
    command = flag(argv, "command") or ""
    if "tar xzf" in command:
        if not tpu["archive"]:
            fail("ssh: tar: ~/prompt_tuning_jax.tar.gz: Cannot open: No such file or directory")
        tpu["setup"] = True
        print("worker 0 of 1: 4 local, 4 global devices (TPU v4)")
    elif "fuser" in command:
        tpu["job"] = None
    elif "nohup" in command:
        if not tpu["setup"]:
            fail("ssh: no ~/prompt_tuning_jax: run scripts/tpu.sh setup first")
        tpu["job"] = {"command": command, "polls": 0}
        print("started")
    elif "exit_code" in command:
        job = tpu["job"]
        if job is None:
            print("none")
        elif job["polls"] >= int(os.environ.get("FAKE_GCLOUD_JOB_POLLS", "1")):
            print(os.environ.get("FAKE_GCLOUD_JOB_EXIT", "0"))
        else:
            job["polls"] += 1
            print("running")
    elif "tail" in command:
        print("==> worker log <==\nstep 100")


def main(argv: list[str]) -> None:
    with open(os.environ["FAKE_GCLOUD_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(argv) + "\n")
    state = load()
    try:
        if argv[:1] == ["storage"]:
            return
        if argv[:2] != ["compute", "tpus"] or len(argv) < 5:
            fail(f"fake gcloud does not know {argv}", 2)
        api, verb, target = argv[2], argv[3], argv[4]
        name = argv[5].split(":")[0] if verb == "scp" else target  # scp SRC NAME:DEST
        if verb == "create":
            if name in state["tpus"]:
                fail(f"ALREADY_EXISTS: {name}")
            state["tpus"][name] = {"api": api, "state": "PROVISIONING" if api == "queued-resources" else "CREATING",
                                   "accelerator": flag(argv, "accelerator-type"), "job": None,
                                   "archive": False, "setup": False}
        elif verb == "describe":
            describe(state, name, api)
        elif verb == "delete":
            existing(state, name, api)
            del state["tpus"][name]
        elif verb in ("scp", "ssh"):
            tpu = existing(state, name, "nodes")
            if tpu["state"] not in UP:
                fail(f"{verb}: {name} is {tpu['state']}, not up")
            if verb == "scp":
                if not os.path.isfile(target):
                    fail(f"scp: {target}: No such file or directory")
                tpu["archive"] = True
            else:
                ssh(tpu, argv)
        else:
            fail(f"fake gcloud does not know {argv}", 2)
    finally:
        save(state)


if __name__ == "__main__":
    main(sys.argv[1:])
