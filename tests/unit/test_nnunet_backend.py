"""The nnunet-v2 backend's mapping of dataset.json outputs to TC/WT/ET, and the importer's refusals of
folders it cannot serve (nnU-Net v1, zips without one model). Real nnU-Net folders: tests/integration/
test_nnunet_model.py."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tumorseg.errors import ModelError
from tumorseg.model.nnunet import DROP, OutputMap, output_map

pytest.importorskip("nnunetv2")

BRATS_2023 = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}
BRATS_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def test_brats_2023_labels_map_by_name() -> None:
    mapped = output_map(BRATS_2023, None)
    assert mapped == OutputMap("labels", ("background", "ncr", "ed", "et"), "probabilities")


def test_labels_map_in_value_order_whatever_the_dict_order() -> None:
    labels = {"enhancing tumour": 3, "oedema": 1, "background": 0, "necrosis": 2}
    assert output_map(labels, None).channels == ("background", "ed", "ncr", "et")


def test_regions_map_by_name_in_dataset_order() -> None:
    mapped = output_map(BRATS_REGIONS, [1, 2, 3])
    assert mapped.kind == "regions" and mapped.channels == ("wt", "tc", "et")


def test_unnamed_regions_map_by_their_nesting() -> None:
    labels = {"background": 0, "c": [3], "a": [1, 2, 3], "b": [2, 3]}
    assert output_map(labels, [3, 1, 2]).channels == ("et", "wt", "tc")


def test_regions_that_do_not_nest_and_have_no_names_are_refused_by_name() -> None:
    labels = {"background": 0, "r1": [1, 2], "r2": [2, 3], "r3": [3]}
    with pytest.raises(ModelError, match=r"'r1' \[1, 2\].*--label"):
        output_map(labels, [1, 2, 3])
    manual = output_map(labels, [1, 2, 3], {"r1": "wt", "r2": "tc", "r3": "et"})
    assert manual.channels == ("wt", "tc", "et")


def test_an_unknown_label_is_refused_unless_dropped_by_hand() -> None:
    labels = {**BRATS_2023, "resection cavity": 4}
    with pytest.raises(ModelError, match=r"4 'resection cavity'.*'drop' drops"):
        output_map(labels, None)
    mapped = output_map(labels, None, {"resection cavity": DROP})
    assert mapped.channels == ("background", "ncr", "ed", "et", DROP)
    assert mapped.dropped == ("resection cavity",)
    assert OutputMap.from_json(mapped.to_json()) == mapped


def test_manual_mapping_by_value_and_wrong_roles() -> None:
    labels = {"background": 0, "x": 1, "y": 2, "z": 3}
    mapped = output_map(labels, None, {"1": "ncr", "2": "ed", "3": "et"})
    assert mapped.channels == ("background", "ncr", "ed", "et")
    with pytest.raises(ModelError, match="1 'x'"):
        output_map(labels, None, {"1": "background", "2": "ed", "3": "et"})  # background is label 0 only
    with pytest.raises(ModelError, match="enhancing tumour"):
        output_map(labels, None, {"1": "ncr", "2": "ed", "3": DROP})  # no ET: no TC/ET regions


def test_summed_probabilities_and_label_map_regions() -> None:
    # four voxels: softmax over background, NETC, SNFH, ET
    p = np.array(
        [
            [0.40, 0.90, 0.10, 0.05],
            [0.30, 0.05, 0.20, 0.05],
            [0.30, 0.05, 0.30, 0.10],
            [0.00, 0.00, 0.40, 0.80],
        ],
        np.float32,
    )
    summed = output_map(BRATS_2023, None).regions(p)
    np.testing.assert_allclose(summed[0], p[1] + p[3])  # TC
    np.testing.assert_allclose(summed[1], p[1] + p[2] + p[3], rtol=1e-6)  # WT
    np.testing.assert_allclose(summed[2], p[3])  # ET
    # The label map (argmax) says background at voxel 0, where the summed WT is 0.6.
    labelled = output_map(BRATS_2023, None, regions_from="labels").regions(p)
    np.testing.assert_array_equal(labelled, [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])


def test_region_probabilities_are_reordered_and_dropped() -> None:
    labels = {"background": 0, "enhancing": [3], "edema": [1], "whole": [1, 2, 3], "core": [2, 3]}
    mapped = output_map(labels, [3, 1, 2, 4], {"edema": DROP})
    p = np.arange(4, dtype=np.float32)[:, None] / 10
    np.testing.assert_allclose(mapped.regions(p)[:, 0], [0.3, 0.2, 0.0])  # TC core, WT whole, ET enhancing


def test_a_v1_folder_is_refused(tmp_path: Path) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    folder = tmp_path / "nnUNetTrainerV2__nnUNetPlansv2.1"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.pkl").write_bytes(b"")
    (folder / "fold_0" / "model_final_checkpoint.model").write_bytes(b"")
    with pytest.raises(ModelError, match="nnU-Net v1 result folder"):
        import_nnunet(folder, tmp_path / "package")
    assert not (tmp_path / "package" / "model.json").exists()


def test_a_folder_without_plans_or_checkpoint_is_refused(tmp_path: Path) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir()
    with pytest.raises(ModelError, match="plans.json is missing|dataset.json is missing"):
        import_nnunet(folder, tmp_path / "p1")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": BRATS_2023}))
    (folder / "plans.json").write_text("{}")
    with pytest.raises(ModelError, match=r"fold_0/checkpoint_final.pth is missing"):
        import_nnunet(folder, tmp_path / "p2")


def test_a_zip_must_hold_one_model_folder(tmp_path: Path) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for configuration in ("3d_fullres", "2d"):
            zipped.writestr(f"Dataset001_X/nnUNetTrainer__nnUNetPlans__{configuration}/plans.json", "{}")
    with pytest.raises(ModelError, match="holds 2 nnU-Net model folders"):
        import_nnunet(archive, tmp_path / "package")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../outside/plans.json", "{}")
    with pytest.raises(ModelError, match="outside the archive"):
        import_nnunet(evil, tmp_path / "package")
    assert not (tmp_path / "outside").exists()


def test_an_existing_package_directory_is_not_overwritten(tmp_path: Path) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="not an empty directory"):
        import_nnunet(tmp_path, tmp_path / "package")


@pytest.mark.parametrize("reader", ["NibabelIOWithReorient", "SimpleITKIOWithReorient"])
def test_a_model_trained_through_a_reorienting_reader_is_refused(tmp_path: Path, reader: str) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir()
    dataset = {"channel_names": {"0": "T1"}, "labels": BRATS_2023, "overwrite_image_reader_writer": reader}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text("{}")
    with pytest.raises(ModelError, match=f"{reader}.*cannot run this model as trained"):
        import_nnunet(folder, tmp_path / "package")
    dataset["overwrite_image_reader_writer"] = "NibabelIO"  # the same arrays as SimpleITKIO: on to the folds
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelError, match=r"fold_0/checkpoint_final.pth is missing"):
        import_nnunet(folder, tmp_path / "package")
