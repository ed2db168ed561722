"""Hub task names offline (HF_DATASETS_OFFLINE=1): read from a warm `datasets` cache, else one clear error.

The warm cache is built here in the layout an online `load_dataset("nyu-mll/glue", "cola")` leaves
(`<cache>/nyu-mll___glue/cola/0.0.0/<commit>/glue-validation.arrow` and `dataset_info.json`), by a tiny
builder with the hub data set's repo id. `datasets` reads HF_DATASETS_OFFLINE and HF_DATASETS_CACHE when it
is imported, so `offline` sets its `config` attributes as well as the variables.
"""
import datasets
import pytest

from prompt_tuning_jax.data import HubError, get_task

COLA = {"train": [("the dog barked .", 1), ("barked dog the .", 0), ("it rains .", 1)],
        "validation": [("the cat sat .", 1), ("cat the sat .", 0)]}


class TinyGlue(datasets.GeneratorBasedBuilder):
    """GLUE's CoLA config with a few rows: its features and split names as on the hub."""

    BUILDER_CONFIGS = [datasets.BuilderConfig(name="cola")]

    def _info(self):
        return datasets.DatasetInfo(features=datasets.Features({
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["unacceptable", "acceptable"]),
            "idx": datasets.Value("int32"),
        }))

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=split, gen_kwargs={"rows": rows}) for split, rows in COLA.items()]

    def _generate_examples(self, rows):
        for idx, (sentence, label) in enumerate(rows):
            yield idx, {"sentence": sentence, "label": label, "idx": idx}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A datasets cache holding nyu-mll/glue's cola config, as an online run would have left it."""
    cache = tmp_path_factory.mktemp("datasets_cache")
    builder = TinyGlue(cache_dir=str(cache), dataset_name="glue", repo_id="nyu-mll/glue", config_name="cola",
                       hash="0123456789abcdef")  # the hub's commit stands in the hash folder
    builder.download_and_prepare()
    assert (cache / "nyu-mll___glue" / "cola" / "0.0.0" / "0123456789abcdef" / "glue-validation.arrow").is_file()
    return cache


def offline(monkeypatch, cache):
    """HF_DATASETS_OFFLINE=1 with `cache` as HF_DATASETS_CACHE, for this process's already imported `datasets`."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


def test_a_hub_task_loads_from_a_warm_cache_offline(warm_cache, monkeypatch, caplog):
    offline(monkeypatch, warm_cache)
    examples = get_task("cola").load("validation")
    assert [(e["inputs"], e["targets"], e["label"]) for e in examples] == [
        ("sentence: the cat sat .", "acceptable", 1), ("sentence: cat the sat .", "unacceptable", 0)]
    assert [e["label"] for e in get_task("cola").load("train")] == [1, 0, 1]
    assert "Using the latest cached version of the dataset" in caplog.text  # datasets' own fallback


def test_a_hub_task_without_a_cache_is_one_line_naming_the_data_set_and_data_dir(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path / "empty_cache")
    with pytest.raises(HubError) as info:
        get_task("cola").load("validation")
    message = str(info.value)
    assert "\n" not in message and "Couldn't reach" not in message, message  # ours, not datasets' words
    for part in ("task glue_cola", "nyu-mll/glue/cola split 'validation'",
                 f"not in the datasets cache {tmp_path / 'empty_cache'}", "HF_DATASETS_OFFLINE=1",
                 "TASK_OVERRIDES={'data_dir': '<folder with dev.tsv>'}", "$PTJ_SHARED_DATA/cola"):
        assert part in message, message
    # What it says works: a folder with dev.tsv, as data_dir.
    (tmp_path / "cola").mkdir()
    (tmp_path / "cola" / "dev.tsv").write_text("sentence\tlabel\nthe cat sat .\t1\n")
    assert [e["label"] for e in get_task("cola", data_dir=str(tmp_path / "cola")).load("validation")] == [1]


def test_a_cache_of_other_configs_lists_them(warm_cache, monkeypatch):
    offline(monkeypatch, warm_cache)
    with pytest.raises(HubError) as info:
        get_task("sst2", source="hf").load("validation")
    message = str(info.value)
    assert "\n" not in message and "nyu-mll/glue/sst2 split 'validation'" in message, message
    assert "it holds only configs ['cola']" in message and "<folder with test.tsv>" in message, message
