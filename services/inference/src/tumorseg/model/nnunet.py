"""nnU-Net v2 models as tumorseg models (backend ``nnunet-v2``; ``tumorseg model import-nnunet``).

A package of this backend holds, under ``backend_config["folder"]``, the files of an nnU-Net v2
``Trainer__Plans__Configuration`` folder that its predictor needs (``dataset.json``, ``plans.json``,
``fold_N/<checkpoint>``; the checkpoints re-saved by the importer with the network weights and the few keys
the predictor reads, so the package loads with ``torch.load(weights_only=True)`` like every other one).
``load`` builds nnU-Net's own network from them and wraps its ``nnUNetPredictor``; nnU-Net's own
preprocessing (crop to the non-zero region, its normalisation, resampling to its spacing), sliding window
(Gaussian weighting, its ``tile_step_size``), resampling back and non-linearity run on every study.

What it is fed (``tumorseg.model.foreign``): the volumes on the model grid, channels in ``dataset.json``'s
``channel_names`` order (the package's ``channels``), unnormalised, zero outside the brain (as BraTS
images are, and as nnU-Net's crop to the non-zero region expects), as nnU-Net's ``SimpleITKIO`` reader
would give them from NIfTI files of the same volumes: SimpleITK's numpy view, axes (z, y, x) = our
(k, j, i), and the spacing reversed. Its probabilities come back in that order and are transposed back.

Outputs (``backend_config["outputs"]``, written by the importer from ``dataset.json``'s ``labels``):

- ``{"kind": "regions", "channels": [...]}``: a region-based model (sigmoid outputs, BraTS-style regions
  such as ``"whole tumor": [1, 2, 3]``); each output channel's role is ``tc``, ``wt``, ``et`` or ``drop``
  (dropped), from the region's name (``foreign.region_of_name``), else from its definition (three nested
  regions: the largest is WT, the middle TC, the smallest ET), else by hand.
- ``{"kind": "labels", "channels": [...], "regions_from": "probabilities" | "labels"}``: a label-based
  model (softmax over labels, e.g. BraTS 2023's 1 NETC / 2 SNFH / 3 ET); each label's role is
  ``background``, ``ncr``, ``ed``, ``et`` or ``drop``. With ``regions_from="probabilities"`` (the
  default) TC = P(ncr) + P(et), WT = P(ncr) + P(ed) + P(et), ET = P(et): summed softmax probabilities, which
  tumorseg's threshold and post-processing then treat as any other model's; with ``"labels"`` the regions
  of nnU-Net's own label map (its argmax), as 0/1 probabilities, which is what ``nnUNetv2_predict`` writes.

A label or region tumorseg has no name for (a resection cavity, say) is refused by the importer unless it
is mapped to ``drop`` by hand (``--label "resection cavity=drop"``): it is then dropped (its probability
counts as background), with a warning at import and at every load.

Devices: on the CPU the predictor runs without test-time mirroring unless the package says otherwise
(``backend_config["mirroring"]``: "cuda" (the default: mirroring on CUDA only), "always", "never"; five
folds with mirroring cost about 40x one fold without), with autocast on CUDA only, as nnU-Net does. Its
thread counts are ours: ``nnUNet_def_n_proc`` is set to the CPUs this process may use (``tumorseg.threads``)
before nnU-Net is first imported, and the resampling back runs with that many threads; everything runs in
the calling thread (no worker processes).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pkgutil
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.errors import ModelError
from tumorseg.labels import REGIONS
from tumorseg.model.foreign import LABEL_BY_NAME, check_probabilities, region_of_name
from tumorseg.threads import usable_cpus

log = logging.getLogger(__name__)

FOLDER = "nnunet"  # the nnU-Net files inside a package
DROP = "drop"  # the role of an output tumorseg drops
LABEL_ROLES = ("background", "ncr", "ed", "et", DROP)
REGION_ROLES = (*REGIONS, DROP)
REGIONS_FROM = ("probabilities", "labels")
MIRRORING = ("cuda", "always", "never")

_LABEL_BY_NAME = LABEL_BY_NAME  # label-map class names, shared with the bundle importer


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class OutputMap:
    """What each of the model's output channels is to tumorseg (see the module docstring)."""

    kind: str  # "regions" or "labels"
    channels: tuple[str, ...]  # one role per output channel, nnU-Net's order
    regions_from: str = "probabilities"
    dropped: tuple[str, ...] = ()  # the model's names of the outputs mapped to "drop"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "channels": list(self.channels),
            **({"regions_from": self.regions_from} if self.kind == "labels" else {}),
            **({"dropped": list(self.dropped)} if self.dropped else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputMap:
        try:
            kind = str(data["kind"])
            channels = tuple(str(c) for c in data["channels"])
            regions_from = str(data.get("regions_from", "probabilities"))
            dropped = tuple(str(d) for d in data.get("dropped", ()))
        except (KeyError, TypeError) as exc:
            raise ModelError(f"nnU-Net outputs {dict(data)} are incomplete ({exc})") from exc
        output = cls(kind, channels, regions_from, dropped)
        output.check()
        return output

    def check(self) -> None:
        roles = REGION_ROLES if self.kind == "regions" else LABEL_ROLES
        if self.kind not in ("regions", "labels") or any(c not in roles for c in self.channels):
            raise ModelError(f"nnU-Net outputs {self.to_json()}: roles must be among {list(roles)}")
        if self.regions_from not in REGIONS_FROM:
            raise ModelError(f"regions_from {self.regions_from!r} is not one of {list(REGIONS_FROM)}")
        if self.kind == "regions":
            named = [c for c in self.channels if c != DROP]
            if sorted(named) != sorted(REGIONS):
                raise ModelError(
                    f"the model's regions map to {named}: each of {list(REGIONS)} exactly once is needed"
                )
        elif "et" not in self.channels or not ({"ncr", "ed"} & set(self.channels)):
            raise ModelError(
                f"the model's labels map to {list(self.channels)}: enhancing tumour and at least one of "
                "necrotic core / oedema are needed for TC, WT and ET"
            )

    def regions(self, probabilities: NDArray[np.float32]) -> NDArray[np.float32]:
        """nnU-Net's probabilities (one per output channel, spatial axes as they are) → TC, WT, ET."""
        if probabilities.shape[0] != len(self.channels):
            raise ModelError(
                f"the nnU-Net model returned {probabilities.shape[0]} channels, its package maps "
                f"{len(self.channels)}"
            )
        if self.kind == "regions":
            return np.stack([probabilities[self.channels.index(r)] for r in REGIONS]).astype(np.float32)
        members = {"tc": ("ncr", "et"), "wt": ("ncr", "ed", "et"), "et": ("et",)}
        if self.regions_from == "labels":
            winner = probabilities.argmax(axis=0)
            return np.stack(
                [
                    np.isin(winner, [i for i, c in enumerate(self.channels) if c in members[r]])
                    for r in REGIONS
                ]
            ).astype(np.float32)
        out = np.zeros((len(REGIONS), *probabilities.shape[1:]), np.float32)
        for index, region in enumerate(REGIONS):
            for channel, role in enumerate(self.channels):
                if role in members[region]:
                    out[index] += probabilities[channel]
        return np.clip(out, 0.0, 1.0, out=out)


def output_map(
    labels: Mapping[str, Any],
    regions_class_order: Sequence[int] | None,
    manual: Mapping[str, str] | None = None,
    regions_from: str = "probabilities",
) -> OutputMap:
    """The ``OutputMap`` of a model from its ``dataset.json`` ``labels`` (name → label or region) and
    ``regions_class_order``, as nnU-Net's ``LabelManager`` orders its outputs: a region-based model's
    channels are its non-background regions in ``labels`` order, a label-based model's its label values
    sorted (background first). ``manual``: the model's name (or, for labels, value as a string) → role,
    taking precedence. ``ModelError`` naming each output it cannot map."""
    manual = {str(k): str(v) for k, v in (manual or {}).items()}
    entries = {str(k): v for k, v in labels.items() if str(k) != "ignore"}
    region_based = any(isinstance(v, list | tuple) and len(v) > 1 for v in entries.values())
    if region_based:
        outputs, roles, unmapped = _region_roles(entries, regions_class_order, manual)
    else:
        outputs, roles, unmapped = _label_roles(entries, manual)
    allowed = REGION_ROLES if region_based else LABEL_ROLES[1:]
    if unmapped:
        raise ModelError(
            f"cannot map the model's {'regions' if region_based else 'labels'} {', '.join(unmapped)} to one "
            f"of {list(allowed)}; give the mapping by hand (--label NAME=ROLE; {DROP!r} drops an output "
            "tumorseg has no name for)"
        )
    dropped = tuple(name for (name, _), role in zip(outputs, roles, strict=True) if role == DROP)
    output = OutputMap("regions" if region_based else "labels", tuple(roles), regions_from, dropped)
    output.check()
    return output


# (the outputs as (name, members) in nnU-Net's order, their roles ("" where none), the outputs not mapped)
_Roles = tuple[list[tuple[str, tuple[int, ...]]], list[str], list[str]]


def _region_roles(
    entries: Mapping[str, Any], regions_class_order: Sequence[int] | None, manual: Mapping[str, str]
) -> _Roles:
    """A region-based model's outputs (its non-background regions, ``labels`` order) and their roles: by
    hand, else by name, else by the nesting of three regions."""
    regions = [
        (name, tuple(int(x) for x in (v if isinstance(v, list | tuple) else [v])))
        for name, v in entries.items()
    ]
    regions = [(name, r) for name, r in regions if set(r) != {0}]
    if regions_class_order is None or len(regions_class_order) != len(regions):
        raise ModelError(
            f"a region-based dataset.json needs regions_class_order with one entry per region "
            f"({[n for n, _ in regions]}), got {regions_class_order}"
        )
    nested = _nested_roles([r for _, r in regions])
    roles, unmapped = [], []
    for index, (name, members) in enumerate(regions):
        role = manual.get(name) or region_of_name(name) or nested.get(index)
        if role is None or role not in REGION_ROLES:
            unmapped.append(f"{name!r} {list(members)}")
        roles.append(role or "")
    return regions, roles, unmapped


def _label_roles(entries: Mapping[str, Any], manual: Mapping[str, str]) -> _Roles:
    """A label-based model's outputs (its label values 0..n-1, sorted) and their roles: by hand (name or
    value), else by name; background is label 0 and only it."""
    values: dict[int, str] = {}
    for name, v in entries.items():
        value = int(v[0] if isinstance(v, list | tuple) else v)
        if value in values:
            raise ModelError(f"dataset.json names label {value} twice ({values[value]!r}, {name!r})")
        values[value] = name
    if sorted(values) != list(range(len(values))):
        raise ModelError(f"dataset.json's labels must be 0..{len(values) - 1}, got {sorted(values)}")
    roles, unmapped = [], []
    for value in sorted(values):
        name = values[value]
        role = manual.get(name) or manual.get(str(value)) or _LABEL_BY_NAME.get(_key(name))
        if role is None or role not in LABEL_ROLES or (role == "background") != (value == 0):
            unmapped.append(f"{value} {name!r}")
        roles.append(role or "")
    return [(values[v], (v,)) for v in sorted(values)], roles, unmapped


def _nested_roles(regions: Sequence[tuple[int, ...]]) -> dict[int, str]:
    """WT, TC, ET by the BraTS structure: three regions, each strictly inside the next larger."""
    if len(regions) != 3:
        return {}
    order = sorted(range(3), key=lambda i: -len(set(regions[i])))
    sets = [set(regions[i]) for i in order]
    if not (sets[0] > sets[1] > sets[2]):
        return {}
    return dict(zip(order, ("wt", "tc", "et"), strict=True))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """nnU-Net prints its progress and notes to stdout; the service's stdout is its JSON log. They go to
    this module's debug log instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                log.debug("nnU-Net: %s", line)


def import_nnunetv2() -> Any:
    """``nnunetv2``, its default process count bound to our CPUs before its first import."""
    os.environ.setdefault("nnUNet_def_n_proc", str(usable_cpus()))
    try:
        with quiet():
            import nnunetv2
    except ImportError as exc:
        raise ModelError(f"nnU-Net v2 is not installed (pip install 'tumorseg[nnunet]'): {exc}") from exc
    return nnunetv2


def find_trainer(name: str) -> Any:
    """nnU-Net's trainer class ``name`` from ``nnunetv2.training.nnUNetTrainer``, where nnU-Net's predictor
    looks for it. nnU-Net's own lookup first; then module by module, skipping those that fail to import
    (its Primus trainers import timm, which needs a torchvision that matches torch). ``ModelError`` if
    none has it."""
    nnunetv2 = import_nnunetv2()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with quiet():
            found = recursive_find_trainer_class_by_name(name)
        if found is not None:
            return found
    except Exception as exc:  # any import failure of an unrelated trainer module
        log.debug("nnU-Net's trainer lookup failed (%s); searching module by module", exc)
    root = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    skipped = []
    for info in pkgutil.walk_packages(
        [str(root)], "nnunetv2.training.nnUNetTrainer.", onerror=lambda _: None
    ):
        try:
            with quiet():
                module = importlib.import_module(info.name)
        except Exception as exc:  # a module that cannot be imported here is not the one
            skipped.append(f"{info.name} ({type(exc).__name__})")
            continue
        if isinstance(getattr(module, name, None), type):
            return getattr(module, name)
    raise ModelError(
        f"nnU-Net trainer class {name!r} not found in the installed nnunetv2 "
        f"(nnunetv2.training.nnUNetTrainer; a custom trainer must be installed there)"
        + (f"; modules that failed to import: {', '.join(skipped)}" if skipped else "")
    )


def build_network(
    trainer_name: str, plans: dict[str, Any], configuration: str, dataset_json: dict[str, Any]
) -> tuple[Any, Any, Any]:
    """nnU-Net's network for ``configuration`` as its predictor builds it (no deep supervision), with its
    ``PlansManager`` and ``ConfigurationManager``."""
    import inspect

    import_nnunetv2()
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with quiet():
        plans_manager = PlansManager(plans)
        try:
            configuration_manager = plans_manager.get_configuration(configuration)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelError(f"plans.json has no configuration {configuration!r} ({exc})") from exc
        if configuration_manager.previous_stage_name is not None:
            raise ModelError(
                f"configuration {configuration!r} is a cascade stage: it needs the segmentation of "
                f"{configuration_manager.previous_stage_name!r} first, which tumorseg does not run; import "
                "a single-stage configuration (3d_fullres, say)"
            )
        trainer = find_trainer(trainer_name)
        inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
            network = trainer.build_network_architecture(
                plans_manager, configuration_manager, inputs, outputs, enable_deep_supervision=False
            )
        else:  # the signature before nnU-Net 2.6
            network = trainer.build_network_architecture(
                configuration_manager.network_arch_class_name,
                configuration_manager.network_arch_init_kwargs,
                configuration_manager.network_arch_init_kwargs_req_import,
                inputs,
                outputs,
                enable_deep_supervision=False,
            )
    return network, plans_manager, configuration_manager


class NnUNetNetwork:
    """A loaded nnU-Net v2 model (``foreign.ForeignNetwork``): nnU-Net's ``nnUNetPredictor`` and how its
    outputs become TC/WT/ET."""

    def __init__(self, predictor: Any, outputs: OutputMap, channels: int, device: str) -> None:
        self.predictor = predictor
        self.outputs = outputs
        self.channels = channels
        self.device = device

    def predict(self, volumes: NDArray[np.float32], grid: sitk.Image) -> NDArray[np.float32]:
        """TC/WT/ET probabilities (3, I, J, K) for ``volumes`` (C, I, J, K) on ``grid``."""
        if volumes.ndim != 4 or volumes.shape[0] != self.channels:
            raise ModelError(f"the nnU-Net model takes {self.channels} channels, got {volumes.shape}")
        probabilities = self.probabilities(volumes, grid)
        regions = np.ascontiguousarray(self.outputs.regions(probabilities).transpose(0, 3, 2, 1))
        check_probabilities(regions, volumes.shape[1:], "the nnU-Net model")
        return regions

    def probabilities(self, volumes: NDArray[np.float32], grid: sitk.Image) -> NDArray[np.float32]:
        """nnU-Net's own probabilities, one per output channel, axes (z, y, x) as its reader gives them:
        ``predict_single_npy_array``'s steps, the resampling back with our thread count."""
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        predictor = self.predictor
        image = np.ascontiguousarray(volumes.transpose(0, 3, 2, 1), dtype=np.float32)
        properties = {"spacing": [float(s) for s in reversed(grid.GetSpacing())]}
        with quiet():
            adapter = PreprocessAdapterFromNpy(
                [image],
                [None],
                [properties],
                [None],
                predictor.plans_manager,
                predictor.dataset_json,
                predictor.configuration_manager,
                num_threads_in_multithreaded=1,
            )
            item = next(adapter)
            logits = predictor.predict_logits_from_preprocessed_data(item["data"]).cpu()
            _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits,
                predictor.plans_manager,
                predictor.configuration_manager,
                predictor.label_manager,
                item["data_properties"],
                return_probabilities=True,
                num_threads_torch=usable_cpus(),
            )
        return np.asarray(probabilities, dtype=np.float32)

    def warm_up(self) -> None:
        """One prediction on a small synthetic brain (a sphere of texture), so the first request does not
        pay for nnU-Net's and torch's lazy initialisation."""
        shape = (96, 96, 96)
        grid = sitk.Image(list(shape), sitk.sitkUInt8)
        index = np.indices(shape, dtype=np.float32) - 47.5
        inside = (index**2).sum(axis=0) < 40.0**2
        rng = np.random.default_rng(0)
        volumes = np.where(inside, rng.uniform(50, 150, (self.channels, *shape)), 0).astype(np.float32)
        self.predict(volumes, grid)


