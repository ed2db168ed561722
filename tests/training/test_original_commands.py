"""The original library's commands as written: its gin paths, T5X's flags and settings, and its two SST-2
scripts (tests/training/fixtures/original_scripts, edited only in module names and paths) run end to end
against a random T5X checkpoint written by scripts/make_random_checkpoint.py --format t5x."""
import json
import os
import subprocess
import sys

import gin
import pytest

from prompt_tuning_jax import cli, compat, experiments
from prompt_tuning_jax.data import registry
from tests.helpers import REPO, cli_env, shared_path

SCRIPTS = REPO / "tests" / "training" / "fixtures" / "original_scripts"
ORIGINAL = "prompt_tuning/configs/"
TINY = ["d_model=16", "d_ff=32", "d_kv=8", "num_heads=2", "num_layers=2", "num_decoder_layers=2"]


# --- T5X settings on the command line -------------------------------------------------------

@pytest.mark.parametrize("binding,command,ours", [
    ("utils.DatasetConfig.split = 'validation'", "eval", "EVAL_SPLIT = 'validation'"),
    ("utils.DatasetConfig.batch_size = 128", "eval", "BATCH_SIZE = 128"),
    ("train/utils.DatasetConfig.batch_size = 64", "train", "BATCH_SIZE = 64"),
    ("train/utils.DatasetConfig.split = 'dev'", "train", "TRAIN_SPLIT = 'dev'"),
    ("utils.SaveCheckpointConfig.keep = 1", "train", "KEEP_CHECKPOINTS = 1"),
    ("utils.SaveCheckpointConfig.period = 500", "train", "CHECKPOINT_PERIOD = 500"),
    ("partitioning.PjitPartitioner.num_partitions = 4", "train", "MESH_SHAPE = (-1, 4)"),
    ("partitioning.PjitPartitioner.model_parallel_submesh = (4, 4, 1, 2)", "train", "MESH_SHAPE = (-1, 32)"),
    ("partitioning.PjitPartitioner.model_parallel_submesh = None", "eval", "MESH_SHAPE = (-1, 1)"),
])
def test_t5x_settings_become_our_macros_and_say_so(capsys, binding, command, ours):
    assert compat.translate_bindings([binding], command) == [ours]
    assert f"-> {ours}" in capsys.readouterr().err


def test_our_own_bindings_pass_unchanged():
    ours = ["BATCH_SIZE = 8", "ptj.DataSpec.seed = 3", "train/ptj.TrainSpec.steps = 2"]
    assert compat.translate_bindings(ours, "train") == ours


@pytest.mark.parametrize("binding,command,message", [
    ("utils.DatasetConfig.batch_size = 128", "train", "does nothing in T5X's train"),
    ("adafactor.Adafactor.decay_rate = 0.8", "train", "no counterpart here"),
    ("partitioning.PjitPartitioner.model_parallel_submesh = (4, 4)", "train", "(x, y, z, cores)"),
    ("partitioning.PjitPartitioner.num_partitions = 0", "eval", "positive integer"),
])
def test_t5x_settings_that_do_not_map_are_refused(binding, command, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compat.translate_bindings([binding], command)


# --- gin files by the original's paths --------------------------------------------------------

def mirrored_files():
    root = os.path.join(compat.ORIGINAL_DIR, ORIGINAL)
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root)
                  for f in names if f.endswith(".gin"))


def test_the_original_gin_files_the_issue_names_are_mirrored():
    mirrored = set(mirrored_files())
    sizes = ("small", "base", "large", "xl", "xxl")
    expected = {f"models/{family}_{size}_prompt.gin" for family in ("t5_1_1", "mt5") for size in sizes}
    expected |= {f"prompts/{p}.gin" for p in ("from_class_labels", "from_class_labels_numpy", "from_file",
                                              "from_sampled_vocab", "from_sampled_vocab_numpy")}
    expected |= {"runs/prompt_finetune.gin", "runs/prompt_eval.gin", "runs/prompt_infer.gin",
                 "models/decoding/beam_search.gin", "models/decoding/nucleus_sampling.gin"}
    assert expected <= mirrored, sorted(expected - mirrored)


def macro(name):
    return gin.query_parameter(f"{name}/macro.value")


def parse(files, bindings, command):
    cli.parse_gin([ORIGINAL + f for f in files], bindings, command=command)


