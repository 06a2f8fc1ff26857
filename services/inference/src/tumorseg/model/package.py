"""Model packages: a directory with ``model.json`` (the manifest) and the weights it names.

A package is self-describing: architecture and its arguments, input channel order, model grid spacing,
normalisation and cropping (``Preprocessing``), output regions and threshold, the label mapping, how
inference tiles the volume, what it was trained on, its metrics and the library versions. ``load_package``
refuses a package it cannot honour with a message that says why.

Manifest schema (``format_version`` 1)::

    {"format_version": 1, "name": str, "version": str, "weights": "model.pt",
     "backend": "monai-unet",   # optional (the default); "monai-bundle" or "nnunet-v2": see below
     "architecture": {"name": "monai.UNet", "args": {...}},
     "preprocessing": {...Preprocessing...},
     "output": {"activation": "sigmoid", "regions": ["tc", "wt", "et"], "threshold": 0.5,
                "min_enhancing_ml": 0.0},   # optional; a smaller enhancing region becomes necrotic core
     "labels": {"1": ..., "2": ..., "4": ...},
     "inference": {"roi_size": [z, y, x], "overlap": 0.25, "sw_batch_size": 1},
     "inputs": {"required": [...], "optional": [...], "any_of": [[...]],  # optional; default: all four
                "substitutes": {"t1": "t1ce"}},      # required (missing sequences: zero channels, or
                                                     # the substitute's channel; InputPolicy)
     "norms": "norms.pt",   # optional: BatchNorm statistics per set of missing sequences, see below
     "fallback": {"weights": "fallback.pt", "norms": "fallback_norms.pt",  # optional, see below
                  "serves": ["flair", "t2"],  # optional; default: every optional sequence
                  "bias_correction": "n4",    # optional: its studies' preprocessing corrects the bias
                  "training": {...}, "metrics": {...}},
     "training": {...free-form description...}, "metrics": {...}, "versions": {...},
     "provenance": {...},       # optional: where a foreign model came from (bundle name and version, nnU-Net
                                # dataset, trainer, plans, configuration, folds, checkpoint)
     "backend_config": {...}}   # a foreign backend's own settings, written by its importer

Backends. ``monai-unet`` is tumorseg's own network (``architecture``, ``weights``, and everything below).
``monai-bundle`` and ``nnunet-v2`` are models from those frameworks, imported by ``tumorseg model
import-bundle`` / ``import-nnunet`` (``tumorseg.model.bundle``, ``tumorseg.model.nnunet``): their packages
have no ``architecture`` (the backend builds its network from its own files in the package), their
``preprocessing.normalisation`` is "none" (each applies its own, see ``tumorseg.model.foreign``), their
``channels`` may be any of the four sequences (``inputs`` default: all of them required), and they have no
``fallback`` or ``norms``.

A package whose ``inputs`` let a study lack a sequence may hold a second network of the same architecture
and preprocessing, its ``fallback``, trained to do without the optional sequences (modality dropout). Then
the main network (``weights``) segments every study that has all the channels, exactly as a package
without the fallback would, and the fallback network every study that lacks one; with ``"serves": [...]``
only a study lacking one of those, the main network the others (a missing sequence with a substitute in
``inputs.substitutes``: T1 ← T1ce for a network trained on complete studies). Without a ``fallback`` the
main network serves both (it was then trained with dropout itself, or relies on substitutes).

The network that serves studies lacking a sequence (the fallback, or the main one without a fallback) may
come with ``norms``: a torch file ``{"t1": {name: tensor}, "flair+t1": ...}`` of BatchNorm running
statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) measured with exactly those
sequences missing (keys: the missing sequences in channel order, joined by ``+``; see ``missing_key``).
BatchNorm normalises each layer with statistics of the training inputs; a zero channel shifts them, and
one set averaged over complete and incomplete inputs fits none of them (measured on the phantoms: WT Dice
0.36 → 0.66 on a case without T1). A missing set without its statistics runs with the network's own.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tumorseg import __version__
from tumorseg.errors import ModelError
from tumorseg.imaging.bias import METHODS as BIAS_METHODS
from tumorseg.imaging.preprocess import Preprocessing
from tumorseg.labels import LABEL_NAMES, REGIONS
from tumorseg.model.foreign import BACKENDS
from tumorseg.model.network import build_network, stride_product
from tumorseg.sequences import ALL_FOUR, SEQUENCES, InputPolicy

FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "model.pt"
FALLBACK_WEIGHTS = "fallback.pt"
NORMS = "norms.pt"
FALLBACK_NORMS = "fallback_norms.pt"
BATCH_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def missing_key(channels: Iterable[str], present: Iterable[str]) -> str:
    """The ``norms`` key of a study with the sequences ``present``: the missing channels in ``channels``
    order joined by ``+`` (``""`` when none is missing)."""
    have = set(present)
    return "+".join(c for c in channels if c not in have)


def norms_keys(channels: Sequence[str], inputs: InputPolicy) -> dict[str, tuple[str, ...]]:
    """The ``norms`` key (``missing_key``) of each set of sequences ``inputs`` let a study lack, mapped to
    that set: the keys a package's ``norms`` files may have."""
    return {
        missing_key(channels, [c for c in channels if c not in lacking]): lacking
        for lacking in inputs.missing_sets()
    }


