"""`python -m prompt_tuning_jax.compile`: will this run fit that TPU slice? Compile it there and see.

    python -m prompt_tuning_jax.compile --accelerator=v4-32 \
      --gin_file=models/t5_1_1_lm100k_xxl.gin --gin_file=prompts/from_class_labels.gin \
      --gin_file=runtime/model_parallel_8.gin --gin_file=runs/prompt_finetune.gin \
      --gin.MODEL_DIR="'gs://bucket/run'" --gin.MIXTURE_OR_TASK_NAME="'sst2'" [--json=plan.json]

Takes the gin files and --gin. flags of a train, eval or infer command, plus the
slice: gcloud's accelerator name (v4-8 ... v4-4096, v5litepod-1 ... -256, v5p-8 ...,
v6e-1 ...) and --num_slices (several slices over DCN, `data` spanning them). It
reads no weights and no data and needs no network and no TPU: the model is built
from its config (shipped for the released sizes), and libtpu's compiler compiles
each program the run executes for that topology (`experiments.planning`). It prints,
per chip, the frozen weights, the trainable state, the batch, the temporaries and
the peak against the chip's HBM, with the FLOPs and compile time of each program.
MESH_SHAPE 'auto' picks the smallest model-parallel degree that fits.

Exit 0 when every program fits; 2 with one `error:` line naming the program, the
GiB it needs against the HBM and what to change when one does not (or on bad input).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host only traces: no accelerator is used

import json  # noqa: E402

from prompt_tuning_jax import cli, files, topologies  # noqa: E402
from prompt_tuning_jax.experiments import planning  # noqa: E402

GiB = topologies.GiB


def add_arguments(parser) -> None:
    parser.add_argument("--accelerator", required=True, help="gcloud's TPU name: v4-8, v5litepod-16, v5p-8, v6e-8, ...")
    parser.add_argument("--num_slices", type=int, default=1, help="slices joined over DCN (multislice)")
    parser.add_argument("--json", help="also write the results as JSON to this path (local or gs://)")


def run(args) -> None:
    spec = topologies.accelerator(args.accelerator)
    devices = topologies.target_devices(spec, args.num_slices)  # libtpu first: it names the install command
    job = planning.run_from_gin().for_target("tpu")
    slices = f" x {args.num_slices} slices" if args.num_slices > 1 else ""
    print(f"{job.kind} run of {job.model.path} on {spec.name}{slices}: {len(devices)} chips"
          f"{' (megacore)' if spec.megacore else ''}, {spec.hosts * args.num_slices} hosts, "
          f"{spec.hbm_bytes / GiB:.0f} GiB HBM per chip")
    if job.mesh_shape == "auto":
        try:
            _, plans = planning.auto_mesh_shape(job, devices, spec.hbm_bytes)
        except ValueError:
            _write_json(args, spec, job, None)
            raise
        for tried in plans[:-1]:
            miss = tried.first_unfit()
            print(f"MESH_SHAPE {tried.mesh_shape}: {miss.name} needs {miss.peak / GiB:.1f} GiB, too much")
        plan = plans[-1]
        print(f"MESH_SHAPE 'auto' chose {plan.mesh_shape}")
    else:
        plan = planning.compile_run(job, devices, spec.hbm_bytes)
    print(describe(job, plan))
    _write_json(args, spec, job, plan)
    if not plan.fits:
        raise ValueError(planning.no_fit_message(job, [plan], spec.hbm_bytes, len(devices)))


def describe(job: planning.Run, plan: planning.Plan) -> str:
    """The per-chip table of a plan (GiB), one row per program."""
    m = job.model
    lines = [f"mesh (data, model) = {plan.mesh_shape}; {m.dtype} compute, {m.param_dtype} weights"
             f"{', remat' if m.remat else ''}, {m.parameter_partitioning_dims}-D parameter sharding",
             f"{'per chip (GiB)':<12} {'weights':>8} {'trainable':>10} {'batch':>7} {'temporary':>10} "
             f"{'peak':>7} {'HBM':>6}  fits  {'TFLOPs':>9} {'compile s':>10}"]
    for p in plan.programs.values():
        lines.append(f"{p.name:<14} {p.weights / GiB:>6.2f} {p.trainable / GiB:>10.3f} {p.batch / GiB:>7.3f} "
                     f"{p.temporary / GiB:>10.2f} {p.peak / GiB:>7.2f} {plan.hbm_bytes / GiB:>6.1f}  "
                     f"{'yes' if p.fits(plan.hbm_bytes) else 'NO':<4}  {p.flops / 1e12:>9.2f} {p.compile_s:>10.1f}"
                     + ("  (not compiled: weights alone exceed the HBM)" if p.error == planning.WEIGHTS_ALONE else ""))
    return "\n".join(lines)


def _write_json(args, spec, job, plan) -> None:
    if not args.json:
        return
    out = {"accelerator": spec.name, "num_slices": args.num_slices, "chips": spec.chips,
           "devices": spec.chips * args.num_slices, "hosts": spec.hosts * args.num_slices,
           "hbm_bytes_per_chip": spec.hbm_bytes, "kind": job.kind,
           "mesh_shape": list(plan.mesh_shape) if plan else None, "fits": bool(plan and plan.fits),
           "programs": {name: p.to_json(spec.hbm_bytes) for name, p in plan.programs.items()} if plan else {}}
    files.atomic_write(args.json, json.dumps(out, indent=2) + "\n")


def console_main():
    cli.exit_process(cli.main(run, "Compile a run's programs for a TPU slice and report per-chip memory.",
                              add_arguments=add_arguments))


if __name__ == "__main__":
    console_main()
