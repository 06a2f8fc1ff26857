"""Real nnU-Net v2 result folders made by nnU-Net's own code, for the nnunet-v2 backend's tests and bench.

``nnunet_results(root)`` writes phantom cases (``tumorseg_devkit.synth.phantom``, decimated to ``spacing_mm``) in
``nnUNet_raw`` layout with the BraTS 2023 labels (1 NETC, 2 SNFH, 3 ET) and runs nnU-Net's fingerprint
extraction, experiment planning (``ExperimentPlanner``: its spacing, patch size, network topology) and
preprocessing on them; the plans' feature counts are then shrunk (``features``) so that a few training
iterations fit CI, unless ``features`` is None (the planned architecture: the bench's "real" one). Two
datasets share those preprocessed cases: a label-based one (softmax over the four labels) and a
region-based one (sigmoid regions "whole tumor" [1, 2, 3], "tumor core" [1, 3], "enhancing tumor" [3], as
nnU-Net's BraTS datasets). Each is trained by ``nnUNetTrainer`` itself for ``iterations`` iterations (0:
its initial random weights), and its final checkpoint saved by the trainer: the folders are what
``nnUNetv2_train`` leaves under ``nnUNet_results``. nnU-Net's paths are set only while this runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LABELS_2023 = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}
REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": [3]}
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
SEQUENCE_OF = {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}
LABEL_ID, REGION_ID = 971, 972
TRAINER = "nnUNetTrainer"


@contextlib.contextmanager
def nnunet_environment(root: Path) -> Iterator[None]:
    """nnU-Net's folders under ``root`` (and its data augmentation in-process, no torch.compile), only
    inside the block."""
    values = {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_n_proc_DA": "1",  # the planner sets torch's threads to it; training sets 0 (in-process)
        "nnUNet_compile": "false",
    }
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write_raw(raw: Path, cases: int, spacing_mm: float) -> list[str]:
    import nibabel as nib

    from tumorseg_devkit.synth.phantom import generate_case

    step = max(1, round(spacing_mm))
    affine = np.diag([-float(step), -float(step), float(step), 1.0])
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    names = []
    for index in range(cases):
        case = generate_case(index)
        seg = np.zeros_like(case.seg)
        seg[case.seg == 1], seg[case.seg == 2], seg[case.seg == 4] = 1, 2, 3
        for flip in (False, True):  # a case and its mirror image: twice the cases for one phantom's cost
            name = f"phantom_{index:03d}{'f' if flip else ''}"
            names.append(name)

            def save(array: Any, path: Path, flip: bool = flip) -> None:
                data = np.ascontiguousarray(array[::step, ::step, ::step][:: -1 if flip else 1])
                nib.save(nib.Nifti1Image(data, affine), path)

            for channel, sequence in SEQUENCE_OF.items():
                save(case.image(sequence), raw / "imagesTr" / f"{name}_{int(channel):04d}.nii.gz")
            save(seg, raw / "labelsTr" / f"{name}.nii.gz")
    return names


def _dataset_json(labels: dict[str, Any], cases: int, **extra: Any) -> dict[str, Any]:
    return {
        "channel_names": CHANNELS,
        "labels": labels,
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "TumorsegPhantom",
        "description": "tumorseg phantoms for tests",
        "licence": "Apache-2.0",
        **extra,
    }


def nnunet_results(
    root: Path,
    *,
    cases: int = 1,
    spacing_mm: float = 3.0,
    iterations: int = 2,
    features: tuple[int, ...] | None = (4, 8, 16, 16, 16, 16, 16),
) -> dict[str, Path]:
    """{"labels": folder, "regions": folder}: two ``nnUNetTrainer__nnUNetPlans__3d_fullres`` folders under
    ``root/results`` (see the module docstring), fold 0 with ``checkpoint_final.pth``."""
    import torch

    with nnunet_environment(root), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
            DatasetFingerprintExtractor,
        )
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset,
            plan_experiments,
            preprocess,
        )
        from nnunetv2.run.run_training import get_trainer_from_args

        label_name = f"Dataset{LABEL_ID}_TumorsegPhantom"
        region_name = f"Dataset{REGION_ID}_TumorsegPhantomRegions"
        raw = root / "raw" / label_name
        names = _write_raw(raw, cases, spacing_mm)
        (raw / "dataset.json").write_text(json.dumps(_dataset_json(LABELS_2023, len(names))))

        class Fingerprint(DatasetFingerprintExtractor):  # type: ignore[misc]
            """nnU-Net's extractor, sampling 10^5 foreground intensities instead of 10^8 (they serve CT
            normalisation only; 10^8 take a minute here)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.num_foreground_voxels_for_intensitystats = 10**5

        extract_fingerprint_dataset(LABEL_ID, Fingerprint, num_processes=1, show_progress_bar=False)
        plan_experiments([LABEL_ID])
        preprocessed = root / "preprocessed" / label_name
        plans_file = preprocessed / "nnUNetPlans.json"
        plans = json.loads(plans_file.read_text())
        for name in list(plans["configurations"]):
            if name != "3d_fullres":
                del plans["configurations"][name]
        if features is not None:
            arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
            stages = len(arch["features_per_stage"])
            arch["features_per_stage"] = list(features[:stages]) + [features[-1]] * (stages - len(features))
        plans_file.write_text(json.dumps(plans, indent=2))
        preprocess([LABEL_ID], configurations=("3d_fullres",), num_processes=(1,), show_progress_bar=False)
        splits = [{"train": names[:-1], "val": names[-1:]}]
        (preprocessed / "splits_final.json").write_text(json.dumps(splits))

        # The region-based dataset: the same preprocessed cases (nnU-Net keeps labels there and makes the
        # regions during training), its own dataset.json.
        regions = root / "preprocessed" / region_name
        shutil.copytree(preprocessed, regions)
        region_json = _dataset_json(REGION_LABELS, len(names), regions_class_order=[2, 1, 3])
        (regions / "dataset.json").write_text(json.dumps(region_json))
        region_plans = {**plans, "dataset_name": region_name}
        (regions / "nnUNetPlans.json").write_text(json.dumps(region_plans, indent=2))
        shutil.copytree(raw, root / "raw" / region_name)
        (root / "raw" / region_name / "dataset.json").write_text(json.dumps(region_json))

        folders = {}
        os.environ["nnUNet_n_proc_DA"] = "0"
        for kind, dataset in (("labels", label_name), ("regions", region_name)):
            torch.manual_seed(0)
            trainer = get_trainer_from_args(dataset, "3d_fullres", 0, TRAINER, device=torch.device("cpu"))
            trainer.num_epochs = 1
            trainer.num_iterations_per_epoch = iterations
            trainer.num_val_iterations_per_epoch = 0
            trainer.on_train_start()
            trainer.on_epoch_start()
            trainer.on_train_epoch_start()
            outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(iterations)]
            if outputs:
                trainer.on_train_epoch_end(outputs)
            trainer.on_train_end()
            folders[kind] = root / "results" / dataset / f"{TRAINER}__nnUNetPlans__3d_fullres"
            assert (folders[kind] / "fold_0" / "checkpoint_final.pth").is_file()
    return folders


