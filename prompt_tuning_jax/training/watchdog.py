"""When another process of a multi-host run dies, this one says so in one `error:` line and exits 2.

    watchdog.prepare()                                   # right before jax.distributed.initialize
    watchdog.start(num_processes, heartbeat_timeout_s)   # right after it
    watchdog.note_checkpoint(step, directory)            # every save: the line names the newest one
    watchdog.explain(error)                              # cli, before printing a failed collective's error
    watchdog.finish()                                    # cli, when the command is done: all finish together

The line names the dead process and the last checkpoint, e.g.

    error: process 1 of 2 stopped answering (killed, preempted or out of memory), so this process stops
    too; the last checkpoint is step 20 in runs/x/checkpoints: start all 2 processes again with the same
    command to resume from it

How a death reaches a survivor, and what catches it:
- A worker stops sending heartbeats. The coordination service (in process 0) runs in recoverable mode
  (`jax_enable_recoverability`), so it drops the worker from its live processes after the heartbeat
  timeout instead of aborting every process. A thread here polls the live processes every second.
- The coordinator (process 0, which runs the service) dies. jaxlib's client then aborts this process at
  once from a C++ thread, with a fatal log and a stack dump; no setting turns that off, and its Python
  callback (`missed_heartbeat_callback`) cannot be called in jaxlib 0.10 (std::bad_cast). A SIGABRT
  handler catches that abort, and the C++ log lines jaxlib writes to stderr are held back: an abort for
  any other reason still prints them and aborts as before.
- In recoverable mode jax's shutdown no longer waits for every process, so `finish` does: the processes
  meet at a barrier (still watched) before any of them exits.
- A collective fails first (gloo: "Connection reset by peer"). `explain` waits up to the heartbeat
  timeout for the service's verdict, which then ends the process with the line.
None of this is installed with `--verbose`: jax's own messages and abort then show as they are.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import select
import signal
import sys
import threading
import time

EXIT_CODE = 2
POLL_S = 1.0
FINISH_TIMEOUT_S = 1800.0  # process 0 may still be writing the run's files when the others are done
ABSL_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]\s]+:\d+\] ", re.MULTILINE)
DISTRIBUTED_FATAL = b"JAX distributed service detected fatal errors"

_state: dict = {"checkpoint": None, "stop": threading.Event(), "reported": threading.Lock(), "held": b""}
_abort_handler = None  # the ctypes callback must outlive its installation


def note_checkpoint(step: int, directory: str) -> None:
    """Remembers the newest checkpoint, for the line."""
    _state["checkpoint"] = (int(step), directory)


def prepare() -> None:
    """Holds back jaxlib's C++ log lines and catches its abort (call before `jax.distributed.initialize`)."""
    if "pipe" not in _state:
        _hold_back_cxx_logs()
        _catch_distributed_abort()


def start(num_processes: int, heartbeat_timeout_s: float) -> None:
    """Watches the other processes from now until `finish` (call after `jax.distributed.initialize`)."""
    from jax._src import distributed as jax_distributed

    _state.update(client=jax_distributed.global_state.client, n=num_processes, timeout=heartbeat_timeout_s,
                  me=jax_distributed.global_state.process_id, address=jax_distributed.global_state.coordinator_address)
    threading.Thread(target=_poll_live_processes, name="ptj-watchdog", daemon=True).start()


def finish(timeout_s: float = FINISH_TIMEOUT_S) -> None:
    """Waits until every process is done (a death meanwhile is still reported), then stops watching."""
    if not active():
        return
    _state["client"].wait_at_barrier("ptj_finished", int(timeout_s * 1000))
    stop()


def stop() -> None:
    """Stops watching: after this, the service going away (processes exiting) is no error."""
    _state["stop"].set()


def active() -> bool:
    return "client" in _state and not _state["stop"].is_set()


def explain(error: BaseException) -> None:
    """After a failed collective: waits up to the heartbeat timeout (plus a margin) for a dead process to be
    found, which ends this process with the line; returns if none is, and the caller reports `error`."""
    if not active():
        return
    logging.getLogger(__name__).debug("a collective failed (%s): waiting for the heartbeat verdict", error)
    deadline = time.monotonic() + _state["timeout"] + 10
    while time.monotonic() < deadline:
        dead = _dead_processes()
        if dead:
            _report(dead)
        time.sleep(POLL_S / 4)


