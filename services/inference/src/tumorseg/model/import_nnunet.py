"""``tumorseg model import-nnunet``: an nnU-Net v2 result folder (or its export zip) → a tumorseg package.

The source is a ``Trainer__Plans__Configuration`` folder as ``nnUNetv2_train`` leaves it under
``nnUNet_results/DatasetXXX_Name/`` (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``), or
a zip made by ``nnUNetv2_export_model_to_zip`` that holds exactly one such folder. The package
(``tumorseg.model.nnunet`` says how it runs) gets:

- ``nnunet/``: ``dataset.json``, ``plans.json`` (and ``dataset_fingerprint.json`` if present) as they are, and
  for each fold imported ``fold_N/<checkpoint>`` re-saved with the keys nnU-Net's predictor reads
  (``network_weights``, ``trainer_name``, ``init_args.configuration``, ``inference_allowed_mirroring_axes``),
  so the service loads it with ``weights_only=True``. Reading the source checkpoint runs its pickle (as
  nnU-Net itself does): import only a model you trust.
- ``model.json``: backend ``nnunet-v2``, the channels in ``dataset.json`` order mapped to our sequences
  (``foreign.map_channels``; ``channels`` overrides by name or index), the outputs mapped to TC/WT/ET
  (``nnunet.output_map``; ``labels`` overrides), and the provenance: dataset, trainer, plans,
  configuration, folds, checkpoint, nnU-Net version.

Refused with a ``ModelError`` that says why: nnU-Net v1 folders (``plans.pkl``, ``*.model``
checkpoints), cascade stages (a configuration with a ``previous_stage``), trainer classes the installed
nnunetv2 does not have, missing folds or checkpoints, channels or labels that cannot be mapped, weights
that do not fit the network the plans describe.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tumorseg.errors import ModelError
from tumorseg.model.foreign import map_channels
from tumorseg.model.nnunet import FOLDER, MIRRORING, build_network, import_nnunetv2, output_map
from tumorseg.model.package import foreign_manifest, write_manifest

log = logging.getLogger(__name__)

COPIED = ("dataset.json", "plans.json", "dataset_fingerprint.json")


def import_nnunet(
    source: Path,
    out: Path,
    *,
    folds: Sequence[int | str] = (0,),
    checkpoint: str = "checkpoint_final.pth",
    labels: Mapping[str, str] | None = None,
    channels: Mapping[str, str] | None = None,
    regions_from: str = "probabilities",
    mirroring: str = "cuda",
    tile_step_size: float = 0.5,
    name: str | None = None,
    version: str = "1",
) -> Path:
    """Import the nnU-Net v2 model in ``source`` (folder or export zip) as the package ``out`` (created; it
    must not exist or be empty). ``folds``: which folds (``fold_N``; "all" for ``fold_all``), one by
    default (each fold is one more network per prediction); ``labels`` / ``channels``: manual mappings
    (see the module docstring); ``regions_from``, ``mirroring``, ``tile_step_size``: see
    ``tumorseg.model.nnunet``. Returns ``out``."""
    source = Path(source)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} exists and is not an empty directory; choose a new package directory")
    if mirroring not in MIRRORING:
        raise ModelError(f"mirroring {mirroring!r} is not one of {list(MIRRORING)}")
    if not folds:
        raise ModelError("at least one fold is needed")
    if source.is_file() and zipfile.is_zipfile(source):
        with tempfile.TemporaryDirectory() as unpacked:
            folder = _unzip(source, Path(unpacked))
            return _import_folder(
                folder, out, source, folds, checkpoint, labels, channels, regions_from, mirroring,
                tile_step_size, name, version,
            )  # fmt: skip
    if not source.is_dir():
        raise ModelError(f"{source} is neither an nnU-Net v2 result folder nor its export zip")
    return _import_folder(
        source, out, source, folds, checkpoint, labels, channels, regions_from, mirroring, tile_step_size,
        name, version,
    )  # fmt: skip


def _unzip(archive: Path, into: Path) -> Path:
    """Extract ``archive`` (paths inside it only) and return the one model folder in it."""
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            target = (into / member).resolve()
            if not target.is_relative_to(into.resolve()):
                raise ModelError(f"{archive}: member {member!r} lies outside the archive's folder")
        zipped.extractall(into)
    found = sorted({p.parent for p in into.rglob("plans.json")} | {p.parent for p in into.rglob("plans.pkl")})
    if len(found) != 1:
        listed = [str(p.relative_to(into)) for p in found]
        raise ModelError(
            f"{archive} holds {len(found)} nnU-Net model folders {listed}; unzip it and import one folder"
            if found
            else f"{archive} holds no nnU-Net model folder (no plans.json)"
        )
    return found[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


# nnU-Net's image readers whose arrays are the ones the backend feeds (SimpleITK's (z, y, x) view)
READERS = ("None", "SimpleITKIO", "NibabelIO")


def _import_folder(
    folder: Path,
    out: Path,
    source: Path,
    folds: Sequence[int | str],
    checkpoint: str,
    labels: Mapping[str, str] | None,
    channels: Mapping[str, str] | None,
    regions_from: str,
    mirroring: str,
    tile_step_size: float,
    name: str | None,
    version: str,
) -> Path:
    import torch

    if (folder / "plans.pkl").is_file() or any(folder.glob("fold_*/*.model")):
        raise ModelError(
            f"{source} is an nnU-Net v1 result folder (plans.pkl, *.model checkpoints); nnU-Net v2 cannot "
            "run v1 models: retrain with nnU-Net v2 or use the model's v2 release"
        )
    for needed in ("dataset.json", "plans.json"):
        if not (folder / needed).is_file():
            raise ModelError(f"{source} is not an nnU-Net v2 result folder: {needed} is missing")
    dataset_json = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    reader = str(dataset_json.get("overwrite_image_reader_writer") or "SimpleITKIO")
    if reader not in READERS:
        # The backend feeds arrays as SimpleITKIO (and NibabelIO, which transposes to match) read them; a
        # reorienting reader showed the network other axes: it would run, mirrored
        raise ModelError(
            f"{source}: dataset.json's overwrite_image_reader_writer is {reader!r}; tumorseg feeds the "
            f"volumes as {' or '.join(READERS[1:])} read them, so it cannot run this model as trained"
        )
    parts = folder.name.split("__")
    fold_names = [f"fold_{f}" for f in folds]
    saved: dict[str, dict[str, Any]] = {}
    nnunetv2 = import_nnunetv2()
    for fold_name in fold_names:
        path = folder / fold_name / checkpoint
        if not path.is_file():
            present = sorted(p.relative_to(folder).as_posix() for p in folder.glob("fold_*/*.pth"))
            raise ModelError(f"{source}: {fold_name}/{checkpoint} is missing (checkpoints there: {present})")
        try:  # nnU-Net's checkpoints hold numpy values in their logs: they need the full unpickler
            loaded = torch.load(path, map_location="cpu", weights_only=False)
            saved[fold_name] = {
                "network_weights": dict(loaded["network_weights"]),
                "trainer_name": str(loaded["trainer_name"]),
                "init_args": {"configuration": str(loaded["init_args"]["configuration"])},
                "inference_allowed_mirroring_axes": (
                    tuple(int(a) for a in loaded["inference_allowed_mirroring_axes"])
                    if loaded.get("inference_allowed_mirroring_axes") is not None
                    else None
                ),
            }
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
            raise ModelError(
                f"{source}: {fold_name}/{checkpoint} is not an nnU-Net v2 checkpoint ({exc})"
            ) from exc
    first = saved[fold_names[0]]
    trainer, configuration = first["trainer_name"], first["init_args"]["configuration"]
    if any(
        s["trainer_name"] != trainer or s["init_args"]["configuration"] != configuration
        for s in saved.values()
    ):
        raise ModelError(f"{source}: the folds {list(folds)} come from different trainers or configurations")
    network, _, configuration_manager = build_network(trainer, plans, configuration, dataset_json)
    for fold_name, entry in saved.items():
        try:
            network.load_state_dict(entry["network_weights"])
        except RuntimeError as exc:
            raise ModelError(
                f"{source}: {fold_name}'s weights do not fit the network plans.json describes ({exc})"
            ) from exc

    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ModelError(f"{source}: dataset.json has no channel_names")
    sequences = map_channels({int(k): str(v) for k, v in names.items()}, channels)
    outputs = output_map(
        dataset_json.get("labels", {}), dataset_json.get("regions_class_order"), labels, regions_from
    )
    if outputs.dropped:
        log.warning("the nnU-Net outputs %s have no BraTS region: dropped", list(outputs.dropped))

    dataset = (
        folder.parent.name if folder.parent.name.startswith("Dataset") else str(dataset_json.get("name", ""))
    )
    plans_name = str(plans.get("plans_name", parts[1] if len(parts) == 3 else ""))
    provenance = {
        "framework": "nnU-Net v2",
        "nnunetv2": getattr(nnunetv2, "__version__", None) or _version("nnunetv2"),
        "dataset": dataset,
        "trainer": trainer,
        "plans": plans_name,
        "configuration": configuration,
        "folds": [str(f) for f in folds],
        "checkpoint": checkpoint,
        "source": source.name,
        "outputs": outputs.kind,
        **({"regions_from": outputs.regions_from} if outputs.kind == "labels" else {}),
        **({"dropped_outputs": list(outputs.dropped)} if outputs.dropped else {}),
    }
    backend_config = {
        "folder": FOLDER,
        "trainer": trainer,
        "plans": plans_name,
        "configuration": configuration,
        "folds": [str(f) for f in folds],
        "checkpoint": checkpoint,
        "mirroring": mirroring,
        "tile_step_size": tile_step_size,
        "outputs": outputs.to_json(),
    }
    metrics = {}
    for fold_name in fold_names:
        summary = folder / fold_name / "validation" / "summary.json"
        if summary.is_file():
            mean = _read_json(summary).get("foreground_mean", {})
            metrics[f"nnunet_{fold_name}_validation"] = (
                {"dice": mean.get("Dice")} if isinstance(mean, dict) else {}
            )
    manifest = foreign_manifest(
        name=name or f"nnunet-{dataset or 'model'}-{configuration}",
        version=version,
        backend="nnunet-v2",
        channels=sequences,
        backend_config=backend_config,
        provenance=provenance,
        training={
            "framework": "nnU-Net v2",
            "dataset": dataset,
            "description": str(dataset_json.get("description", "")),
            "reference": str(dataset_json.get("reference", "")),
            "licence": str(dataset_json.get("licence", dataset_json.get("license", ""))),
            "training_cases": dataset_json.get("numTraining"),
            "spacing_mm": list(configuration_manager.spacing),
            "patch_size": list(configuration_manager.patch_size),
        },
        metrics=metrics,
    )

    target = out / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    try:
        for file in COPIED:
            if (folder / file).is_file():
                shutil.copyfile(folder / file, target / file)
        for fold_name, entry in saved.items():
            (target / fold_name).mkdir(exist_ok=True)
            torch.save(entry, target / fold_name / checkpoint)
        write_manifest(out, manifest)  # last: a package with a manifest is complete
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log.info("imported %s as %s (%s, folds %s)", source, out, configuration, list(folds))
    return out


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
