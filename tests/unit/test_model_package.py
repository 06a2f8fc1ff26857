"""Model packages: save → load → predict, and refusal of packages that cannot be honoured."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.blocks import Convolution, ResidualUnit

from tests.models import SHIPPED_INPUTS, TINY, tiny_package, with_fallback, with_norms
from tumorseg.errors import ModelError
from tumorseg.imaging.preprocess import ModelInput
from tumorseg.labels import labels_to_regions, regions_to_labels, volumes_ml
from tumorseg.model.fused import _FusedConvolution, _FusedResidualUnit, _SubPixel
from tumorseg.model.network import build_network
from tumorseg.model.package import ModelManifest, read_manifest
from tumorseg.model.predictor import Predictor
from tumorseg.sequences import ALL_FOUR, SEQUENCES, InputPolicy


def test_round_trip_and_predict(tmp_path: Path) -> None:
    predictor = Predictor.from_package(tiny_package(tmp_path / "pkg"))
    assert predictor.name == "tiny"
    manifest = read_manifest(tmp_path / "pkg")
    assert manifest.versions["torch"] == torch.__version__
    array = np.random.default_rng(0).normal(size=(4, 40, 36, 20)).astype(np.float32)
    probabilities = predictor.predict(ModelInput(array=array, grid=sitk.Image([40, 36, 20], sitk.sitkUInt8)))
    assert probabilities.shape == (3, 40, 36, 20) and probabilities.dtype == np.float32
    again = predictor.predict(ModelInput(array=array, grid=sitk.Image([40, 36, 20], sitk.sitkUInt8)))
    assert np.array_equal(probabilities, again)
    # A volume that fits one window: the probabilities are the loaded network's sigmoid, channel for channel.
    small = np.ascontiguousarray(array[:, :32, :32, :16])
    with torch.inference_mode():
        direct = torch.sigmoid(predictor.network(torch.from_numpy(small[None])))[0].numpy()
    windowed = predictor.predict(ModelInput(array=small, grid=sitk.Image([32, 32, 16], sitk.sitkUInt8)))
    assert np.ptp(direct) > 0.05  # not a constant output, so a permuted or shifted channel would show
    np.testing.assert_allclose(windowed, direct, atol=1e-5)
    assert manifest.min_enhancing_ml == 0.0  # the default: every enhancing voxel kept


def test_the_enhancing_minimum_travels_in_the_manifest(tmp_path: Path) -> None:
    package = tiny_package(tmp_path / "pkg")
    data = json.loads((package / "model.json").read_text())
    data["output"]["min_enhancing_ml"] = 0.25
    (package / "model.json").write_text(json.dumps(data))
    manifest = read_manifest(package)
    assert manifest.min_enhancing_ml == 0.25 and manifest.to_json()["output"]["min_enhancing_ml"] == 0.25

    # Predictor.mask (what the service and the evaluation use) applies the package's threshold and minimum
    from tumorseg.imaging.postprocess import to_reference_mask

    grid = sitk.Image([20, 20, 10], sitk.sitkUInt8)
    probabilities = np.zeros((3, 20, 20, 10), np.float32)
    probabilities[:, 5:10, 5:10, 2:7] = 0.9  # 125 voxels of 1 mm³ in every region: 0.125 mL of ET
    mask = sitk.GetArrayFromImage(Predictor.from_package(package).mask(probabilities, grid, grid))
    assert set(np.unique(mask)) == {0, 1}  # ET under 0.25 mL became necrotic core
    assert np.array_equal(
        mask, sitk.GetArrayFromImage(to_reference_mask(probabilities, grid, grid, min_enhancing_ml=0.25))
    )

    del data["output"]["min_enhancing_ml"]  # packages written before the key existed
    (package / "model.json").write_text(json.dumps(data))
    assert read_manifest(package).min_enhancing_ml == 0.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 99}, "format_version"),
        ({"output": {"activation": "softmax", "regions": ["tc", "wt", "et"]}}, "sigmoid"),
        ({"labels": {"1": "a", "2": "b", "3": "c"}}, "BraTS"),
        ({"architecture": {"name": "os.system", "args": TINY}}, "unknown architecture"),
        ({"preprocessing": {"channels": ["flair", "t1"]}}, "inputs name"),
        ({"inference": {"roi_size": [33, 32, 32]}}, "divide"),
    ],
)
def test_packages_that_cannot_be_honoured_are_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        Predictor.from_package(tiny_package(tmp_path / "pkg", **changes))


def test_missing_package_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="TUMORSEG_MODEL_PATH"):
        Predictor.from_package(tmp_path / "nothing")
    package = tiny_package(tmp_path / "pkg")
    (package / "model.pt").unlink()
    with pytest.raises(ModelError, match="weights"):
        Predictor.from_package(package)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    package = tiny_package(tmp_path / "pkg")
    torch.save({"nonsense": torch.zeros(1)}, package / "model.pt")
    with pytest.raises(ModelError, match="do not fit"):
        Predictor.from_package(package)


def test_labels_and_regions_round_trip() -> None:
    labels = np.array([0, 1, 2, 4, 0, 4], np.uint8)
    regions = labels_to_regions(labels)
    assert regions.tolist() == [
        [False, True, False, True, False, True],  # TC
        [False, True, True, True, False, True],  # WT
        [False, False, False, True, False, True],  # ET
    ]
    assert np.array_equal(regions_to_labels(regions), labels)
    # ET outside WT is still tumour; TC outside WT likewise.
    odd = np.array([[False, True], [False, False], [True, False]])
    assert regions_to_labels(odd).tolist() == [4, 1]
    assert volumes_ml(labels, 2.0) == {"tc": 0.006, "wt": 0.008, "et": 0.004, "ncr": 0.002, "ed": 0.002}


def test_threads_follow_the_cpus_the_process_may_use() -> None:
    import os

    import SimpleITK as sitk
    import torch

    from tumorseg.model.device import configure_threads, usable_cpus

    cpus = usable_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        assert configure_threads(1) == 1
        assert torch.get_num_threads() == 1 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def test_the_input_policy_travels_in_the_manifest_and_old_packages_need_all_four(tmp_path: Path) -> None:
    inputs = {"required": ["t1ce"], "optional": ["flair", "t1", "t2"], "any_of": [["flair", "t2"]]}
    manifest = read_manifest(tiny_package(tmp_path / "optional", inputs=inputs))
    assert manifest.inputs == InputPolicy.from_json(inputs) and manifest.to_json()["inputs"] == inputs
    assert (
        manifest.inputs.problem(["t1ce", "t1"]) is not None
        and manifest.inputs.problem(["t1ce", "t2"]) is None
    )
    old = tmp_path / "old"
    tiny_package(old)
    data = json.loads((old / "model.json").read_text())
    del data["inputs"]  # a package written before the key existed
    (old / "model.json").write_text(json.dumps(data))
    assert read_manifest(old).inputs == ALL_FOUR
    with pytest.raises(ModelError, match="cannot be used"):
        read_manifest(tiny_package(tmp_path / "wrong", inputs={"required": ["t1ce"], "optional": ["t1"]}))


def test_a_fallback_network_segments_only_the_inputs_that_lack_a_sequence(tmp_path: Path) -> None:
    plain = Predictor.from_package(tiny_package(tmp_path / "plain"))
    package = with_fallback(tiny_package(tmp_path / "pkg"))
    manifest = read_manifest(package)
    assert manifest.fallback is not None and manifest.fallback.weights == "fallback.pt"
    assert ModelManifest.from_json(manifest.to_json(), package) == manifest
    predictor = Predictor.from_package(package)
    assert predictor.fallback is not None
    array = np.random.default_rng(0).normal(size=(4, 32, 32, 16)).astype(np.float32)
    grid = sitk.Image([32, 32, 16], sitk.sitkUInt8)
    complete = ModelInput(array=array, grid=grid)
    # All four: the main network, exactly what the package without a fallback gives.
    assert predictor.network_for(complete) == "main" and manifest.network_for(SEQUENCES) == "main"
    assert np.array_equal(predictor.predict(complete), plain.predict(complete))
    # T2 missing (its channel zero, as prepare() leaves it): the fallback network's sigmoid.
    without_t2 = array.copy()
    without_t2[SEQUENCES.index("t2")] = 0
    lacking = ModelInput(array=without_t2, grid=grid, present=("flair", "t1", "t1ce"))
    assert predictor.network_for(lacking) == "fallback"
    with torch.inference_mode():
        direct = torch.sigmoid(predictor.fallback(torch.from_numpy(without_t2[None])))[0].numpy()
    np.testing.assert_allclose(predictor.predict(lacking), direct, atol=1e-5)
    assert not np.allclose(predictor.predict(lacking), plain.predict(lacking), atol=1e-3)
    # Without a fallback, the one network serves both.
    assert plain.network_for(lacking) == "main"
    calls: list[str] = []
    for name, network in (("main", predictor.network), ("fallback", predictor.fallback)):
        network.register_forward_hook(lambda *_, name=name: calls.append(name))
    predictor.warm_up()
    assert sorted(set(calls)) == [
        "fallback",
        "main",
    ]  # the first request of either kind is not the first call


def test_a_fallback_that_could_never_run_or_is_missing_is_refused(tmp_path: Path) -> None:
    package = with_fallback(tiny_package(tmp_path / "pkg"))
    data = json.loads((package / "model.json").read_text())
    del data["inputs"]  # all four required: no study would ever reach the fallback
    (package / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="never run"):
        read_manifest(package)
    for wrong in (None, "fallback.pt", {"weights": "model.pt"}):  # not a block, or the main weights again
        data = json.loads((with_fallback(tiny_package(tmp_path / "wrong")) / "model.json").read_text())
        data["fallback"] = wrong
        (tmp_path / "wrong" / "model.json").write_text(json.dumps(data))
        with pytest.raises(ModelError, match="cannot be used"):
            read_manifest(tmp_path / "wrong")
    gone = with_fallback(tiny_package(tmp_path / "gone"))
    (gone / "fallback.pt").unlink()
    with pytest.raises(ModelError, match="fallback.pt is missing"):
        Predictor.from_package(gone)


def _sigmoid(network: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(network(torch.from_numpy(array[None])))[0].numpy()


def test_norms_give_the_network_the_batch_norm_statistics_of_the_missing_set(tmp_path: Path) -> None:
    package = with_norms(with_fallback(tiny_package(tmp_path / "pkg", norm="BATCH")), keys=("t2", "t1+t2"))
    manifest = read_manifest(package)
    assert manifest.fallback is not None and manifest.fallback.norms == "fallback_norms.pt"
    assert ModelManifest.from_json(manifest.to_json(), package) == manifest
    predictor = Predictor.from_package(package)
    assert sorted(predictor.variants) == ["fallback/t1+t2", "fallback/t2"]
    stats = torch.load(package / "fallback_norms.pt", weights_only=True)
    array = np.random.default_rng(0).normal(size=(4, 32, 32, 16)).astype(np.float32)
    grid = sitk.Image([32, 32, 16], sitk.sitkUInt8)

    def lacking(*missing: str) -> tuple[ModelInput, np.ndarray]:
        zeroed = array.copy()
        zeroed[[SEQUENCES.index(m) for m in missing]] = 0
        present = tuple(m for m in SEQUENCES if m not in missing)
        return ModelInput(array=zeroed, grid=grid, present=present), zeroed

    assert predictor.fallback is not None
    for missing in (("t2",), ("t1", "t2")):
        model_input, zeroed = lacking(*missing)
        reference = Predictor.from_package(package, fast=False).fallback  # with its BatchNorm layers
        reference.load_state_dict({**reference.state_dict(), **stats["+".join(missing)]})
        expected = _sigmoid(reference.eval(), zeroed)
        np.testing.assert_allclose(predictor.predict(model_input), expected, atol=1e-5)
        assert not np.allclose(expected, _sigmoid(predictor.fallback, zeroed), atol=1e-3)
    # a set without statistics: the fallback's own; all four: the main network, untouched
    model_input, zeroed = lacking("t1")
    np.testing.assert_allclose(
        predictor.predict(model_input), _sigmoid(predictor.fallback, zeroed), atol=1e-5
    )
    complete = ModelInput(array=array, grid=grid)
    np.testing.assert_allclose(predictor.predict(complete), _sigmoid(predictor.network, array), atol=1e-5)
    calls: list[str] = []
    for name, network in predictor.variants.items():
        network.register_forward_hook(lambda *_, name=name: calls.append(name))
    predictor.warm_up()
    assert sorted(set(calls)) == sorted(predictor.variants)


def test_without_a_fallback_the_main_network_takes_the_norms(tmp_path: Path) -> None:
    package = with_norms(tiny_package(tmp_path / "pkg", norm="BATCH", inputs=SHIPPED_INPUTS), keys=("flair",))
    predictor = Predictor.from_package(package)
    assert sorted(predictor.variants) == ["main/flair"]
    array = np.random.default_rng(1).normal(size=(4, 32, 32, 16)).astype(np.float32)
    array[SEQUENCES.index("flair")] = 0
    without_flair = ModelInput(
        array=array, grid=sitk.Image([32, 32, 16], sitk.sitkUInt8), present=SEQUENCES[1:]
    )
    np.testing.assert_allclose(
        predictor.predict(without_flair), _sigmoid(predictor.variants["main/flair"], array), atol=1e-5
    )
    assert not np.allclose(predictor.predict(without_flair), _sigmoid(predictor.network, array), atol=1e-3)


@pytest.mark.parametrize(
    ("stats", "match"),
    [
        ({"t1ce": None}, "not a set of sequences"),  # a required sequence
        ({"flair+t2": None}, "not a set of sequences"),  # breaks the any_of group
        ({"t2": {"no.such.running_mean": torch.zeros(1)}}, "BatchNorm buffers"),
        ({"t2": "weights"}, "BatchNorm buffers"),
        ({"t2": {}}, "BatchNorm buffers"),
    ],
)
def test_norms_that_do_not_fit_are_refused(tmp_path: Path, stats: dict[str, object], match: str) -> None:
    package = with_norms(with_fallback(tiny_package(tmp_path / "pkg", norm="BATCH")))
    good = torch.load(package / "fallback_norms.pt", weights_only=True)["t2"]
    stats = {k: (good if v is None else v) for k, v in stats.items()}
    torch.save(stats, package / "fallback_norms.pt")
    with pytest.raises(ModelError, match=match):
        Predictor.from_package(package)


def test_norms_that_are_missing_or_never_used_are_refused(tmp_path: Path) -> None:
    gone = with_norms(with_fallback(tiny_package(tmp_path / "gone", norm="BATCH")))
    (gone / "fallback_norms.pt").unlink()
    with pytest.raises(ModelError, match="fallback_norms.pt is missing"):
        Predictor.from_package(gone)
    unused = with_norms(with_fallback(tiny_package(tmp_path / "unused", norm="BATCH")))
    data = json.loads((unused / "model.json").read_text())
    data["norms"] = "fallback_norms.pt"  # the main network only ever sees complete studies
    (unused / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="never segments a study that lacks a sequence"):
        read_manifest(unused)


def test_the_missing_sets_a_policy_accepts() -> None:
    shipped = InputPolicy.from_json(SHIPPED_INPUTS)
    assert shipped.missing_sets() == (("flair",), ("t1",), ("t2",), ("flair", "t1"), ("t1", "t2"))
    assert ALL_FOUR.missing_sets() == ()


def test_the_fast_path_gives_the_plain_networks_probabilities(tmp_path: Path) -> None:
    # The shipped architecture's shape in small (residual units, a BatchNorm after a transposed convolution),
    # with statistics far from (0, 1) in every network and variant, so a wrong fold would show.
    package = tiny_package(tmp_path / "pkg", norm="BATCH")
    data = json.loads((package / "model.json").read_text())
    args = data["architecture"]["args"] | {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    data["architecture"]["args"] = args
    (package / "model.json").write_text(json.dumps(data))
    torch.save(build_network("monai.UNet", args).state_dict(), package / "model.pt")
    package = with_norms(with_fallback(package), keys=("t2", "t1+t2"))
    for name in ("model.pt", "fallback.pt"):
        weights = torch.load(package / name, weights_only=True)
        generator = torch.Generator().manual_seed(len(name))
        for key, tensor in weights.items():
            if key.endswith(("running_mean", "weight")) and ".adn.N." in key:
                weights[key] = tensor + torch.randn(tensor.shape, generator=generator)
            elif key.endswith("running_var"):
                weights[key] = 0.3 + torch.rand(tensor.shape, generator=generator) * 3
        torch.save(weights, package / name)
    plain, fast = Predictor.from_package(package, fast=False), Predictor.from_package(package)
    networks = {"main": fast.network, "fallback": fast.fallback, **fast.variants}
    assert len(networks) == 4
    for network in networks.values():
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
        # every block fused: convolutions with their PReLU, residual sums (convolution and identity)
        blocks = [m for m in network.modules() if isinstance(m, Convolution | ResidualUnit)]
        fused = [m for m in network.modules() if isinstance(m, _FusedConvolution | _FusedResidualUnit)]
        assert len(fused) == len(blocks) > 0
        # the top transposed convolution (3 channels) by its phases, the last convolution with its identity
        assert sum(isinstance(m, _SubPixel) for m in network.modules()) == 2  # 8 -> 3 and 24 -> 4
        assert sum(getattr(m, "_identity_folded", None) is not None for m in network.modules()) == 1
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in plain.network.modules())
    # 40x36x20 takes several 32^3 windows; 30x27x13 one, padded unevenly (32x28x16) as MONAI pads it, which
    # the fast path runs without the sliding window (it would fail the test if it were called).
    rng = np.random.default_rng(3)
    for shape, windows in (((40, 36, 20), "several"), ((30, 27, 13), "one")):
        array = rng.normal(size=(4, *shape)).astype(np.float32)
        grid = sitk.Image(list(reversed(shape)), sitk.sitkUInt8)
        for missing in ((), ("t2",), ("t1", "t2"), ("t1",)):
            zeroed = array.copy()
            zeroed[[SEQUENCES.index(m) for m in missing]] = 0
            model_input = ModelInput(
                array=zeroed, grid=grid, present=tuple(m for m in SEQUENCES if m not in missing)
            )
            expected = plain.predict(model_input)
            assert np.ptp(expected) > 0.05
            unwanted = mock.patch("monai.inferers.sliding_window_inference", side_effect=AssertionError)
            with unwanted if windows == "one" else nullcontext():
                found = fast.predict(model_input)
            assert found.shape == expected.shape and found.flags.c_contiguous
            np.testing.assert_allclose(found, expected, atol=1e-4)


SUBSTITUTED = {**SHIPPED_INPUTS, "substitutes": {"t1": "t1ce"}}


def test_substitutes_travel_in_the_manifest_and_name_the_stand_in_channel(tmp_path: Path) -> None:
    policy = InputPolicy.from_json(SUBSTITUTED)
    assert policy.substitutes == (("t1", "t1ce"),) and policy.to_json() == SUBSTITUTED
    assert InputPolicy.from_json(SHIPPED_INPUTS).to_json() == SHIPPED_INPUTS  # no key when there are none
    channels = ("flair", "t1", "t1ce", "t2")
    assert policy.stand_ins(channels, channels) == ()
    assert policy.stand_ins(channels, ("flair", "t1ce", "t2")) == ((1, 2),)  # T1's channel from T1ce's
    assert policy.stand_ins(channels, ("flair", "t1ce")) == ((1, 2), (3, None))  # T2: no substitute, zeros
    # the stand-in itself missing (a policy that does not require it): zeros
    lax = InputPolicy(required=("flair",), optional=("t1", "t1ce", "t2"), substitutes=(("t1", "t1ce"),))
    assert lax.stand_ins(channels, ("flair", "t2")) == ((1, None), (2, None))
    manifest = read_manifest(tiny_package(tmp_path / "pkg", inputs=SUBSTITUTED))
    assert manifest.inputs == policy and manifest.to_json()["inputs"] == SUBSTITUTED
    for wrong in ({"t1ce": "t1"}, {"t1": "t1"}, {"t1": "pd"}):  # a required key, itself, not a sequence
        with pytest.raises(ValueError, match="substitutes"):
            InputPolicy.from_json({**SHIPPED_INPUTS, "substitutes": wrong})


def test_fill_absent_writes_zeros_or_the_stand_in_on_either_axis() -> None:
    from tumorseg.sequences import fill_absent

    array = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) + 1
    fill_absent(array, ((1, 2), (3, None)))
    assert array.tolist() == [[1, 2, 3], [7, 8, 9], [7, 8, 9], [0, 0, 0]]
    batch = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) + 1
    before = batch.clone()
    fill_absent(batch, ((1, 2),), channel_axis=1)
    assert torch.equal(batch[:, 1], before[:, 2]) and torch.equal(batch[:, [0, 2, 3]], before[:, [0, 2, 3]])


def test_the_predictor_feeds_the_substitute_and_leaves_the_input_as_it_was(tmp_path: Path) -> None:
    predictor = Predictor.from_package(tiny_package(tmp_path / "pkg", inputs=SUBSTITUTED))
    plain = Predictor.from_package(tiny_package(tmp_path / "zeros", inputs=SHIPPED_INPUTS))
    array = np.random.default_rng(0).normal(size=(4, 32, 32, 16)).astype(np.float32)
    array[SEQUENCES.index("t1")] = 0  # as prepare() leaves a missing T1
    grid = sitk.Image([32, 32, 16], sitk.sitkUInt8)
    lacking = ModelInput(array=array.copy(), grid=grid, present=("flair", "t1ce", "t2"))
    fed = predictor.network_input(lacking)
    assert np.array_equal(fed[SEQUENCES.index("t1")], array[SEQUENCES.index("t1ce")])
    assert np.array_equal(lacking.array, array)  # a copy was fed, the input is unchanged
    standing_in = array.copy()
    standing_in[SEQUENCES.index("t1")] = array[SEQUENCES.index("t1ce")]
    same = ModelInput(array=standing_in, grid=grid)  # a "complete" input with T1ce in T1's place
    np.testing.assert_array_equal(predictor.predict(lacking), plain.predict(same))
    # without a substitute (T2 here) the zero channel goes in as it is: no copy
    no_t2 = ModelInput(array=array, grid=grid, present=("flair", "t1", "t1ce"))
    assert predictor.network_input(no_t2) is no_t2.array


def test_a_fallback_that_serves_some_sequences_leaves_the_others_to_the_main_network(tmp_path: Path) -> None:
    package = with_fallback(tiny_package(tmp_path / "pkg"), inputs=SUBSTITUTED)
    data = json.loads((package / "model.json").read_text())
    data["fallback"]["serves"] = ["flair", "t2"]
    (package / "model.json").write_text(json.dumps(data))
    manifest = read_manifest(package)
    assert manifest.fallback is not None and manifest.fallback.serves == ("flair", "t2")
    assert ModelManifest.from_json(manifest.to_json(), package) == manifest
    assert manifest.network_for(SEQUENCES) == "main"
    assert manifest.network_for(("flair", "t1ce", "t2")) == "main"  # T1 missing: main, T1ce in its place
    assert manifest.network_for(("flair", "t1", "t1ce")) == "fallback"
    assert manifest.network_for(("flair", "t1ce")) == "fallback"  # T2 among the missing
    assert read_manifest(with_fallback(tiny_package(tmp_path / "all"))).network_for(
        ("flair", "t1ce", "t2")
    ) == ("fallback")  # without "serves": every optional sequence
    data["fallback"]["serves"] = ["t1ce"]  # required: a study never lacks it
    (package / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="serves"):
        read_manifest(package)


def test_n4_removes_a_smooth_bias_inside_the_brain_and_leaves_the_background() -> None:
    from tumorseg.imaging.bias import correct_bias

    rng = np.random.default_rng(0)
    shape = (64, 72, 60)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    inside = ((k - 32) / 28) ** 2 + ((j - 36) / 32) ** 2 + ((i - 30) / 26) ** 2 < 1  # an ellipsoid "brain"
    tissue = np.where((k // 8 + j // 8 + i // 8) % 2 == 0, 100.0, 140.0).astype(np.float32)  # two tissues
    tissue += rng.normal(0, 3, shape).astype(np.float32)
    field = np.exp(0.18 * np.cos(2 * np.pi * (j + 0.5 * i) / 220 + 0.4)).astype(np.float32)  # up to ~20 %
    channel = np.where(inside, tissue * field, 0).astype(np.float32)
    corrected = correct_bias(channel.copy())
    assert not corrected[~inside].any()  # the background stays 0

    def spread(values: np.ndarray) -> float:
        """How much the brighter tissue's level varies across the brain (front half against back)."""
        bright = inside & (tissue > 120)
        front, back = bright & (j < 36), bright & (j >= 36)
        return abs(float(values[front].mean()) / float(values[back].mean()) - 1)

    assert spread(channel) > 0.08 and spread(corrected) < 0.3 * spread(channel)
    few = np.zeros(shape, np.float32)
    few[:4, :4, :4] = 5.0  # too little to fit: left as it is
    assert np.array_equal(correct_bias(few.copy()), few)


