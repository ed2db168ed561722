"""Every shipped gin file parses and builds its objects; the order rule holds.

Layout (prompt_tuning_jax/configs/): models/ (family files *_prompt.gin, the shared t5_common.gin and
combined family+size files), models/sizes/, models/decoding/, prompts/, runtime/ and runs/.
"""
import inspect
import pathlib

import gin
import pytest

from prompt_tuning_jax import cli, experiments
from prompt_tuning_jax.experiments.specs import INIT_KINDS
from prompt_tuning_jax.models import HUB_IDS, preset

CONFIGS = pathlib.Path(cli.CONFIG_DIR)


def _files(folder, keep=lambda stem: True):
    return sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / folder).glob("*.gin") if keep(p.stem))


# Combined family + size files (the old names: models/gpt2.gin, models/t5_1_1_lm100k_base.gin, ...).
MODELS = _files("models", lambda s: not s.endswith("_prompt") and not s.endswith("_common"))
# Family files (models/<family>_prompt.gin): pair one with a size from models/sizes/.
FAMILIES = [pathlib.PurePath(f).stem.removesuffix("_prompt") for f in _files("models", lambda s: s.endswith("_prompt"))]
SIZES = _files("models/sizes")
PROMPTS = _files("prompts", lambda s: s not in ("common", "linear_head"))
RUNTIME = _files("runtime")
DECODING = _files("models/decoding")
RUNS = _files("runs")
REQUIRED = ["MODEL_DIR='/tmp/x'", "MIXTURE_OR_TASK_NAME='sst2'", "PROMPT_TEXT='classify the sentiment'",
            "PROMPT_FILE='/tmp/p.npy'", "CHECKPOINT_PATH='/tmp/x'", "EVAL_OUTPUT_DIR='/tmp/e'",
            "EMBEDDING_FILE='/tmp/embeddings.npy'", "WAYWARD_PROMPT='classify the sentiment'"]
FAMILY_SIZES = [(family, size) for family in FAMILIES for size in HUB_IDS[family]]
# The demo model file builds the demo checkpoint (pretrained in code, ~20 s) unless it is cached.
MODEL_PARAMS = [pytest.param(f, marks=pytest.mark.slow) if "demo" in f else f for f in MODELS]


@gin.configurable("capture")
def capture(model=None, prompt=None, optimizer=None, mesh_shape=None, accum=None):
    return model, prompt, optimizer, mesh_shape, accum


@gin.configurable("capture_decoding")
def capture_decoding(spec=None):
    return spec


def parse(files, bindings=()):
    """cli.parse_gin with the REQUIRED macros these files use (a binding of an unused macro is refused)."""
    cli.register_configurables()
    gin.clear_config()
    gin.parse_config_files_and_bindings([cli.find_gin_file(f) for f in files], [], finalize_config=False)
    used = gin.config_str()
    cli.parse_gin(files, [b for b in REQUIRED if f"%{b.split('=')[0]}" in used] + list(bindings))


def build(files, bindings=()):
    """Parses `files` and evaluates the run-level macros into objects (no weights are loaded)."""
    parse(files, bindings)
    gin.parse_config(["capture.model = %MODEL", "capture.prompt = %PROMPT", "capture.optimizer = %OPTIMIZER",
                      "capture.mesh_shape = %MESH_SHAPE", "capture.accum = %ACCUM_STEPS"])
    try:
        return capture()
    finally:
        gin.clear_config()


