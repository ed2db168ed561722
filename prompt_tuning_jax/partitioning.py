"""Device mesh, logical-axis sharding rules, and moving arrays between hosts and the mesh.

Parameters carry logical axis names in their `axes` metadata (`vocab`, `embed`,
`heads`, `mlp`, ...). A rules table maps each name to a mesh axis (`data`,
`model`) or to None (replicated). The same model code then runs on one device or
on a pod slice: only the mesh changes.

Across hosts, each process holds its own rows of every batch (`global_rows`
makes the global array from them) and reads replicated results locally
(`host_value`); `gather_batches` collects per-process numpy rows on every host.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

# Megatron-style: vocab, heads and MLP dimensions split over `model`, batch over `data`.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("qkv", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("positions", None),
    ("relpos_buckets", None),
    ("relpos_heads", None),
    ("prompt", None),
    ("tasks", None),
    ("classes", None),
    ("length", None),
)
# T5X's 2-D parameter partitioning (`parameter_partitioning_dims=2`): weights also split their `embed`
# dimension over `data` (as ZeRO-3 / FSDP do), and each layer's weights are gathered when it runs. A
# frozen model then takes 1/devices of HBM per chip instead of 1/model. Activations keep `embed` whole.
PARAMETER_2D_RULES = tuple((name, "data" if name == "embed" else axis) for name, axis in DEFAULT_RULES)


def rules_for(parameter_partitioning_dims: int):
    """The rules table for 1-D (model axis only, the default) or 2-D (model and data) parameter sharding."""
    if parameter_partitioning_dims not in (1, 2):
        raise ValueError(f"parameter_partitioning_dims must be 1 or 2, got {parameter_partitioning_dims!r} "
                         "(runtime/parameter_partitioning_2d.gin sets 2)")
    return DEFAULT_RULES if parameter_partitioning_dims == 1 else PARAMETER_2D_RULES


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh over `devices` (default: all devices, all processes).

    `data=-1` takes whatever `model` leaves. Axis types are the classic auto ones.
    Devices of several TPU slices (`slice_index`) make a hybrid mesh: `model` stays
    inside a slice (ICI) and `data` spans the slices over DCN.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if n % model:
            raise ValueError(f"{n} devices cannot be split into model-parallel groups of {model}")
        data = n // model
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, found {n}")
    from jax.experimental import mesh_utils

    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        if data % slices:
            raise ValueError(f"the data axis ({data}) must be a multiple of the {slices} slices it spans")
        grid = mesh_utils.create_hybrid_device_mesh((data // slices, model), (slices, 1), devices=devices)
        return Mesh(grid, MESH_AXES)
    try:
        grid = mesh_utils.create_device_mesh((data, model), devices=devices)
    except Exception:  # unusual topologies: fall back to the given order
        grid = np.asarray(devices).reshape(data, model)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh | None,
                    rules=DEFAULT_RULES) -> P:
    """Maps logical axis names to a PartitionSpec, replicating dims the mesh axis does not divide."""
    if not axes:
        return P()
    table = dict(rules)
    out, used = [], set()
    for name, size in zip(axes, shape):
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis is not None and mesh is not None:
            if mesh_axis in used or size % mesh.shape[mesh_axis]:
                mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        out.append(mesh_axis)
    return P(*out)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def variable_spec(variable: nnx.Variable, mesh: Mesh | None, rules=DEFAULT_RULES) -> P:
    axes = variable.get_metadata().get("axes")
    return logical_to_spec(axes, variable.shape, mesh, rules)


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedSharding for each variable of `state`, as a pure nested dict (like `state.to_pure_dict()`)."""
    shardings = jax.tree.map(lambda v: NamedSharding(mesh, variable_spec(v, mesh, rules)), state,
                             is_leaf=_is_variable)
    return nnx.to_pure_dict(shardings) if isinstance(shardings, nnx.State) else shardings


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays: leading dim over `data`, the rest replicated."""
    return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Places every variable of `model` on `mesh` by its logical axes (in place) and returns it."""
    state = nnx.state(model)
    placed = jax.tree.map(
        lambda v: jax.device_put(v[...], NamedSharding(mesh, variable_spec(v, mesh, rules))),
        state, is_leaf=_is_variable)
    nnx.update(model, placed)
    return model


# --- host <-> mesh -----------------------------------------------------------------

def global_rows(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """This process's rows [B_local, ...] -> the global array [B_local * processes, ...] split by `sharding`."""
    local = np.asarray(local)
    shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, shape)


def host_value(x: jax.Array) -> np.ndarray:
    """A replicated array as numpy, on every process, multi-host included (numpy passes through)."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    return np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(jax.device_get(x))


def gather_batches(batches: Sequence[np.ndarray]) -> np.ndarray:
    """Per-process rows of N batches, each [B_local, ...] -> [N * B_global, ...] in global batch order.

    One collective for all batches; every process gets the same result.
    """
    stacked = np.stack([np.asarray(b) for b in batches])  # [N, B_local, ...]
    if jax.process_count() == 1:
        return stacked.reshape(-1, *stacked.shape[2:])
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(stacked))  # [P, N, B_local, ...]
    return gathered.swapaxes(0, 1).reshape(-1, *stacked.shape[2:])