def export_zip(folder: Path, results: Path, out: Path) -> Path:
    """``folder`` as ``nnUNetv2_export_model_to_zip`` packs it (nnU-Net's own export, fold 0)."""
    with (
        nnunet_environment(results.parent),
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
    ):
        from nnunetv2.model_sharing.model_export import export_pretrained_model

        # The export insists on the training curve and the validation summary, which nnU-Net writes at the
        # end of each epoch and after its final validation (the fixture skips both, for time).
        progress = folder / "fold_0" / "progress.png"
        if not progress.is_file():
            progress.write_bytes(b"")
        summary = folder / "fold_0" / "validation" / "summary.json"
        if not summary.is_file():
            summary.parent.mkdir(exist_ok=True)
            summary.write_text(json.dumps({"foreground_mean": {"Dice": None}, "note": "not validated"}))
        trainer, plans, configuration = folder.name.split("__")
        export_pretrained_model(
            folder.parent.name, str(out), configurations=(configuration,), trainer=trainer,
            plans_identifier=plans, folds=(0,),
        )  # fmt: skip
    return out


def nifti_inputs(volumes: Any, grid: Any, folder: Path, case: str = "case") -> list[str]:
    """``volumes`` (C, I, J, K) on ``grid`` as nnU-Net input files ``case_000C.nii.gz`` (SimpleITK writes
    them: the NIfTI a converter makes of these volumes)."""
    import SimpleITK as sitk

    from tumorseg.imaging.grid import from_array

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for channel, volume in enumerate(volumes):
        path = folder / f"{case}_{channel:04d}.nii.gz"
        sitk.WriteImage(from_array(np.asarray(volume, np.float32), grid), str(path))
        files.append(str(path))
    return files


_BUILT: dict[str, dict[str, Path]] = {}


def session_results(factory: Any) -> dict[str, Path]:
    """``nnunet_results`` built once per pytest session (``factory``: its ``tmp_path_factory``), shared by
    the unit and integration tests."""
    key = str(factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = nnunet_results(factory.mktemp("nnunet"))
    return _BUILT[key]