def test_the_original_training_command_configures_the_paper_and_t5x_defaults():
    parse(["models/t5_1_1_base_prompt.gin", "prompts/from_class_labels.gin", "runs/prompt_finetune.gin"],
          ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'taskless_glue_sst2_v200_examples'",
           "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}", "TRAIN_STEPS = 1_150_000",
           "CLASS_LABELS = ['positive', 'negative']"], "train")
    model, prompt = gin.query_parameter("ptj.train.model"), gin.query_parameter("ptj.train.prompt")
    assert macro("BATCH_SIZE") == 128 and macro("KEEP_CHECKPOINTS") == 1
    assert macro("DROPOUT_RATE") == 0.1 and macro("EVAL_PERIOD") == 1000
    spec = cli.configured(experiments.PromptSpec)()
    assert spec.init == "class_labels" and spec.length == 100 and spec.class_labels == ["positive", "negative"]
    model_spec = cli.configured(experiments.ModelSpec)()
    assert model_spec.path == "google/t5-v1_1-base", model  # INITIAL_CHECKPOINT_PATH defaults to the size's
    assert prompt is not None


def test_the_original_eval_command_reads_the_model_from_checkpoint_path():
    parse(["models/t5_1_1_base_prompt.gin", "runs/prompt_eval.gin"],
          compat.translate_bindings(["utils.DatasetConfig.split = 'validation'"], "eval")
          + ["MIXTURE_OR_TASK_NAME = 'sst2'", "CHECKPOINT_PATH = '/ckpt/checkpoint_1100000'",
             "EVAL_OUTPUT_DIR = '/tmp/e'", "PROMPT_FILE = '/p/sst2.npy'",
             "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}"], "eval")
    assert cli.configured(experiments.ModelSpec)().path == "/ckpt/checkpoint_1100000"
    prompt = cli.configured(experiments.PromptSpec)()
    assert prompt.init == "file" and prompt.file == "/p/sst2.npy"
    assert gin.query_parameter("ptj.evaluate.checkpoint_path") is None
    assert macro("EVAL_SPLIT") == "validation" and macro("BATCH_SIZE") == 32


@pytest.mark.parametrize("decoding,method", [("beam_search", "beam"), ("nucleus_sampling", "sample")])
def test_the_original_decoding_files(decoding, method):
    parse(["models/mt5_small_prompt.gin", f"models/decoding/{decoding}.gin", "runs/prompt_infer.gin"],
          ["MIXTURE_OR_TASK_NAME = 'sst2'", "CHECKPOINT_PATH = '/c'", "INFER_OUTPUT_DIR = '/o'",
           "PROMPT_FILE = '/p.npy'"], "infer")
    decode = cli.configured(experiments.DecodeSpec)()
    assert decode.method == method
    assert (decode.num_beams == 4) if method == "beam" else (decode.top_p == 0.9 and decode.top_k == 0)
    assert cli.configured(experiments.ModelSpec)().path == "/c"
    assert gin.query_parameter("ptj.hub_id.family") == "mt5"


TRAIN_REQUIRED = ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'sst2'", "TRAIN_STEPS = 10",
                  "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 4}"]


@pytest.mark.parametrize("name", mirrored_files())
def test_every_mirrored_file_parses_in_its_place(name):
    """Each file of the mirror, with the model / prompt / run files a command adds around it."""
    model = name if name.startswith("models/") and "/" not in name[len("models/"):] else "models/t5_1_1_base_prompt.gin"
    files = [model, *([name] if name.startswith(("prompts/", "models/sizes/", "models/decoding/")) else []),
             name if name.startswith("runs/") else "runs/prompt_finetune.gin"]
    if name.startswith("runs/") and name != "runs/prompt_finetune.gin":
        bindings = ["MIXTURE_OR_TASK_NAME = 'sst2'", "CHECKPOINT_PATH = '/c'", "PROMPT_FILE = '/p.npy'",
                    "INFER_OUTPUT_DIR = '/o'" if "infer" in name else "EVAL_OUTPUT_DIR = '/o'"]
    else:
        bindings = TRAIN_REQUIRED + (["EMBEDDING_FILE = '/e.npy'"] if "numpy" in name else []) + (
            ["PROMPT_FILE = '/p.npy'"] if "from_file" in name else [])
    parse(files, bindings, "train" if "finetune" in files[-1] else "eval")
    assert cli.configured(experiments.ModelSpec)().path.startswith(("google/", "/c"))