def test_the_fallback_may_correct_the_bias_of_the_studies_it_segments(tmp_path: Path) -> None:
    from tumorseg.imaging.preprocess import Preprocessing

    assert "bias_correction" not in Preprocessing().to_json()  # older packages read the same
    assert Preprocessing.from_json({"bias_correction": "n4"}).bias_correction == "n4"
    with pytest.raises(ValueError, match="bias_correction"):
        Preprocessing.from_json({"bias_correction": "n3"})
    package = with_fallback(tiny_package(tmp_path / "pkg"))
    data = json.loads((package / "model.json").read_text())
    data["fallback"]["bias_correction"] = "n4"
    (package / "model.json").write_text(json.dumps(data))
    manifest = read_manifest(package)
    assert ModelManifest.from_json(manifest.to_json(), package) == manifest
    assert manifest.preprocessing_for(SEQUENCES).bias_correction == "none"  # complete: as before
    assert manifest.preprocessing_for(("flair", "t1", "t1ce")).bias_correction == "n4"
    data["fallback"]["bias_correction"] = "n3"
    (package / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="bias_correction"):
        read_manifest(package)


def test_warm_up_reaches_the_fallback_when_flair_is_required(tmp_path: Path) -> None:
    # the shipped policy: FLAIR and T1ce required, so "all but the first channel" would go to the main one
    inputs = {
        "required": ["flair", "t1ce"],
        "optional": ["t1", "t2"],
        "any_of": [],
        "substitutes": {"t1": "t1ce"},
    }
    predictor = Predictor.from_package(with_fallback(tiny_package(tmp_path / "pkg"), inputs=inputs))
    calls: list[str] = []
    for name, network in (("main", predictor.network), ("fallback", predictor.fallback)):
        network.register_forward_hook(lambda *_, name=name: calls.append(name))
    predictor.warm_up()
    assert sorted(set(calls)) == ["fallback", "main"]


def test_blocks_with_a_norm_of_their_own_are_not_fused(tmp_path: Path) -> None:
    """Instance norm (statistics of each input) cannot be folded, so its block keeps its own layers."""
    predictor = Predictor.from_package(tiny_package(tmp_path / "pkg", norm="INSTANCE"))
    modules = list(predictor.network.modules())
    fused = [m.block for m in modules if isinstance(m, _FusedConvolution)]
    normed = [m for m in modules if isinstance(m, Convolution) and hasattr(m, "adn") and hasattr(m.adn, "N")]
    assert normed and all(isinstance(m.adn.N, torch.nn.InstanceNorm3d) for m in normed)
    assert not any(m in fused for m in normed)  # only the last, a bare convolution, is fused
    plain = Predictor.from_package(tmp_path / "pkg", fast=False)
    array = np.random.default_rng(5).normal(size=(4, 20, 24, 16)).astype(np.float32)
    model_input = ModelInput(array=array, grid=sitk.Image([16, 24, 20], sitk.sitkUInt8))
    np.testing.assert_allclose(predictor.predict(model_input), plain.predict(model_input), atol=1e-5)