def load(directory: Path, manifest: Any, device: str) -> NnUNetNetwork:
    """The ``NnUNetNetwork`` of the nnU-Net v2 package in ``directory`` (``manifest`` its ``ModelManifest``)
    on ``device``. ``ModelError`` for a package whose files are missing or do not fit."""
    import torch

    config = _PackageConfig.read(directory, manifest.backend_config)
    dataset_json, plans = _nnunet_files(directory, config.folder)
    import_nnunetv2()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    network, plans_manager, configuration_manager = build_network(
        config.trainer, plans, config.configuration, dataset_json
    )
    parameters, mirror_axes = _fold_weights(directory, config, network)
    if config.outputs.dropped:
        log.warning(
            "model %s: the nnU-Net outputs %s are dropped (no BraTS region)",
            manifest.name,
            config.outputs.dropped,
        )
    use_mirroring = config.mirroring == "always" or (config.mirroring == "cuda" and device == "cuda")
    with quiet():
        predictor = nnUNetPredictor(
            tile_step_size=config.tile_step_size,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=device == "cuda",
            device=torch.device(device),
            verbose=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network.to(device).eval(),
            plans_manager,
            configuration_manager,
            parameters,
            dataset_json,
            config.trainer,
            tuple(mirror_axes) if mirror_axes is not None else None,
        )
    log.info(
        "nnU-Net model %s: %s, folds %s, mirroring %s, %d thread(s)",
        manifest.name,
        config.configuration,
        config.folds,
        "on" if use_mirroring else "off",
        torch.get_num_threads(),
    )
    return NnUNetNetwork(predictor, config.outputs, len(manifest.preprocessing.channels), device)


