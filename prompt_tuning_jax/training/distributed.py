"""Multi-host start-up: `jax.distributed` on TPU VMs automatically, elsewhere by flags."""
from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)
_initialized = False
HEARTBEAT_TIMEOUT_S = 20  # a dead peer is noticed within this (plus the abort): under a minute
INIT_TIMEOUT_S = 300  # hosts of a pod slice start within minutes of each other
SHUTDOWN_TIMEOUT_S = 30  # a finished process waits this long for the others at exit


def is_initialized() -> bool:
    return _initialized


def on_tpu_vm() -> bool:
    """True on a Cloud TPU VM (checked without starting a JAX backend)."""
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_ACCELERATOR_TYPE")
                or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, platform: str | None = None,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S, watch: bool = True) -> None:
    """Starts `jax.distributed` once per process, before any JAX computation.

    - With `coordinator_address` (host:port), `num_processes` and `process_id`:
      e.g. several CPU or GPU processes (CPU collectives use gloo).
    - On a TPU VM with no arguments: auto-detected (each host of a pod slice runs
      the same command).
    - Otherwise: nothing; a single process.

    heartbeat_timeout_s: a process that stops answering for this long (killed,
    preempted, out of memory) is declared dead, and every other process then
    exits non-zero instead of waiting in a collective forever (jax's default is
    100 s). The run resumes from its last checkpoint.

    watch: a survivor says which process died and where the last checkpoint is, in one `error:` line,
    and exits 2 (`training/watchdog.py`); False (--verbose) keeps jax's own abort and C++ messages.
    """
    global _initialized
    if _initialized:
        return
    timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_s, initialization_timeout=INIT_TIMEOUT_S,
                    shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    tpu_pod = not coordinator_address and on_tpu_vm() and int(os.environ.get("PTJ_SINGLE_HOST", "0")) == 0
    watch = watch and (bool(coordinator_address) or tpu_pod)
    if watch:  # a dead worker is dropped from the live processes instead of aborting everyone
        from prompt_tuning_jax.training import watchdog

        jax.config.update("jax_enable_recoverability", True)
        watchdog.prepare()
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        if (platform or os.environ.get("JAX_PLATFORMS", "")).startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, **timeouts)
    elif tpu_pod:
        jax.distributed.initialize(**timeouts)
    else:
        return
    _initialized = True
    if watch:
        watchdog.start(jax.process_count(), heartbeat_timeout_s)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())


def process_index() -> int:
    return jax.process_index()
