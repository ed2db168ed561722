"""TPU slices by gcloud name: sizes, hosts and libtpu topologies (devices need libtpu, the rest does not)."""
import pytest

from prompt_tuning_jax import topologies

needs_libtpu = pytest.mark.skipif(not topologies.has_libtpu(),
                                  reason="needs libtpu (the TPU compiler): pip install \"jax[tpu]==<installed jax>\"")


@pytest.mark.parametrize("name, chips, hosts, topology, hbm_gib", [
    ("v4-8", 4, 1, "v4:2x2x1", 32),
    ("v4-16", 8, 2, "v4:2x2x2", 32),
    ("v4-32", 16, 4, "v4:2x2x4", 32),
    ("v4-128", 64, 16, "v4:4x4x4", 32),
    ("v5p-8", 4, 1, "v5:2x2x1", 95),
    ("v5litepod-1", 1, 1, "v5e:1x1", 16),
    ("v5litepod-4", 4, 1, "v5e:2x2", 16),
    ("v5litepod-8", 8, 1, "v5e:2x4", 16),
    ("v5litepod-16", 16, 4, "v5e:4x4", 16),
    ("v6e-8", 8, 1, "v6e:2x4", 32),
    ("v6e-256", 256, 64, "v6e:16x16", 32),
])
def test_gcloud_names_map_to_slices(name, chips, hosts, topology, hbm_gib):
    spec = topologies.accelerator(name)
    assert (spec.chips, spec.hosts, spec.topology) == (chips, hosts, topology)
    assert spec.hbm_bytes == hbm_gib * 2**30
    assert spec.megacore == name.startswith(("v4", "v5p"))
    assert spec.wrap == ((True,) * 3 if name == "v4-128" else (True, True, False) if name == "v6e-256"
                         else (False,) * 3)


@pytest.mark.parametrize("name, message", [
    ("v4-6", r"sizes \(TensorCores\) are v4-8, v4-16"),
    ("v5litepod-3", r"sizes \(chips\) are v5litepod-1, v5litepod-4"),
    ("tpu-8", "use gcloud's names"),
    ("v3-8", "use gcloud's names"),
])
def test_unknown_slices_name_the_valid_ones(name, message):
    with pytest.raises(ValueError, match=message):
        topologies.accelerator(name)


def test_missing_libtpu_names_the_install_command(monkeypatch):
    monkeypatch.setattr(topologies, "has_libtpu", lambda: False)
    with pytest.raises(RuntimeError, match=r'pip install "jax\[tpu\]==\d'):
        topologies.target_devices(topologies.accelerator("v4-8"))


@needs_libtpu
def test_target_devices_have_hosts_and_slices():
    devices = topologies.target_devices(topologies.accelerator("v4-16"))
    assert len(devices) == 8 and {d.platform for d in devices} == {"tpu"}
    assert sorted({d.process_index for d in devices}) == [0, 1]  # two hosts of 4 chips
    two = topologies.target_devices(topologies.accelerator("v4-8"), num_slices=2)
    assert len(two) == 8 and sorted({d.slice_index for d in two}) == [0, 1]