def test_an_original_gin_file_with_no_counterpart_names_the_ones_that_map():
    with pytest.raises(FileNotFoundError, match=r"mt5_80b_prompt.gin: the original library's file has no "
                                                r"counterpart here; the ones that map are .*t5_1_1_base_prompt"):
        cli.find_gin_file(ORIGINAL + "models/mt5_80b_prompt.gin")


# --- MIXTURE_OR_TASK_MODULE ---------------------------------------------------------------------

def test_mixture_or_task_module_registers_a_users_tasks(tmp_path, monkeypatch):
    (tmp_path / "my_ptj_tasks.py").write_text(
        "from prompt_tuning_jax.data import get_task, register_task\n"
        "import dataclasses\n"
        "register_task(dataclasses.replace(get_task('demo_sentiment'), name='my_sentiment'), overwrite=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = experiments.DataSpec(task="my_sentiment", module="my_ptj_tasks").tasks()
    assert [t.name for t in tasks] == ["my_sentiment"]


def test_mixture_or_task_module_of_the_original_is_built_in(capsys):
    tasks = experiments.DataSpec(task="taskless_glue_sst2_v200_examples", module="prompt_tuning.data.glue",
                                 use_cached=True).tasks()
    err = capsys.readouterr().err
    assert tasks[0].label_names == ("negative", "positive")
    assert "prompt_tuning.data.glue not imported: its tasks are built in" in err
    assert "USE_CACHED_TASKS=True: there is no seqio cache here" in err


def test_an_unimportable_mixture_or_task_module_is_one_clear_error():
    with pytest.raises(ValueError, match=r"MIXTURE_OR_TASK_MODULE 'no_such_tasks' cannot be imported"):
        registry.import_task_module("no_such_tasks")


# --- the original's SST-2 scripts, end to end -------------------------------------------------

def hf_home_with_t5_tokenizer(home):
    """A Hugging Face cache holding google/t5-v1_1-base's tokenizer (the real T5 vocabulary), as a TPU VM
    that has downloaded it once would."""
    from prompt_tuning_jax.models import preset

    snapshot = home / "hub" / "models--google--t5-v1_1-base" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    for f in shared_path("t5_tokenizer").iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot / "config.json").write_text(json.dumps(preset("google/t5-v1_1-base").to_hf()))
    (home / "hub" / "models--google--t5-v1_1-base" / "refs").mkdir()
    (home / "hub" / "models--google--t5-v1_1-base" / "refs" / "main").write_text("c" * 40)
    return home


def run_script(name, env, *args):
    return subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)


@pytest.mark.slow
def test_the_original_sst2_scripts_run_as_written(tmp_path):
    checkpoint = tmp_path / "t5_1_1_lm100k_base" / "checkpoint_1149997"
    made = subprocess.run([sys.executable, "scripts/make_random_checkpoint.py", "t5_1_1_lm100k_base", str(checkpoint),
                           "--format", "t5x", "--step", "1149997", *[f"--override={o}" for o in TINY]],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    env = {**cli_env(), "HF_HOME": str(hf_home_with_t5_tokenizer(tmp_path / "hf")), "HF_HUB_OFFLINE": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "PRETRAINED_MODEL": str(checkpoint)}
    env.pop("HF_HUB_CACHE", None)
    train = run_script("sst2-demo.sh", env, tmp_path / "model_dir", tmp_path / "tfds")
    assert train.returncode == 0, train.stderr[-3000:]
    print(train.stdout, train.stderr, sep="\n")
    assert ("t5x: the checkpoint is at step 1,149,997, so TRAIN_STEPS=1,150,000 runs 3 steps of prompt tuning"
            in train.stderr)
    assert "--tfds_data_dir" in train.stderr and "prompt_tuning.data.glue not imported" in train.stderr
    assert train.stdout.splitlines()[-1].startswith("trained 3 steps; prompt: ")
    prompt = tmp_path / "model_dir" / "prompts" / "prompt_latest.npy"

    evaluate = run_script("sst2-demo-eval.sh", {**env, "PROMPT_FILE": str(prompt)}, tmp_path / "eval", tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    print(evaluate.stdout, evaluate.stderr, sep="\n")
    assert "t5x: --gin.utils.DatasetConfig.batch_size=128 -> BATCH_SIZE = 128" in evaluate.stderr
    assert evaluate.stdout.splitlines()[-1].startswith("accuracy ")
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 872  # GLUE SST-2's validation split, as utils.DatasetConfig.split says
