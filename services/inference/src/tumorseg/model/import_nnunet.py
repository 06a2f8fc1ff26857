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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumorseg.errors import ModelError
from tumorseg.model.foreign import map_channels
from tumorseg.model.nnunet import FOLDER, MIRRORING, OutputMap, build_network, import_nnunetv2, output_map
from tumorseg.model.package import ModelManifest, foreign_manifest, write_manifest

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
    options = _Options(
        folds, checkpoint, labels, channels, regions_from, mirroring, tile_step_size, name, version
    )
    if source.is_file() and zipfile.is_zipfile(source):
        with tempfile.TemporaryDirectory() as unpacked:
            return _import_folder(_unzip(source, Path(unpacked)), out, source, options)
    if not source.is_dir():
        raise ModelError(f"{source} is neither an nnU-Net v2 result folder nor its export zip")
    return _import_folder(source, out, source, options)


@dataclass(frozen=True)
class _Options:
    """``import_nnunet``'s choices, as given."""

    folds: Sequence[int | str]
    checkpoint: str
    labels: Mapping[str, str] | None
    channels: Mapping[str, str] | None
    regions_from: str
    mirroring: str
    tile_step_size: float
    name: str | None
    version: str

    @property
    def fold_names(self) -> list[str]:
        return [f"fold_{f}" for f in self.folds]


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


def _import_folder(folder: Path, out: Path, source: Path, options: _Options) -> Path:
    """Import the model folder ``folder`` (``source`` as the user named it: the folder or its zip) as
    the package ``out``."""
    dataset_json, plans = _read_v2_folder(folder, source)
    nnunetv2 = import_nnunetv2()
    saved = {name: _read_checkpoint(folder, source, name, options.checkpoint) for name in options.fold_names}
    trained = _Trained.of(folder, source, options, saved, dataset_json, plans)
    network, _, configuration_manager = build_network(
        trained.trainer, plans, trained.configuration, dataset_json
    )
    for fold_name, entry in saved.items():
        try:
            network.load_state_dict(entry["network_weights"])
        except RuntimeError as exc:
            raise ModelError(
                f"{source}: {fold_name}'s weights do not fit the network plans.json describes ({exc})"
            ) from exc
    sequences, outputs = _inputs_and_outputs(dataset_json, source, options)
    manifest = foreign_manifest(
        name=options.name or f"nnunet-{trained.dataset or 'model'}-{trained.configuration}",
        version=options.version,
        backend="nnunet-v2",
        channels=sequences,
        backend_config=trained.backend_config(options, outputs),
        provenance=trained.provenance(options, outputs, source, nnunetv2),
        training={
            "framework": "nnU-Net v2",
            "dataset": trained.dataset,
            "description": str(dataset_json.get("description", "")),
            "reference": str(dataset_json.get("reference", "")),
            "licence": str(dataset_json.get("licence", dataset_json.get("license", ""))),
            "training_cases": dataset_json.get("numTraining"),
            "spacing_mm": list(configuration_manager.spacing),
            "patch_size": list(configuration_manager.patch_size),
        },
        metrics=_validation_metrics(folder, options.fold_names),
    )
    _write_package(folder, out, saved, options.checkpoint, manifest)
    log.info("imported %s as %s (%s, folds %s)", source, out, trained.configuration, list(options.folds))
    return out


