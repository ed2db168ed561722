"""Will it fit? A run's programs compiled ahead of time for a device mesh, with no weights and no data.

    run = Run("train", ModelSpec("google/t5-xxl-lm-adapt", param_dtype="bfloat16", remat=True),
              PromptSpec(length=100), DataSpec("sst2", {"inputs": 512, "targets": 8}))
    devices = topologies.target_devices(topologies.accelerator("v4-32"))   # or jax.devices()
    plan = compile_run(run, devices, hbm_bytes=32 * 2**30, mesh_shape=(-1, 8))
    plan.programs["train_step"].peak                 # bytes per chip
    shape, plans = auto_mesh_shape(run, devices, hbm_bytes)   # MESH_SHAPE 'auto'

The model is built abstractly (`nnx.eval_shape` of the checkpoint's config, see
`ModelSpec.build_abstract`), split into a `MeshState` of ShapeDtypeStructs with
the run's shardings, and the run's own jitted programs (`Trainer`, `Predictor`,
`Generator`: its optimizer, accumulation, remat, dtypes and shardings) are
lowered for the largest batch the run can make (BATCH_SIZE rows at the
TASK_FEATURE_LENGTHS) and compiled by the target's XLA compiler. The compiled
program's memory analysis gives the bytes per device; its cost analysis the FLOPs.

Programs: `train_step` (a train run that trains something), `eval_step` (class
predictions: rank classification over the label strings, or the head), and
`decode` (the whole greedy/beam/sampling loop; runs without a head only).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning_jax import partitioning
from prompt_tuning_jax.decoding import DecodeSpec
from prompt_tuning_jax.experiments import loading
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec, TrainSpec
from prompt_tuning_jax.training import optim
from prompt_tuning_jax.training.predict import Generator, Predictor
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

logger = logging.getLogger(__name__)
GiB = 2 ** 30
KINDS = ("train", "evaluate", "infer")


@dataclasses.dataclass
class Run:
    """What a train, evaluate or infer run would execute (the arguments gin binds for it)."""

    kind: str
    model: ModelSpec
    prompt: PromptSpec
    data: DataSpec
    schedule: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    optimizer: Any = None
    decoding: DecodeSpec = dataclasses.field(default_factory=DecodeSpec)
    scoring: str = "generate"
    mesh_shape: Any = (-1, 1)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"a run is one of {KINDS}, got {self.kind!r}")

    def for_target(self, platform: str) -> "Run":
        """COMPUTE_DTYPE 'auto' resolved for the target platform (bfloat16 on TPUs and GPUs), not this host."""
        if self.model.dtype != "auto":
            return self
        dtype = "bfloat16" if platform in ("tpu", "gpu") else "float32"
        return dataclasses.replace(self, model=dataclasses.replace(self.model, dtype=dtype))

    @property
    def programs(self) -> tuple[str, ...]:
        trains = self.kind == "train" and self.prompt.method_impl.trains
        decodes = self.prompt.head is None
        return (("train_step",) if trains else ()) + (() if self.kind == "infer" else ("eval_step",)) + \
            (("decode",) if decodes else ())


@dataclasses.dataclass
class ProgramReport:
    """One compiled program's bytes per device (weights + trainable + batch <= arguments) and FLOPs."""

    name: str
    weights: int              # frozen weights' shard on one device
    trainable: int            # prompt and head (and for train_step, their optimizer state)
    batch: int
    arguments: int = 0
    output: int = 0
    alias: int = 0            # outputs that reuse a donated argument's buffer
    temporary: int = 0
    flops: float = 0.0
    compile_s: float = 0.0
    error: str | None = None  # the compiler's own out-of-memory message, or WEIGHTS_ALONE

    @property
    def peak(self) -> int:
        """Bytes live on a device at once: arguments, temporaries and outputs that are not donated buffers."""
        return self.arguments + self.output - self.alias + self.temporary

    def fits(self, hbm_bytes: int | None) -> bool:
        return self.error is None and (hbm_bytes is None or self.peak <= hbm_bytes)

    def to_json(self, hbm_bytes: int | None) -> dict:
        return {"fits": self.fits(hbm_bytes), "weights_bytes_per_chip": self.weights,
                "trainable_bytes_per_chip": self.trainable, "batch_bytes_per_chip": self.batch,
                "bytes_per_chip": {"arguments": self.arguments, "temporary": self.temporary, "output": self.output,
                                   "alias": self.alias, "peak": self.peak},
                "flops": self.flops, "compile_s": round(self.compile_s, 1), "error": self.error}