def test_there_are_configs_of_every_kind():
    assert len(MODELS) >= 25 and RUNTIME
    assert {pathlib.PurePath(p).stem for p in PROMPTS} == {
        "random", "from_class_labels", "from_class_labels_numpy", "from_file", "from_sampled_vocab",
        "from_sampled_vocab_numpy", "from_string", "wayward", "multitask", "per_layer", "ptuning", "mpt"}
    assert set(FAMILIES) == set(HUB_IDS) == {"gpt2", "t5", "t5_1_1", "t5_1_1_lm100k", "flan_t5", "mt5"}
    assert {f"models/sizes/{s}.gin" for sizes in HUB_IDS.values() for s in sizes} == set(SIZES)
    assert {pathlib.PurePath(p).name for p in RUNS} == {"prompt_finetune.gin", "prompt_eval.gin",
                                                        "prompt_infer.gin", "demo.gin", "demo_llama.gin"}
    assert len(DECODING) == 3
    assert {p.stem for p in (CONFIGS / "runtime").glob("*.gin")} == {"bfloat16", "model_parallel_8",
                                                                     "grad_accum_4", "parameter_partitioning_2d"}
    for folder in [CONFIGS, *(p for p in CONFIGS.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        assert (folder / "__init__.py").exists(), folder  # shipped as package data


@pytest.mark.parametrize("model_file", MODEL_PARAMS)
def test_every_model_file_builds(model_file):
    model, prompt, optimizer, mesh, accum = build([model_file, "prompts/random.gin", "runs/prompt_finetune.gin"])
    assert isinstance(model, experiments.ModelSpec) and isinstance(prompt, experiments.PromptSpec)
    assert mesh == (-1, 1) and accum == 1 and hasattr(optimizer, "update")
    if "demo" not in model_file:
        assert preset(model.path) is not None  # a released size we know the architecture of
    t5 = "t5" in model_file
    assert prompt.placement == ("prefix" if t5 else "suffix")
    assert prompt.length == (100 if t5 else 8 if "demo" in model_file else 20)


@pytest.mark.parametrize("family,size", FAMILY_SIZES)
def test_every_family_file_builds_with_every_size_it_has(family, size):
    model, prompt, optimizer, mesh, accum = build([f"models/{family}_prompt.gin", f"models/sizes/{size}.gin",
                                                   "prompts/random.gin", "runs/prompt_finetune.gin"])
    assert model.path == HUB_IDS[family][size]
    assert preset(model.path) is not None
    assert mesh == (-1, 1) and accum == 1 and hasattr(optimizer, "update")
    assert prompt.placement == ("suffix" if family == "gpt2" else "prefix")


@pytest.mark.parametrize("family,default", [("gpt2", "small"), ("t5", "base"), ("t5_1_1", "base"),
                                            ("t5_1_1_lm100k", "base"), ("flan_t5", "base")])
def test_family_file_alone_picks_its_default_size(family, default):
    model, *_ = build([f"models/{family}_prompt.gin", "prompts/random.gin", "runs/prompt_finetune.gin"])
    assert model.path == HUB_IDS[family][default]


def test_combined_files_name_their_hub_id():
    for family in FAMILIES:
        for size, hub in HUB_IDS[family].items():
            name = family if (family, size) == ("gpt2", "small") else f"{family}_{size}"
            model, *_ = build([f"models/{name}.gin", "prompts/random.gin", "runs/prompt_finetune.gin"])
            assert model.path == hub, name


@pytest.mark.parametrize("files,want", [
    (["models/t5_1_1_lm100k_base.gin", "models/sizes/xxl.gin"], "google/t5-xxl-lm-adapt"),
    (["models/gpt2.gin", "models/sizes/large.gin"], "gpt2-large"),
    (["models/t5_base.gin", "models/sizes/11b.gin"], "t5-11b"),
])
def test_a_size_file_after_a_combined_file_wins(files, want):
    model, *_ = build([*files, "prompts/random.gin", "runs/prompt_finetune.gin"])
    assert model.path == want


def test_a_size_the_family_does_not_have_is_a_clear_error():
    with pytest.raises(ValueError, match="gpt2 has no size 'xxl'"):
        build(["models/gpt2_prompt.gin", "models/sizes/xxl.gin", "prompts/random.gin", "runs/prompt_finetune.gin"])


def test_an_explicit_checkpoint_path_beats_the_size():
    model, *_ = build(["models/t5_1_1_lm100k_base.gin", "prompts/random.gin", "runs/prompt_finetune.gin"],
                      ["INITIAL_CHECKPOINT_PATH='/ckpt/t5'"])
    assert model.path == "/ckpt/t5"


def test_paper_defaults_for_t5():
    parse(["models/t5_1_1_lm100k_base.gin", "prompts/from_class_labels.gin", "runs/prompt_finetune.gin"])
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
    assert prompt.init in INIT_KINDS and prompt.length == 20


@pytest.mark.parametrize("runtime_file", RUNTIME)
def test_runtime_overrides_model_defaults_even_with_runs_last(runtime_file):
    model, _, _, mesh, accum = build(["models/t5_1_1_xl.gin", "prompts/random.gin", runtime_file,
                                      *DECODING[:1], "runs/prompt_finetune.gin"])
    if "model_parallel" in runtime_file:
        assert mesh == (-1, 8) and model.dtype == "bfloat16" and model.remat
        assert model.param_dtype == "bfloat16"
    if "bfloat16" in runtime_file:
        assert model.dtype == "bfloat16"
    if "accum" in runtime_file:
        assert accum == 4
    if "partitioning_2d" in runtime_file:
        assert model.parameter_partitioning_dims == 2 and dict(model.rules)["embed"] == "data"


@pytest.mark.parametrize("decoding_file", DECODING)
def test_decoding_files_build_a_decode_spec_for_infer(decoding_file):
    parse(["models/gpt2.gin", "prompts/random.gin", decoding_file, "runs/prompt_infer.gin"])
    gin.parse_config(["capture_decoding.spec = %DECODING"])
    try:
        spec = capture_decoding()
    finally:
        gin.clear_config()
    assert isinstance(spec, experiments.DecodeSpec)
    method = {"greedy": "greedy", "beam": "beam", "sampling": "sample"}[pathlib.PurePath(decoding_file).stem]
    assert spec.method == method


@pytest.mark.parametrize("run_file,fn,name", [
    ("runs/prompt_finetune.gin", experiments.train, "ptj.train"),
    ("runs/prompt_eval.gin", experiments.evaluate, "ptj.evaluate"),
    ("runs/prompt_infer.gin", experiments.infer, "ptj.infer"),
])
def test_run_files_bind_every_required_argument(run_file, fn, name):
    parse(["models/gpt2.gin", "prompts/from_class_labels.gin", run_file])
    try:
        required = [p for p, v in inspect.signature(fn).parameters.items() if v.default is inspect.Parameter.empty]
        assert required
        for param in required:
            gin.query_parameter(f"{name}.{param}")  # raises if unbound
    finally:
        gin.clear_config()


@pytest.mark.slow  # builds the demo checkpoint unless it is cached
def test_demo_run_file_is_complete():
    model, prompt, *_ = build(["runs/demo.gin"])
    assert prompt.head == "linear" and prompt.placement == "suffix"