def _refuse(directory: Path, why: str) -> ModelError:
    return ModelError(f"model package {directory} (nnunet-v2) cannot be used: {why}")


@dataclass(frozen=True)
class _PackageConfig:
    """A package's ``backend_config`` (see the module docstring), read and checked."""

    folder: Path  # the nnU-Net files, inside the package
    folds: list[str]
    checkpoint: str
    configuration: str
    trainer: str
    mirroring: str
    tile_step_size: float
    outputs: OutputMap

    @classmethod
    def read(cls, directory: Path, backend_config: Mapping[str, Any]) -> _PackageConfig:
        config = dict(backend_config)
        try:
            read = cls(
                folder=directory / str(config.get("folder", FOLDER)),
                folds=[str(f) for f in config["folds"]],
                checkpoint=str(config["checkpoint"]),
                configuration=str(config["configuration"]),
                trainer=str(config["trainer"]),
                mirroring=str(config.get("mirroring", "cuda")),
                tile_step_size=float(config.get("tile_step_size", 0.5)),
                outputs=OutputMap.from_json(config["outputs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _refuse(directory, f"backend_config is incomplete ({exc})") from exc
        if read.mirroring not in MIRRORING:
            raise _refuse(directory, f"mirroring {read.mirroring!r} is not one of {list(MIRRORING)}")
        if not read.folds:
            raise _refuse(directory, "no folds")
        return read


def _nnunet_files(directory: Path, folder: Path) -> tuple[Any, Any]:
    """The package's ``dataset.json`` and ``plans.json``."""
    import json

    try:
        dataset_json = json.loads((folder / "dataset.json").read_text())
        plans = json.loads((folder / "plans.json").read_text())
    except (OSError, ValueError) as exc:
        raise _refuse(directory, f"its nnU-Net files cannot be read ({exc})") from exc
    return dataset_json, plans


def _fold_weights(directory: Path, config: _PackageConfig, network: Any) -> tuple[list[Any], Any]:
    """Each fold's network weights (each loaded into ``network`` once, to check it fits) and the mirror
    axes the last checkpoint that names them allows."""
    import torch

    parameters, mirror_axes = [], None
    for fold in config.folds:
        path = config.folder / f"fold_{fold}" / config.checkpoint
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            weights = saved["network_weights"]
            network.load_state_dict(weights)
        except (OSError, KeyError, TypeError, RuntimeError) as exc:
            raise _refuse(
                directory, f"fold {fold}'s checkpoint {path.name} cannot be loaded ({exc})"
            ) from exc
        mirror_axes = saved.get("inference_allowed_mirroring_axes", mirror_axes)
        parameters.append(weights)
    return parameters, mirror_axes