@dataclasses.dataclass
class Plan:
    mesh_shape: tuple[int, int]
    devices: int
    hbm_bytes: int | None
    programs: dict[str, ProgramReport]

    @property
    def fits(self) -> bool:
        return all(p.fits(self.hbm_bytes) for p in self.programs.values())

    def first_unfit(self) -> ProgramReport | None:
        return next((p for p in self.programs.values() if not p.fits(self.hbm_bytes)), None)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs (the first device's shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
    return total


# --- the abstract run on a mesh ----------------------------------------------------------------

def _tasks(run: Run) -> list:
    try:
        return run.data.tasks()
    except Exception:  # an unknown or unreachable task: the shapes do not depend on it
        return []


def abstract_state(run: Run, mesh) -> tuple[MeshState, PromptSpec]:
    """The run's prompted model as ShapeDtypeStructs placed on `mesh` (no weights read, no initializer run)."""
    from flax import nnx

    tasks = _tasks(run)
    prompt = run.prompt
    if len(tasks) > 1:
        prompt = dataclasses.replace(prompt, num_tasks=len(tasks))
    if tasks:
        prompt = prompt.for_task(tasks[0])
    if prompt.head == "linear" and prompt.num_labels is None:
        prompt = dataclasses.replace(prompt, num_labels=2)
    prompt = dataclasses.replace(prompt, init="random_uniform")  # shapes only: no tokenizer, no files
    build = run.model.build_abstract()
    prompted = nnx.eval_shape(lambda: prompt.build(build(), None))
    return MeshState(prompted, mesh, rules=run.model.rules, trainable=prompt.trainable(prompted)), prompt


def batch_shapes(run: Run, rows: int, label_dtype=jnp.int32) -> dict:
    """The largest global batch the run's pipeline makes: [rows, TASK_FEATURE_LENGTHS] (the top buckets)."""
    inputs, targets = run.data.feature_lengths["inputs"], run.data.feature_lengths["targets"]
    i32 = jnp.int32
    return {"input_ids": ((rows, inputs), i32), "attention_mask": ((rows, inputs), i32),
            "target_ids": ((rows, targets), i32), "target_mask": ((rows, targets), i32),
            "label": ((rows,), label_dtype), "task_index": ((rows,), i32), "weight": ((rows,), jnp.float32)}


def _lowerings(run: Run, state: MeshState, prompt: PromptSpec) -> dict:
    """{program: (lower() -> Lowered, trainable state it holds)} for each program of the run."""
    tasks = _tasks(run)
    objective = loading.objective(prompt, tasks[0]) if tasks else ("lm" if prompt.head is None else "classification")
    label_dtype = jnp.float32 if objective == "regression" else jnp.int32
    train_batch = state.abstract_batch(batch_shapes(run, run.data.batch_size, label_dtype))
    eval_rows = run.data.eval_batch_size or run.data.batch_size
    eval_batch = state.abstract_batch(batch_shapes(run, eval_rows, label_dtype))
    out = {}
    if "train_step" in run.programs:
        tx = run.optimizer if run.optimizer is not None else optim.make_optimizer(total_steps=run.schedule.steps)
        trainer = Trainer(state, tx, objective=objective, accum_steps=run.schedule.accum_steps, seed=run.data.seed)
        out["train_step"] = (lambda: trainer.lower(train_batch), (state.trainable, trainer.opt_state), train_batch)
    if "eval_step" in run.programs:
        predictor = Predictor(state, objective if prompt.head is not None else "lm")
        labels = (None, None)
        if prompt.head is None:
            classes = len(tasks[0].label_names) if tasks and tasks[0].label_names else 2
            shape = (classes, run.data.feature_lengths["targets"])
            labels = tuple(jax.ShapeDtypeStruct(shape, jnp.int32, sharding=state.replicated) for _ in range(2))
        out["eval_step"] = (lambda: predictor.lower(eval_batch, labels), state.trainable, eval_batch)
    if "decode" in run.programs:
        decoding, model = run.decoding, state.merge().model
        max_new = decoding.max_new_tokens or run.data.feature_lengths["targets"]
        generator = Generator(state, lambda m, ids, mask, task: decoding.generate(
            m, ids, mask, model.config.eos_token_id, task_index=task, max_new_tokens=max_new))
        keys = ("input_ids", "attention_mask", "task_index")
        out["decode"] = (lambda: generator.lower(eval_batch), state.trainable, {k: eval_batch[k] for k in keys})
    return out


# --- compiling ------------------------------------------------------------------------------

WEIGHTS_ALONE = "not compiled: the frozen weights alone exceed the HBM"
OOM = re.compile(r"RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds available HBM|Out of memory")


def compile_program(name: str, lower, trainable, batch, weights: int) -> ProgramReport:
    """Lowers and compiles one program; the compiler's out-of-memory refusal becomes `error`."""
    report = ProgramReport(name, weights=weights, trainable=shard_bytes(trainable), batch=shard_bytes(batch))
    start = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory refusal is an answer
        if not OOM.search(str(e)):
            raise
        report.compile_s = time.perf_counter() - start
        report.error = " ".join(str(e).split())[:400]
        report.arguments = report.weights + report.trainable + report.batch
        report.temporary = _needed_temporaries(str(e))
        return report
    report.compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    if memory is not None:
        report.arguments, report.output = memory.argument_size_in_bytes, memory.output_size_in_bytes
        report.alias, report.temporary = memory.alias_size_in_bytes, memory.temp_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    report.flops = float((cost or {}).get("flops", 0.0))
    return report


def _needed_temporaries(message: str) -> int:
    """The temporaries XLA:TPU said it needed ('... HLO temporaries (42.38G) exceeds ...'), in bytes."""
    m = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message) or re.search(r"\(([\d.]+)([KMGT])\)", message)
    if not m:
        return 0
    return int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024)