def _poll_live_processes() -> None:
    while not _state["stop"].wait(POLL_S):
        dead = _dead_processes()
        if dead and not _state["stop"].is_set():
            _report(dead)


def _dead_processes() -> list[int]:
    try:
        live = _state["client"].get_live_nodes(list(range(_state["n"])))
    except Exception:  # the service is unreachable: the coordinator is gone (its abort usually comes first)
        return [0]
    return sorted(set(range(_state["n"])) - set(live))


def _report(dead: list[int]) -> None:
    """Prints the line once and ends the process (from any thread)."""
    if not _state["reported"].acquire(blocking=False):
        time.sleep(3600)  # another thread is reporting and exiting
    n = _state["n"]
    names = f"process 0 of {n} (the coordinator, {_state['address']})" if dead == [0] else (
        ", ".join(f"process {i}" for i in dead) + f" of {n}")
    checkpoint = _state["checkpoint"]
    where = (f"the last checkpoint is step {checkpoint[0]} in {checkpoint[1]}/checkpoints: start all "
             f"{n} processes again with the same command to resume from it" if checkpoint else
             f"no checkpoint was saved yet: start all {n} processes again to start over")
    line = (f"error: {names} stopped answering (killed, preempted or out of memory), so this "
            f"process ({_state['me']}) stops too; {where}\n")
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.write(_state.get("stderr_fd", 2), line.encode())
    os._exit(EXIT_CODE)


# --------------------------------------------------------------------------- jaxlib's abort


def _hold_back_cxx_logs() -> None:
    """Sends file descriptor 2 through a pipe: C++ log lines (absl's `I1207 12:00:00.0 123 file.cc:12] ...`)
    are dropped, a fatal one is held for the abort handler, anything else goes on to stderr. Python's own
    sys.stderr (and logging) write to the real stderr directly."""
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    _state.update(stderr_fd=real, pipe=read_end, lock=threading.Lock())
    old = sys.stderr
    sys.stderr = open(real, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(sys.stderr)
    threading.Thread(target=_forward, name="ptj-stderr", daemon=True).start()


def _drain(timeout: float) -> None:
    """Reads what the pipe holds and routes it (the caller holds `lock`)."""
    while select.select([_state["pipe"]], [], [], timeout)[0]:
        chunk = os.read(_state["pipe"], 1 << 16)
        if not chunk:
            return
        _route(chunk)
        timeout = 0


def _route(chunk: bytes) -> None:
    if _state["held"]:  # after a fatal line everything is held: the process is about to end
        _state["held"] += chunk
        return
    starts = [m.start() for m in ABSL_LINE.finditer(chunk)]
    plain = chunk[:starts[0]] if starts else chunk
    if plain:
        os.write(_state["stderr_fd"], plain)
    for begin, end in zip(starts, starts[1:] + [len(chunk)]):
        if chunk[begin:begin + 1] == b"F":
            _state["held"] = chunk[begin:]
            return


def _forward() -> None:
    while True:
        with _state["lock"]:
            _drain(0.05)
        time.sleep(0.01)


def _catch_distributed_abort() -> None:
    global _abort_handler

    def on_abort(signum):
        if _state["stop"].is_set():  # every process has finished: the service left first at exit
            os._exit(0)
        with _state["lock"]:
            _drain(0.2)  # the fatal log was written just before the abort
        if DISTRIBUTED_FATAL in _state["held"]:
            _report(_dead_from_fatal(_state["held"]))
        os.write(_state["stderr_fd"], _state["held"])  # another abort: show it, and abort as before
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        os.abort()

    _abort_handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(on_abort)
    ctypes.CDLL(None).signal(signal.SIGABRT, _abort_handler)


def _dead_from_fatal(text: bytes) -> list[int]:
    """The processes a jaxlib fatal log names ("The following tasks are unhealthy ...:\\n1\\n"), else the
    coordinator (its RPCs failed)."""
    listed = re.search(rb"tasks are unhealthy[^\n]*\n((?:\d+\n)+)", text)
    return [int(x) for x in listed.group(1).split()] if listed else [0]
