"""Every shipped gin file parses and builds its objects; the order rule holds."""
import gin
import pytest
from conftest import REPO

from prompt_tuning_jax import cli, run
from prompt_tuning_jax.models import preset

CONFIGS = REPO / "configs"
MODELS = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "models").glob("*.gin")
                if not p.stem.endswith("common"))
PROMPTS = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "prompts").glob("*.gin")
                 if p.stem not in ("common", "linear_head"))
SIZES = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "sizes").glob("*.gin"))
DECODING = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "decoding").glob("*.gin"))
REQUIRED = ["MODEL_DIR='/tmp/x'", "MIXTURE_OR_TASK_NAME='sst2'", "PROMPT_TEXT='classify the sentiment'",
            "PROMPT_FILE='/tmp/p.npy'", "CHECKPOINT_PATH='/tmp/x'", "EVAL_OUTPUT_DIR='/tmp/e'"]


@gin.configurable("capture")
def capture(model=None, prompt=None, optimizer=None, mesh_shape=None, accum=None):
    return model, prompt, optimizer, mesh_shape, accum


def build(files, bindings=()):
    """Parses `files` and evaluates the run-level macros into objects (no weights are loaded)."""
    cli.parse_gin(files, list(REQUIRED) + list(bindings))
    gin.parse_config(["capture.model = %MODEL", "capture.prompt = %PROMPT", "capture.optimizer = %OPTIMIZER",
                      "capture.mesh_shape = %MESH_SHAPE", "capture.accum = %ACCUM_STEPS"])
    try:
        return capture()
    finally:
        gin.clear_config()


def test_there_are_configs_of_every_kind():
    assert len(MODELS) >= 25 and len(PROMPTS) == 5 and SIZES
    assert {p.name for p in (CONFIGS / "runs").glob("*.gin")} == {"prompt_finetune.gin", "prompt_eval.gin",
                                                                   "prompt_infer.gin", "demo.gin"}
    assert len(DECODING) == 3


@pytest.mark.parametrize("model_file", MODELS)
def test_every_model_file_builds(model_file):
    model, prompt, optimizer, mesh, accum = build([model_file, "prompts/random.gin", "runs/prompt_finetune.gin"])
    assert isinstance(model, run.ModelSpec) and isinstance(prompt, run.PromptSpec)
    assert mesh == (-1, 1) and accum == 1 and hasattr(optimizer, "update")
    if "demo" not in model_file:
        assert preset(model.path) is not None  # a released size we know the architecture of
    t5 = "t5" in model_file
    assert prompt.placement == ("prefix" if t5 else "suffix")
    assert prompt.length == (100 if t5 else 8 if "demo" in model_file else 20)


def test_paper_defaults_for_t5():
    cli.parse_gin(["models/t5_1_1_lm100k_base.gin", "prompts/from_class_labels.gin", "runs/prompt_finetune.gin"],
                  REQUIRED)
    try:
        assert gin.query_parameter("ptj.make_optimizer.name") == "adafactor"
        assert gin.query_parameter("ptj.make_optimizer.learning_rate") == 0.3
        assert gin.query_parameter("ptj.make_optimizer.decay_rate") == 0.8
        assert gin.query_parameter("ptj.make_optimizer.weight_decay") == 1e-5
        assert gin.query_parameter("ptj.make_optimizer.multiply_by_parameter_scale") is False
        assert gin.query_parameter("%PROMPT_LENGTH") == 100
    finally:
        gin.clear_config()


@pytest.mark.parametrize("prompt_file", PROMPTS)
def test_every_prompt_file_builds(prompt_file):
    _, prompt, _, _, _ = build(["models/gpt2.gin", prompt_file, "runs/prompt_finetune.gin"])
    assert prompt.init in run.INIT_KINDS and prompt.length == 20


@pytest.mark.parametrize("size_file", SIZES)
def test_sizes_override_model_defaults_even_with_runs_last(size_file):
    model, _, _, mesh, accum = build(["models/t5_1_1_xl.gin", "prompts/random.gin", size_file,
                                      *DECODING[:1], "runs/prompt_finetune.gin"])
    if "model_parallel" in size_file:
        assert mesh == (-1, 8) and model.dtype == "bfloat16" and model.remat
    if "bfloat16" in size_file:
        assert model.dtype == "bfloat16"
    if "accum" in size_file:
        assert accum == 4


@pytest.mark.parametrize("run_file", ["runs/prompt_finetune.gin", "runs/prompt_eval.gin", "runs/prompt_infer.gin"])
def test_run_files_bind_every_required_argument(run_file):
    import inspect

    from prompt_tuning_jax import infer

    cli.parse_gin(["models/gpt2.gin", "prompts/from_class_labels.gin", run_file], REQUIRED)
    try:
        fn, name = {"runs/prompt_finetune.gin": (run.train, "ptj.train"),
                    "runs/prompt_eval.gin": (run.evaluate, "ptj.evaluate"),
                    "runs/prompt_infer.gin": (infer.infer, "ptj.infer")}[run_file]
        required = [p for p, v in inspect.signature(fn).parameters.items() if v.default is inspect.Parameter.empty]
        for param in required:
            gin.query_parameter(f"{name}.{param}")  # raises if unbound
    finally:
        gin.clear_config()


def test_demo_run_file_is_complete():
    model, prompt, *_ = build(["runs/demo.gin"])
    assert prompt.head == "linear" and prompt.placement == "suffix"