def compile_run(run: Run, devices: Sequence, hbm_bytes: int | None, mesh_shape=None,
                stop_at_unfit: bool = False, programs: Sequence[str] | None = None) -> Plan:
    """Compiles the run's programs for `devices` on MESH_SHAPE `mesh_shape` (default: the run's)."""
    shape = tuple(run.mesh_shape if mesh_shape is None else mesh_shape)
    mesh = partitioning.make_mesh(*shape, devices=devices)
    state, prompt = abstract_state(run, mesh)
    state.check_batch({"input_ids": np.zeros((run.data.batch_size // jax.process_count(), 1))},
                      run.schedule.accum_steps if run.kind == "train" else 1)
    weights = shard_bytes(state.frozen)
    plan = Plan((mesh.shape["data"], mesh.shape["model"]), len(devices), hbm_bytes, {})
    for name, (lower, trainable, batch) in _lowerings(run, state, prompt).items():
        if programs is not None and name not in programs:
            continue
        if hbm_bytes is not None and weights > hbm_bytes:  # minutes of compiling could only say no
            trainable, batch = shard_bytes(trainable), shard_bytes(batch)
            plan.programs[name] = ProgramReport(name, weights, trainable, batch, arguments=weights + trainable + batch,
                                                error=WEIGHTS_ALONE)
            continue
        plan.programs[name] = compile_program(name, lower, trainable, batch, weights)
        if stop_at_unfit and not plan.programs[name].fits(hbm_bytes):
            break
    return plan


def auto_mesh_shape(run: Run, devices: Sequence, hbm_bytes: int | None,
                    programs: Sequence[str] | None = None) -> tuple[tuple[int, int], list[Plan]]:
    """MESH_SHAPE 'auto': the smallest model-parallel degree whose programs all fit, found by compiling.

    Degrees are the divisors of the device count that leave the global batch divisible over `data`;
    a degree whose weights alone exceed the HBM is not compiled. Returns ((data, model), the plans
    compiled on the way); ValueError naming the closest miss when none fits.
    """
    n, plans = len(devices), []
    accum = run.schedule.accum_steps if run.kind == "train" else 1
    for model in [d for d in range(1, n + 1) if n % d == 0]:
        data = n // model
        if run.data.batch_size % (data * accum):
            continue
        plan = compile_run(run, devices, hbm_bytes, (data, model), stop_at_unfit=True, programs=programs)
        if any(p.error == WEIGHTS_ALONE for p in plan.programs.values()):
            continue  # not compiled (compile_run checks the weights first): no miss worth naming
        plans.append(plan)
        if plan.fits:
            return (data, model), plans
    raise ValueError(no_fit_message(run, plans, hbm_bytes, n))


def no_fit_message(run: Run, plans: Sequence[Plan], hbm_bytes: int | None, devices: int) -> str:
    """One line: the program that does not fit, GiB needed against the HBM, and what to change."""
    if not plans:
        tips = _advice(run, devices, (1, devices), weights=(0, 0))
        return (f"no MESH_SHAPE of {devices} devices fits: the frozen weights alone exceed {hbm_bytes / GiB:.1f} GiB "
                f"per chip at every model-parallel degree that divides BATCH_SIZE {run.data.batch_size}: "
                + "; or ".join(tips + ["use a bigger slice"]))
    plan = min(plans, key=lambda p: p.first_unfit().peak if p.first_unfit() else 0)
    program = plan.first_unfit()
    hbm = f"{hbm_bytes / GiB:.1f} GiB" if hbm_bytes is not None else "the device memory"
    if program.error == WEIGHTS_ALONE:
        return (f"{program.name} needs more than {program.peak / GiB:.1f} GiB per chip on MESH_SHAPE "
                f"{plan.mesh_shape}: the frozen weights alone take {program.weights / GiB:.1f} GiB (so it was not "
                f"compiled) but a chip has {hbm}: "
                + "; or ".join(_advice(run, devices, plan.mesh_shape, weights=(program.weights, hbm_bytes))))
    return (f"{program.name} needs {program.peak / GiB:.1f} GiB per chip on MESH_SHAPE {plan.mesh_shape} "
            f"(weights {program.weights / GiB:.1f}, trainable {program.trainable / GiB:.2f}, batch "
            f"{program.batch / GiB:.2f}, temporaries {program.temporary / GiB:.1f}) but a chip has {hbm}: "
            + "; or ".join(_advice(run, devices, plan.mesh_shape)))


def _advice(run: Run, devices: int, mesh_shape, weights: tuple[int, int] | None = None) -> list[str]:
    """What could make it fit, given what the run already does.

    `weights`: (bytes per chip, HBM bytes) when the weights alone are too big: then only what shrinks them,
    and a model axis large enough for them (their sharded part shrinks with it).
    """
    tips, weights_only = [], weights is not None
    model = mesh_shape[1] if mesh_shape else 1
    larger = [d for d in range(model + 1, devices + 1) if devices % d == 0]
    if weights_only and weights[1]:
        larger = [d for d in larger if weights[0] * model / d <= weights[1]] or larger[-1:]
    if larger:
        tips.append(f"raise the model axis (MESH_SHAPE=(-1, {larger[0]}), or 'auto')")
    if not weights_only:
        tips.append("lower BATCH_SIZE or raise ACCUM_STEPS")
    if not run.model.remat and not weights_only:
        tips.append("rematerialise blocks (ptj.ModelSpec.remat = True)")
    if run.model.param_dtype != "bfloat16" or (run.model.dtype not in ("bfloat16", "auto") and not weights_only):
        tips.append("store and compute in bfloat16 (runtime/bfloat16.gin, ptj.ModelSpec.param_dtype = 'bfloat16')")
    if run.model.parameter_partitioning_dims == 1:
        tips.append("shard weights 2-D (runtime/parameter_partitioning_2d.gin)")
    return tips


def run_from_gin() -> Run:
    """The Run the parsed gin configuration describes (the first of ptj.train, ptj.evaluate, ptj.infer bound)."""
    import gin

    for kind in KINDS:
        bindings = gin.get_bindings(f"ptj.{kind}")
        if bindings:
            break
    else:
        raise ValueError("the gin files bind none of ptj.train, ptj.evaluate, ptj.infer: pass a runs/ file "
                         "(e.g. --gin_file=runs/prompt_finetune.gin)")
    get = lambda key, default: bindings.get(key, default)  # noqa: E731
    return Run(kind, bindings["model"], bindings["prompt"], get("data", DataSpec()), get("schedule", TrainSpec()),
               get("optimizer", None), get("decoding", DecodeSpec()), get("scoring", "generate"),
               get("mesh_shape", (-1, 1)))


def device_memory(device) -> int | None:
    """The bytes a device's allocator may use (TPUs, GPUs); None where it does not say (CPUs)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    return (stats or {}).get("bytes_limit")


def resolve_mesh_shape(run: Run):
    """The run's MESH_SHAPE; 'auto' compiles the run's programs on this host's devices (`auto_mesh_shape`)
    against their memory. Devices that report no memory limit (CPUs) get (-1, 1)."""
    if run.mesh_shape != "auto":
        return run.mesh_shape  # checked by loading.make_mesh
    devices = jax.devices()
    hbm = device_memory(devices[0])
    if hbm is None:
        logger.info("MESH_SHAPE 'auto': %s devices report no memory limit; using (-1, 1)", devices[0].platform)
        return (-1, 1)
    shape, plans = auto_mesh_shape(run.for_target(devices[0].platform), devices, hbm)
    logger.info("MESH_SHAPE 'auto' chose %s after compiling %d mesh shapes", shape, len(plans))
    return shape
