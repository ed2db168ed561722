"""Cloud TPU slices by their gcloud names, as JAX devices to compile for, with no TPU attached.

    spec = accelerator("v4-32")       # 16 chips (megacore: one JAX device each) on 4 hosts, 32 GiB HBM each
    devices = target_devices(spec)    # TPU devices of that topology; needs libtpu, not a TPU

`target_devices` asks libtpu for the topology (`jax.experimental.topologies`),
so `jax.jit(f).lower(...).compile()` on a mesh of those devices runs the real
XLA:TPU compiler on this machine (ahead-of-time compilation). The topologies
follow gcloud's accelerator types and MaxText's `accelerator_to_spec_map.py`:

- v4-N and v5p-N count TensorCores: N/2 chips, two cores per chip fused into one
  device ("megacore"), 4 chips per host, a 3-D torus (wrapped from 4x4x4 up);
- v5litepod-N and v6e-N count chips: one core each, a 2-D grid, 4 chips per host
  except the single-host 1, 4 and 8 chip slices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re

GiB = 2 ** 30
# HBM per chip (one JAX device), as Google documents each generation.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
_PREFIX = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}  # libtpu's topology name prefix
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
            512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_NAMES = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One TPU slice: `name` as gcloud writes it, `chips` JAX devices on `hosts` hosts."""

    name: str
    generation: str            # 'v4' | 'v5e' | 'v5p' | 'v6e'
    chips: int
    hosts: int
    topology: str              # libtpu's name, e.g. 'v4:2x2x4'
    megacore: bool
    chips_per_host: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]

    @property
    def hbm_bytes(self) -> int:
        return HBM_BYTES[self.generation]


def accelerator(name: str) -> Accelerator:
    """'v4-32', 'v5litepod-16', 'v5p-8', 'v6e-8', ... -> its slice; ValueError naming the valid sizes."""
    m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name.strip())
    if not m:
        raise ValueError(f"unknown accelerator {name!r}: use gcloud's names, e.g. v4-8, v4-32, v5litepod-16, "
                         "v5p-8, v6e-8")
    generation, size = _NAMES[m.group(1)], int(m.group(2))
    if generation in ("v4", "v5p"):
        chips = size // 2
        if size % 2 or chips not in _GRID_3D:
            valid = ", ".join(f"{m.group(1)}-{2 * c}" for c in _GRID_3D)
            raise ValueError(f"{name} is not a {generation} slice; the sizes (TensorCores) are {valid}")
        grid = _GRID_3D[chips]
        wrap = (chips >= 64,) * 3
        return Accelerator(name, generation, chips, max(1, chips // 4), f"{_PREFIX[generation]}:{grid}", True,
                           (2, 2, 1), wrap)
    if size not in _GRID_2D:
        valid = ", ".join(f"{m.group(1)}-{c}" for c in _GRID_2D)
        raise ValueError(f"{name} is not a {generation} slice; the sizes (chips) are {valid}")
    per_host = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}.get(size, (2, 2, 1))
    wrap = {128: (False, True, False), 256: (True, True, False)}.get(size, (False, False, False))
    hosts = size // (per_host[0] * per_host[1])
    return Accelerator(name, generation, size, hosts, f"{_PREFIX[generation]}:{_GRID_2D[size]}", False, per_host,
                       wrap)


def install_command() -> str:
    """The pip command that installs the TPU compiler (libtpu) matching the installed jax."""
    import jax

    return f'pip install "jax[tpu]=={jax.__version__}"'


def has_libtpu() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def quiet_libtpu(spec: Accelerator):
    """While libtpu loads: tells it which slice it is on, so that it does not probe cloud metadata (no
    network) and warn, and lets several processes load it (its lock file guards a real TPU; compiling
    ahead of time needs none). The variables are restored after: they would make this process look
    like a TPU VM (`training.distributed`)."""
    names = {"TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": spec.name,
             "TPU_WORKER_HOSTNAMES": "localhost"}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update({name: value for name, value in names.items() if before[name] is None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)


def target_devices(spec: Accelerator, num_slices: int = 1) -> list:
    """The JAX devices of `num_slices` such slices (joined over DCN), for ahead-of-time compilation.

    Each device has `process_index` (its host) and, with several slices, `slice_index`.
    RuntimeError naming the install command when libtpu is missing.
    """
    if not has_libtpu():
        raise RuntimeError(f"compiling for {spec.name} needs the TPU compiler, libtpu: {install_command()}")
    if num_slices < 1:
        raise ValueError(f"--num_slices must be >= 1, got {num_slices}")
    from jax.experimental.topologies import get_topology_desc

    with quiet_libtpu(spec):
        topology = get_topology_desc(platform="tpu", topology_name=spec.topology,
                                     chip_config_name="megacore" if spec.megacore else "default",
                                     chips_per_host_bounds=spec.chips_per_host, num_slices=num_slices, wrap=spec.wrap)
    return list(topology.devices)