@dataclass(frozen=True)
class InferenceConfig:
    roi_size: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.25
    sw_batch_size: int = 1


@dataclass(frozen=True)
class FallbackNetwork:
    """The package's network for studies that lack an optional sequence (see the module docstring)."""

    weights: str = FALLBACK_WEIGHTS
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    norms: str | None = None  # its BatchNorm statistics per set of missing sequences
    # The sequences whose absence it serves (a study lacking none of them goes to the main network, which
    # then needs a substitute for what is missing); empty: every optional sequence.
    serves: tuple[str, ...] = ()
    # The bias-field correction of the studies it segments ("n4", ``Preprocessing.bias_correction``); None:
    # the package's preprocessing as it is.
    bias_correction: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            **({"norms": self.norms} if self.norms else {}),
            **({"serves": list(self.serves)} if self.serves else {}),
            **({"bias_correction": self.bias_correction} if self.bias_correction else {}),
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FallbackNetwork:
        return cls(
            weights=str(data.get("weights", FALLBACK_WEIGHTS)),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            norms=str(data["norms"]) if data.get("norms") else None,
            serves=tuple(str(m) for m in data.get("serves", ())),
            bias_correction=str(data["bias_correction"]) if data.get("bias_correction") else None,
        )


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    architecture: str
    architecture_args: dict[str, Any]
    preprocessing: Preprocessing
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    threshold: float = 0.5
    # An enhancing region smaller than this (mL, on the reference lattice) is relabelled as necrotic core
    # (BraTS post-processing: a few false enhancing voxels in a tumour without enhancement would otherwise
    # score ET Dice 0). 0 keeps every enhancing voxel.
    min_enhancing_ml: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    weights: str = WEIGHTS
    # Which sequences the model needs; those it was trained to do without (modality dropout) are fed as
    # zero channels when a study lacks them. A package without ``inputs`` requires all four.
    inputs: InputPolicy = ALL_FOUR
    fallback: FallbackNetwork | None = None
    # The main network's BatchNorm statistics per set of missing sequences (only without a fallback)
    norms: str | None = None
    backend: str = "monai-unet"  # see the module docstring
    provenance: dict[str, Any] = field(default_factory=dict)
    backend_config: dict[str, Any] = field(default_factory=dict)

    @property
    def foreign(self) -> bool:
        """Whether another framework's code runs the network (``tumorseg.model.foreign``)."""
        return self.backend != "monai-unet"

    def describe(self) -> dict[str, Any]:
        """Name, version, backend and provenance: what ``tumorseg model info``, ``/health`` and every
        result say of the model."""
        return {
            "name": self.name,
            "version": self.version,
            "backend": self.backend,
            "provenance": dict(self.provenance),
        }

    def network_for(self, present: Iterable[str]) -> str:
        """Which network segments a study with the sequences ``present``: "main", or "fallback" when the
        package has one and a sequence it serves is missing."""
        lacking = set(self.preprocessing.channels) - set(present)
        if not lacking or self.fallback is None:
            return "main"
        return "fallback" if lacking & set(self.fallback.serves or self.inputs.optional) else "main"

    def preprocessing_for(self, present: Iterable[str]) -> Preprocessing:
        """The preprocessing of a study with the sequences ``present``: the package's, with the fallback's
        bias correction when the fallback segments it and names one."""
        fallback = self.fallback
        if fallback is None or fallback.bias_correction is None or self.network_for(present) != "fallback":
            return self.preprocessing
        return replace(self.preprocessing, bias_correction=fallback.bias_correction)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            **({"backend": self.backend} if self.foreign else {}),
            "weights": self.weights,
            "architecture": {"name": self.architecture, "args": self.architecture_args},
            "preprocessing": self.preprocessing.to_json(),
            "output": {
                "activation": "sigmoid",
                "regions": list(REGIONS),
                "threshold": self.threshold,
                "min_enhancing_ml": self.min_enhancing_ml,
            },
            "labels": dict(LABEL_NAMES),
            "inference": {
                "roi_size": list(self.inference.roi_size),
                "overlap": self.inference.overlap,
                "sw_batch_size": self.inference.sw_batch_size,
            },
            "inputs": self.inputs.to_json(),
            **({"norms": self.norms} if self.norms else {}),
            **({"fallback": self.fallback.to_json()} if self.fallback is not None else {}),
            "training": self.training,
            "metrics": self.metrics,
            "versions": self.versions or current_versions(),
            **({"provenance": self.provenance} if self.provenance else {}),
            **({"backend_config": self.backend_config} if self.backend_config else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> ModelManifest:
        """The manifest of the package at ``where`` from its ``model.json`` data; a ``ModelError`` that
        says why when this tumorseg cannot honour it (schema: see the module docstring)."""
        backend = _checked_backend(data, where)
        try:
            manifest = cls(**_manifest_fields(data, backend))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _refuse(where, f"manifest is incomplete or wrong ({exc})") from exc
        _check_manifest(manifest, where)
        return manifest


def _refuse(where: Path, why: str) -> ModelError:
    return ModelError(f"model package {where} cannot be used: {why}")


def _checked_backend(data: dict[str, Any], where: Path) -> str:
    """The manifest's backend, once its format version, output regions and labels are the ones this
    tumorseg reads."""
    if data.get("format_version") != FORMAT_VERSION:
        raise _refuse(
            where, f"format_version {data.get('format_version')!r}, this tumorseg reads {FORMAT_VERSION}"
        )
    output = data.get("output", {})
    if output.get("activation") != "sigmoid" or list(output.get("regions", [])) != list(REGIONS):
        raise _refuse(where, f"output must be sigmoid regions {list(REGIONS)}, got {output}")
    if {str(k) for k in data.get("labels", {})} != set(LABEL_NAMES):
        raise _refuse(where, f"labels must be BraTS {sorted(LABEL_NAMES)}")
    backend = str(data.get("backend", "monai-unet"))
    if backend not in BACKENDS:
        raise _refuse(where, f"backend {backend!r} is not one of {list(BACKENDS)}")
    return backend


def _manifest_fields(data: dict[str, Any], backend: str) -> dict[str, Any]:
    """``ModelManifest``'s fields read from the manifest's JSON (a KeyError, TypeError, ValueError or
    AttributeError where it is incomplete or wrong). Only ``monai-unet`` requires an ``architecture``."""
    arch = data["architecture"] if backend == "monai-unet" else data.get("architecture") or {}
    preprocessing = Preprocessing.from_json(data["preprocessing"])
    inference = data.get("inference", {})
    output = data.get("output", {})
    inputs = (
        InputPolicy.from_json(data["inputs"])
        if data.get("inputs")
        else InputPolicy.for_channels(preprocessing.channels)
    )
    return {
        "name": str(data["name"]),
        "version": str(data.get("version", "0")),
        "architecture": str(arch.get("name", "")) if backend != "monai-unet" else str(arch["name"]),
        "architecture_args": dict(arch.get("args", {})) if backend != "monai-unet" else dict(arch["args"]),
        "preprocessing": preprocessing,
        "inference": InferenceConfig(
            roi_size=tuple(int(v) for v in inference.get("roi_size", (128, 128, 128))),  # type: ignore[arg-type]
            overlap=float(inference.get("overlap", 0.25)),
            sw_batch_size=int(inference.get("sw_batch_size", 1)),
        ),
        "threshold": float(output.get("threshold", 0.5)),
        "min_enhancing_ml": float(output.get("min_enhancing_ml", 0.0)),
        "training": dict(data.get("training", {})),
        "metrics": dict(data.get("metrics", {})),
        "versions": dict(data.get("versions", {})),
        "weights": str(data.get("weights", WEIGHTS)),
        "inputs": inputs,
        "fallback": FallbackNetwork.from_json(data["fallback"]) if "fallback" in data else None,
        "norms": str(data["norms"]) if data.get("norms") else None,
        "backend": backend,
        "provenance": dict(data.get("provenance", {})),
        "backend_config": dict(data.get("backend_config", {})),
    }


def _check_manifest(manifest: ModelManifest, where: Path) -> None:
    """Refuse a manifest whose parts contradict each other: inputs and channels must name the same
    sequences; a foreign package has no fallback or norms; a monai-unet package is checked further."""
    if set(manifest.inputs.named) != set(manifest.preprocessing.channels):
        raise _refuse(
            where,
            f"its inputs name {list(manifest.inputs.named)}, its channels are "
            f"{list(manifest.preprocessing.channels)}: they must be the same sequences",
        )
    if manifest.foreign:
        if manifest.fallback is not None or manifest.norms:
            raise _refuse(where, f"a {manifest.backend} package has no fallback network or norms")
        return
    _check_monai_unet(manifest, where)


def _check_monai_unet(manifest: ModelManifest, where: Path) -> None:
    """Channels, normalisation, tiling against the network's strides, the fallback and the norms of a
    package of tumorseg's own network."""
    if sorted(manifest.preprocessing.channels) != sorted(SEQUENCES):
        raise _refuse(
            where,
            f"a monai-unet package's channels must be a permutation of {list(SEQUENCES)}, "
            f"got {list(manifest.preprocessing.channels)}",
        )
    if manifest.preprocessing.normalisation == "none":
        raise _refuse(where, "a monai-unet package's network expects normalised input (normalisation 'none')")
    factor = stride_product(manifest.architecture_args)
    if any(side % factor for side in manifest.inference.roi_size):
        raise _refuse(where, f"roi_size {manifest.inference.roi_size} must divide by {factor} (the strides)")
    if manifest.preprocessing.divisible_by % factor:
        raise _refuse(where, f"preprocessing.divisible_by must be a multiple of {factor}")
    if manifest.fallback is not None:
        _check_fallback(manifest, manifest.fallback, where)
    if manifest.norms and (manifest.fallback is not None or manifest.inputs == ALL_FOUR):
        raise _refuse(
            where,
            "it has norms for the main network, which never segments a study that lacks a sequence"
            " (" + ("the fallback does" if manifest.fallback is not None else "all four are required") + ")",
        )


def _check_fallback(manifest: ModelManifest, fallback: FallbackNetwork, where: Path) -> None:
    """A fallback network must be able to run (some sequence optional), serve only optional sequences,
    name a known bias correction and have weights of its own."""
    if manifest.inputs == ALL_FOUR:
        raise _refuse(
            where, "it has a fallback network but its inputs require every sequence (it would never run)"
        )
    odd = [m for m in fallback.serves if m not in manifest.inputs.optional]
    if odd:
        raise _refuse(where, f"its fallback serves {odd}, which the inputs do not let a study lack")
    if fallback.bias_correction not in (None, *BIAS_METHODS):
        raise _refuse(
            where, f"its fallback's bias_correction {fallback.bias_correction!r} is not one of {BIAS_METHODS}"
        )
    if fallback.weights == manifest.weights:
        raise _refuse(where, f"the fallback network's weights are the main network's ({manifest.weights})")


def foreign_manifest(
    *,
    name: str,
    version: str,
    backend: str,
    channels: Sequence[str],
    backend_config: dict[str, Any],
    provenance: dict[str, Any],
    spacing_mm: float = 1.0,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    inputs: InputPolicy | None = None,
    threshold: float = 0.5,
    inference: InferenceConfig | None = None,
) -> ModelManifest:
    """The manifest of an imported model (``backend`` "monai-bundle" or "nnunet-v2"): the volumes handed to
    it unnormalised on a ``spacing_mm`` grid cropped to the brain (``divisible_by`` 1: the backend pads as
    it needs), every channel required unless ``inputs`` say otherwise. Checked as a read manifest is."""
    if backend not in BACKENDS or backend == "monai-unet":
        raise ModelError(
            f"{backend!r} is not a foreign backend ({[b for b in BACKENDS if b != 'monai-unet']})"
        )
    manifest = ModelManifest(
        name=name,
        version=version,
        architecture="",
        architecture_args={},
        preprocessing=Preprocessing(
            channels=tuple(channels), spacing_mm=spacing_mm, normalisation="none", divisible_by=1
        ),
        inference=inference or InferenceConfig(),
        threshold=threshold,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        inputs=inputs or InputPolicy.for_channels(channels),
        backend=backend,
        provenance=provenance,
        backend_config=backend_config,
    )
    return ModelManifest.from_json(manifest.to_json(), Path(name))


def current_versions() -> dict[str, str]:
    import monai
    import torch

    return {
        "tumorseg": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }


def save_package(directory: Path, manifest: ModelManifest, state_dict: dict[str, Any]) -> Path:
    """Write weights then manifest (the manifest last, so a package with a manifest is complete)."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, directory / manifest.weights)
    return write_manifest(directory, manifest)


def write_manifest(directory: Path, manifest: ModelManifest) -> Path:
    """``manifest`` as ``directory/model.json`` (its weights must be there already); returns ``directory``."""
    (directory / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return directory


def record_metrics(directory: Path, key: str, entry: dict[str, Any]) -> None:
    """Set ``metrics[key]`` of the package in ``directory`` to ``entry`` (rewrites ``model.json``)."""
    manifest = read_manifest(directory)
    write_manifest(directory, replace(manifest, metrics={**manifest.metrics, key: entry}))


def read_manifest(directory: Path) -> ModelManifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelError(
            f"no model package at {directory} (missing {MANIFEST}); set TUMORSEG_MODEL_PATH to a package "
            "directory, or train one with `tumorseg train`"
        )
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError(f"model package {directory}: {MANIFEST} is not valid JSON ({exc})") from exc
    return ModelManifest.from_json(data, directory)


def load_package(
    directory: Path, device: str = "cpu", norms: bool = True
) -> tuple[ModelManifest, dict[str, Any]]:
    """The manifest and its networks with their weights, in eval mode on ``device``: {"main": ...}, and
    "fallback" when the package has one; with ``norms``, one more per set of missing sequences, named
    ``"<network>/<missing_key>"`` (``"fallback/t1"``): the same weights with those BatchNorm statistics
    (``norms=False``: without them, for measuring them anew)."""
    manifest = read_manifest(directory)
    if manifest.foreign:
        return manifest, {"main": load_foreign(directory, manifest, device)}
    files = {"main": (manifest.weights, manifest.norms)}
    if manifest.fallback is not None:
        files["fallback"] = (manifest.fallback.weights, manifest.fallback.norms)
    networks = {}
    for name, (weights, statistics) in files.items():
        networks[name] = _load_network(directory, manifest, weights, device)
        if statistics and norms:
            for key, variant in _load_norms(directory, manifest, statistics, networks[name], device).items():
                networks[f"{name}/{key}"] = variant
    return manifest, networks


def load_foreign(directory: Path, manifest: ModelManifest, device: str) -> Any:
    """The ``ForeignNetwork`` of a foreign package, loaded by its backend's module."""
    import importlib

    module = {"monai-bundle": "tumorseg.model.bundle", "nnunet-v2": "tumorseg.model.nnunet"}[manifest.backend]
    try:
        backend = importlib.import_module(module)
    except ImportError as exc:  # nnU-Net is an optional extra
        raise ModelError(
            f"model package {directory} needs the {manifest.backend} backend, which is not installed "
            f"(pip install 'tumorseg[nnunet]' for nnU-Net): {exc}"
        ) from exc
    return backend.load(directory, manifest, device)


def _load_norms(
    directory: Path, manifest: ModelManifest, file: str, network: Any, device: str
) -> dict[str, Any]:
    """``network`` once per set of missing sequences in the ``norms`` file, with its statistics."""
    import copy

    import torch

    def refuse(why: str) -> ModelError:
        return ModelError(f"model package {directory}: norms {file} {why}")

    path = directory / file
    if not path.is_file():
        raise refuse("is missing")
    try:
        stats = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise refuse(f"cannot be read ({exc})") from exc
    channels = manifest.preprocessing.channels
    accepted = norms_keys(channels, manifest.inputs)
    if not isinstance(stats, dict):
        raise refuse("must map sets of missing sequences to BatchNorm statistics")
    own = network.state_dict()
    variants = {}
    for key, buffers in stats.items():
        if key not in accepted:
            raise refuse(
                f"has statistics for {key!r}, not a set of sequences the inputs let a study lack ({sorted(accepted)})"
            )
        names = set(buffers) if isinstance(buffers, dict) else set()
        wrong = sorted(n for n in names if n not in own or not n.endswith(BATCH_NORM_BUFFERS))
        if not names or wrong:
            raise refuse(f"for {key!r} must hold BatchNorm buffers of the network only (wrong: {wrong[:3]})")
        variant = copy.deepcopy(network)
        try:
            variant.load_state_dict({**own, **buffers})
        except RuntimeError as exc:
            raise refuse(f"for {key!r} do not fit the network ({exc})") from exc
        variants[key] = variant.eval()
    return variants


def _load_network(directory: Path, manifest: ModelManifest, file: str, device: str) -> Any:
    import torch

    weights = directory / file
    if not weights.is_file():
        raise ModelError(f"model package {directory}: weights file {file} is missing")
    try:
        network = build_network(manifest.architecture, manifest.architecture_args)
        state = torch.load(weights, map_location=device, weights_only=True)
        network.load_state_dict(state)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelError(
            f"model package {directory}: weights {file} do not fit the architecture ({exc})"
        ) from exc
    return network.to(device).eval()