def _read_v2_folder(folder: Path, source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``dataset.json`` and ``plans.json`` of an nnU-Net v2 result folder whose images were read as
    the backend feeds them; v1 folders and reorienting readers are refused."""
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
    return dataset_json, plans


def _read_checkpoint(folder: Path, source: Path, fold_name: str, checkpoint: str) -> dict[str, Any]:
    """The keys nnU-Net's predictor reads from the fold's checkpoint, as plain values (see the module
    docstring)."""
    import torch

    path = folder / fold_name / checkpoint
    if not path.is_file():
        present = sorted(p.relative_to(folder).as_posix() for p in folder.glob("fold_*/*.pth"))
        raise ModelError(f"{source}: {fold_name}/{checkpoint} is missing (checkpoints there: {present})")
    try:  # nnU-Net's checkpoints hold numpy values in their logs: they need the full unpickler
        loaded = torch.load(path, map_location="cpu", weights_only=False)
        return {
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


@dataclass(frozen=True)
class _Trained:
    """What the model is: its dataset, trainer, plans and configuration (one for every fold imported)."""

    dataset: str
    trainer: str
    plans: str
    configuration: str

    @classmethod
    def of(
        cls,
        folder: Path,
        source: Path,
        options: _Options,
        saved: Mapping[str, Mapping[str, Any]],
        dataset_json: Mapping[str, Any],
        plans: Mapping[str, Any],
    ) -> _Trained:
        first = saved[options.fold_names[0]]
        trainer, configuration = first["trainer_name"], first["init_args"]["configuration"]
        if any(
            s["trainer_name"] != trainer or s["init_args"]["configuration"] != configuration
            for s in saved.values()
        ):
            raise ModelError(
                f"{source}: the folds {list(options.folds)} come from different trainers or configurations"
            )
        dataset = (
            folder.parent.name
            if folder.parent.name.startswith("Dataset")
            else str(dataset_json.get("name", ""))
        )
        parts = folder.name.split("__")
        plans_name = str(plans.get("plans_name", parts[1] if len(parts) == 3 else ""))
        return cls(dataset, trainer, plans_name, configuration)

    def backend_config(self, options: _Options, outputs: OutputMap) -> dict[str, Any]:
        return {
            "folder": FOLDER,
            "trainer": self.trainer,
            "plans": self.plans,
            "configuration": self.configuration,
            "folds": [str(f) for f in options.folds],
            "checkpoint": options.checkpoint,
            "mirroring": options.mirroring,
            "tile_step_size": options.tile_step_size,
            "outputs": outputs.to_json(),
        }

    def provenance(
        self, options: _Options, outputs: OutputMap, source: Path, nnunetv2: Any
    ) -> dict[str, Any]:
        return {
            "framework": "nnU-Net v2",
            "nnunetv2": getattr(nnunetv2, "__version__", None) or _version("nnunetv2"),
            "dataset": self.dataset,
            "trainer": self.trainer,
            "plans": self.plans,
            "configuration": self.configuration,
            "folds": [str(f) for f in options.folds],
            "checkpoint": options.checkpoint,
            "source": source.name,
            "outputs": outputs.kind,
            **({"regions_from": outputs.regions_from} if outputs.kind == "labels" else {}),
            **({"dropped_outputs": list(outputs.dropped)} if outputs.dropped else {}),
        }


def _inputs_and_outputs(
    dataset_json: Mapping[str, Any], source: Path, options: _Options
) -> tuple[tuple[str, ...], OutputMap]:
    """The sequence of each input channel (``dataset.json`` order) and the role of each output."""
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ModelError(f"{source}: dataset.json has no channel_names")
    sequences = map_channels({int(k): str(v) for k, v in names.items()}, options.channels)
    outputs = output_map(
        dataset_json.get("labels", {}),
        dataset_json.get("regions_class_order"),
        options.labels,
        options.regions_from,
    )
    if outputs.dropped:
        log.warning("the nnU-Net outputs %s have no BraTS region: dropped", list(outputs.dropped))
    return sequences, outputs


def _validation_metrics(folder: Path, fold_names: Sequence[str]) -> dict[str, Any]:
    """Each fold's validation Dice (nnU-Net's ``foreground_mean``), where its summary is there."""
    metrics = {}
    for fold_name in fold_names:
        summary = folder / fold_name / "validation" / "summary.json"
        if summary.is_file():
            mean = _read_json(summary).get("foreground_mean", {})
            metrics[f"nnunet_{fold_name}_validation"] = (
                {"dice": mean.get("Dice")} if isinstance(mean, dict) else {}
            )
    return metrics


def _write_package(
    folder: Path, out: Path, saved: Mapping[str, Any], checkpoint: str, manifest: ModelManifest
) -> None:
    """The nnU-Net files and re-saved checkpoints under ``out/nnunet``, then the manifest; nothing of
    them is left when a write fails."""
    import torch

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


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
