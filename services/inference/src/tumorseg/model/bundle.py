"""MONAI bundles as tumorseg models: the backend ``monai-bundle`` (``load``) and its importer (``import_bundle``).

A bundle (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt`` or a TorchScript
``models/model.ts``) describes its network (``network_def``: any MONAI or torch architecture), its
preprocessing (a ``Compose`` of transforms), its inferer and its postprocessing. The importer keeps what
inference needs and nothing else, in ``bundle.json`` inside the package:

    {"network_def": {...}, "preprocessing": [{...transform...}, ...], "inferer": {...},
     "image_key": "image", "amp": bool}

Loaders (``LoadImage``, ``EnsureChannelFirst``: tumorseg hands the volumes over channel-first) and writers
(``SaveImage``) are left out; the rest runs on the volumes given as a ``MetaTensor`` with the model grid's
affine (RAS, as MONAI's NIfTI reader would give it), and whatever it did to orientation, spacing or extent
is undone on the output with ``Invertd``. The network's output channels are mapped to TC/WT/ET by
``backend_config["outputs"]``: ``{"activation": "sigmoid", "regions": {"tc": 0, "wt": 1, "et": 2}}`` (the
zoo's BraTS bundle), or ``{"activation": "softmax", "labels": {"1": "ncr", "2": "ed", "3": "et"}}`` for a
label map (regions from summed class probabilities: TC = NCR + ET, WT = NCR + ED + ET, ET = ET).

The bundle's ``$`` expressions run Python: they are evaluated only while importing, the bundle the user
pointed at; the kept configuration must be plain (``_target_`` objects, numbers, strings, ``@`` references
to plain values, which the importer resolves), so loading a package runs no expression, and the weights
are re-saved as a state dict that loads with ``weights_only=True`` (a TorchScript model stays TorchScript).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.errors import ModelError
from tumorseg.labels import REGIONS
from tumorseg.model.foreign import label_of_name, map_channels, region_of_name
from tumorseg.model.package import InferenceConfig, ModelManifest, foreign_manifest, write_manifest

log = logging.getLogger(__name__)

CONFIG = "bundle.json"
CARD = "MODEL_CARD.md"
# Transforms that read or write files, or add the channel axis the volumes already have.
LEFT_OUT = ("LoadImage", "LoadImaged", "SaveImage", "SaveImaged", "EnsureChannelFirst", "EnsureChannelFirstd")
LABEL_PARTS = {"ncr": ("tc", "wt"), "ed": ("wt",), "et": ("tc", "wt", "et"), "background": (), "drop": ()}


def grid_affine_ras(grid: sitk.Image) -> NDArray[np.float64]:
    """The 4x4 voxel → RAS mm affine of ``grid``'s (i, j, k) index axes, as MONAI's NIfTI reader gives it."""
    direction = np.asarray(grid.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(grid.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = grid.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS → RAS


class BundleNetwork:
    """A bundle's network, preprocessing and inferer, loaded from a package (``ForeignNetwork``)."""

    def __init__(
        self, config: Mapping[str, Any], network: Any, outputs: Mapping[str, Any], device: str
    ) -> None:
        from monai.bundle import ConfigParser

        self.config = dict(config)
        self.network = network
        self.outputs = dict(outputs)
        self.device = device
        parser = ConfigParser(
            {"preprocessing": {"_target_": "Compose", "transforms": config["preprocessing"]}}
        )
        parser["inferer"] = config["inferer"]
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        self.key = str(config.get("image_key", "image"))

    def predict(self, volumes: NDArray[np.float32], grid: sitk.Image) -> NDArray[np.float32]:
        import torch
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        image = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(volumes)), affine=torch.from_numpy(grid_affine_ras(grid))
        )
        data = self.preprocessing({self.key: image})
        batch = data[self.key].unsqueeze(0).to(self.device)
        amp = bool(self.config.get("amp")) and self.device == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", enabled=amp):
            logits = self.inferer(batch, self.network)
        probabilities = to_regions(logits[0].float(), self.outputs)
        data["pred"] = MetaTensor(probabilities.cpu(), meta=data[self.key].meta)
        if data[self.key].applied_operations:  # orientation, spacing, cropping: undone on the output
            data["pred"].applied_operations = copy.deepcopy(data[self.key].applied_operations)
            invert = Invertd(
                keys="pred", transform=self.preprocessing, orig_keys=self.key, nearest_interp=False
            )
            data = invert(data)
        out = np.asarray(data["pred"].detach().cpu().numpy(), dtype=np.float32)
        return np.clip(out, 0.0, 1.0, out=out)

    def warm_up(self) -> None:
        """One prediction on a small empty volume (lazy initialisation of the thread pool and kernels)."""
        grid = sitk.Image([32, 32, 32], sitk.sitkUInt8)
        channels = int(self.config.get("in_channels", 4))
        self.predict(np.zeros((channels, 32, 32, 32), np.float32), grid)


def to_regions(output: Any, outputs: Mapping[str, Any]) -> Any:
    """The network's output (C, ...) as TC/WT/ET probabilities (3, ...) as ``outputs`` says (module docs)."""
    import torch

    if outputs["activation"] == "sigmoid":
        regions = outputs["regions"]
        return torch.stack([output[int(regions[r])] for r in REGIONS]).sigmoid()
    probabilities = output.softmax(0)
    parts: dict[str, list[int]] = {r: [] for r in REGIONS}
    for index, label in outputs["labels"].items():
        for region in LABEL_PARTS[label]:
            parts[region].append(int(index))
    return torch.stack(
        [probabilities[parts[r]].sum(0) if parts[r] else probabilities[0] * 0 for r in REGIONS]
    )


def load(directory: Path, manifest: ModelManifest, device: str) -> BundleNetwork:
    """The bundle package in ``directory`` on ``device`` (``ModelError`` when it cannot be used)."""
    import torch
    from monai.bundle import ConfigParser

    settings = manifest.backend_config
    try:
        config = json.loads((directory / settings.get("config", CONFIG)).read_text())
        _refuse_expressions(directory, config)
        weights = directory / settings["weights"]
        if weights.suffix == ".ts":
            network = torch.jit.load(str(weights), map_location=device)
        else:
            network = ConfigParser({"network_def": config["network_def"]}).get_parsed_content("network_def")
            network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        config["in_channels"] = len(manifest.preprocessing.channels)
        return BundleNetwork(config, network.to(device).eval(), settings["outputs"], device)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, ImportError) as exc:
        raise ModelError(f"model package {directory}: the MONAI bundle cannot be loaded ({exc})") from exc


# --- import -------------------------------------------------------------------------------------------------


def import_bundle(
    source: Path,
    out: Path,
    *,
    channels: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Path:
    """The MONAI bundle at ``source`` as a tumorseg package in ``out`` (returned). ``channels``: a manual
    input mapping (channel name or index → sequence); ``labels``: for a label-map output, class index →
    ncr|ed|et|background|drop (default: by the output's channel names). ``ModelError`` with the reason
    when the bundle's inputs or outputs cannot be mapped or its configuration cannot be kept."""
    import torch
    from monai.bundle import ConfigParser

    parser, meta = _read_bundle(source, ConfigParser)
    data_format = meta.get("network_data_format", {})
    key, channel_def = _channel_def(source, data_format)
    sequences = map_channels(channel_def, channels)
    outputs = _outputs(source, parser, data_format, labels)
    kept = _kept_config(parser, key)
    _refuse_expressions(source, kept)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(kept, indent=2) + "\n")
    weights = _save_weights(source, out, kept, torch, ConfigParser)
    for extra in ("LICENSE", "docs/README.md"):
        if (source / extra).is_file():
            shutil.copy(source / extra, out / Path(extra).name)
    inferer = kept["inferer"]
    manifest = foreign_manifest(
        name=name or str(meta.get("name") or source.name),
        version=str(meta.get("version", "0")),
        backend="monai-bundle",
        channels=sequences,
        backend_config={"config": CONFIG, "weights": weights, "outputs": outputs},
        provenance=_provenance(source, meta, channel_def),
        training={"description": str(meta.get("description", "")), "task": str(meta.get("task", ""))},
        metrics={"bundle": dict(meta.get("eval_metrics", {}))},
        inference=InferenceConfig(
            roi_size=tuple(int(v) for v in inferer.get("roi_size", (128, 128, 128))),  # type: ignore[arg-type]
            overlap=float(inferer.get("overlap", 0.25)),
            sw_batch_size=int(inferer.get("sw_batch_size", 1)),
        ),
    )
    write_manifest(out, manifest)
    (out / CARD).write_text(_card(manifest, meta))
    return out


def _read_bundle(source: Path, config_parser: Any) -> tuple[Any, dict[str, Any]]:
    """The bundle's inference configuration (a MONAI ``ConfigParser`` with its metadata and
    ``bundle_root``) and its ``metadata.json``."""
    configs = source / "configs"
    metadata_file = configs / "metadata.json"
    if not metadata_file.is_file():
        raise ModelError(f"{source} is not a MONAI bundle (no configs/metadata.json)")
    inference_file = _inference_config(configs)
    parser = config_parser()
    parser.read_config(str(inference_file))
    parser.read_meta(str(metadata_file))
    parser["bundle_root"] = str(source)
    return parser, json.loads(metadata_file.read_text())


def _kept_config(parser: Any, key: str) -> dict[str, Any]:
    """What the package keeps of the bundle's configuration, resolved to plain values: the network, the
    preprocessing transforms but those ``LEFT_OUT``, the inferer, the input key and whether it uses AMP."""
    return {
        "network_def": _plain(parser, "network_def"),
        "preprocessing": [
            _resolve(parser, t)
            for t in parser.get("preprocessing", {}).get("transforms", [])
            if str(t.get("_target_", "")).rsplit(".", 1)[-1] not in LEFT_OUT
        ],
        "inferer": _plain(parser, "inferer"),
        "image_key": key,
        "amp": bool(parser.get("amp", False)),
    }


def _channel_def(source: Path, data_format: Mapping[str, Any]) -> tuple[str, dict[int, str]]:
    """The bundle's input key (its first input; "image" by default) and its channels (index → name)."""
    inputs = data_format.get("inputs", {})
    key = next(iter(inputs), "image")
    channel_def = {int(k): str(v) for k, v in inputs.get(key, {}).get("channel_def", {}).items()}
    if not channel_def:
        raise ModelError(
            f"bundle {source}: its metadata names no input channels (network_data_format.inputs)"
        )
    return key, channel_def


def _provenance(source: Path, meta: Mapping[str, Any], channel_def: Mapping[int, str]) -> dict[str, Any]:
    """Where the model came from, as the bundle's metadata says (the licence file where it names none)."""
    return {
        "format": "MONAI bundle",
        "bundle": str(meta.get("name") or source.name),
        "bundle_version": str(meta.get("version", "")),
        "channel_def": {str(k): v for k, v in channel_def.items()},
        "license": str(meta.get("license") or meta.get("copyright") or _licence_file(source)),
        "data_source": str(meta.get("data_source", "")),
        "authors": str(meta.get("authors", "")),
        "monai_version": str(meta.get("monai_version", "")),
    }


def _inference_config(configs: Path) -> Path:
    for candidate in ("inference.json", "inference.yaml", "inference.yml"):
        if (configs / candidate).is_file():
            return configs / candidate
    raise ModelError(f"bundle {configs.parent}: no configs/inference.json")


def _outputs(
    source: Path, parser: Any, data_format: Mapping[str, Any], labels: Mapping[str, str] | None
) -> dict[str, Any]:
    """How the network's output channels become TC/WT/ET (``backend_config["outputs"]``)."""
    outputs = data_format.get("outputs", {})
    first: Mapping[str, Any] = next(iter(outputs.values()), {})
    channel_def = {str(k): str(v) for k, v in first.get("channel_def", {}).items()}
    activation = _activation(parser)
    if labels or activation == "softmax":
        chosen = {str(k): v.lower() for k, v in (labels or {}).items()}
        wrong = {k: v for k, v in chosen.items() if v not in LABEL_PARTS}
        if wrong:
            raise ModelError(f"label mapping {wrong}: each must be one of {list(LABEL_PARTS)}")
        outside = sorted(k for k in chosen if k not in channel_def)
        if outside:
            raise ModelError(
                f"bundle {source}: --label names output class(es) {outside}, the model's are {sorted(channel_def)}"
            )
        for index, text in channel_def.items():
            if index not in chosen:
                found = label_of_name(text)
                if found is None:
                    raise ModelError(
                        f"bundle {source}: output class {index} {text!r} has no BraTS label; map it with "
                        "--label INDEX=ncr|ed|et|background|drop"
                    )
                chosen[index] = found
        if not any(v == "et" for v in chosen.values()) or not chosen:
            raise ModelError(f"bundle {source}: the label mapping {chosen} has no enhancing tumour class")
        return {"activation": "softmax", "labels": chosen}
    regions: dict[str, int] = {}
    for index, text in channel_def.items():
        region = region_of_name(text)
        if region is None:
            raise ModelError(
                f"bundle {source}: output channel {index} {text!r} is not TC, WT or ET (a label map needs "
                "--label INDEX=ncr|ed|et|background)"
            )
        regions[region] = int(index)
    if sorted(regions) != sorted(REGIONS):
        raise ModelError(f"bundle {source}: its outputs {channel_def} are not the three regions TC, WT, ET")
    return {"activation": "sigmoid", "regions": regions}


def _activation(parser: Any) -> str:
    for transform in parser.get("postprocessing", {}).get("transforms", []):
        if str(transform.get("_target_", "")).endswith("Activationsd"):
            if transform.get("softmax"):
                return "softmax"
            if transform.get("sigmoid"):
                return "sigmoid"
    return "sigmoid"


def _resolve(parser: Any, value: Any) -> Any:
    """``value`` with every ``@id`` reference to a plain value replaced by that value."""
    if isinstance(value, dict):
        return {k: _resolve(parser, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(parser, v) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        target = parser.get(value[1:].replace(".", "::"))
        if target is None or isinstance(target, dict | list) and _has_target(target):
            return value  # refused by _refuse_expressions
        return _resolve(parser, target)
    return value


def _plain(parser: Any, key: str) -> Any:
    if parser.get(key) is None:
        raise ModelError(f"the bundle's inference config has no {key!r}")
    return _resolve(parser, parser.get(key))


def _has_target(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _refuse_expressions(source: Path, kept: Any, where: str = "") -> None:
    """``ModelError`` unless ``kept`` is plain configuration that builds MONAI or torch objects only: no
    ``$`` expression, ``@`` reference or ``%`` macro, no ``_requires_``/``_mode_``-style keys, and every
    ``_target_`` a MONAI name (short names are looked up in MONAI) or under ``monai.`` or ``torch.nn.``.
    Checked on import and again on every load (a package's ``bundle.json`` may have been edited)."""
    if isinstance(kept, dict):
        for k, v in kept.items():
            here = f"{where}.{k}" if where else str(k)
            if str(k).startswith("_") and k != "_target_":
                raise ModelError(f"bundle {source}: {here}: the key {k!r} is not kept (it can run code)")
            if k == "_target_" and not (
                isinstance(v, str) and ("." not in v or v.startswith(("monai.", "torch.nn.")))
            ):
                raise ModelError(
                    f"bundle {source}: {here} is {v!r}; tumorseg builds MONAI and torch.nn objects only, so "
                    "that loading the package runs no other code"
                )
            _refuse_expressions(source, v, here)
    elif isinstance(kept, list):
        for i, v in enumerate(kept):
            _refuse_expressions(source, v, f"{where}[{i}]")
    elif isinstance(kept, str) and kept[:1] in ("$", "@", "%"):
        raise ModelError(
            f"bundle {source}: {where} is an expression or reference ({kept!r}); tumorseg keeps only plain "
            "network, preprocessing and inferer settings, so that loading the package runs no code"
        )


def _save_weights(source: Path, out: Path, kept: Mapping[str, Any], torch: Any, config_parser: Any) -> str:
    """The bundle's weights re-saved into ``out``: a state dict (``model.pt``) or TorchScript (``model.ts``)."""
    models = source / "models"
    if (models / "model.pt").is_file():
        state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a CheckpointSaver's checkpoint
        network = config_parser({"network_def": kept["network_def"]}).get_parsed_content("network_def")
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"bundle {source}: models/model.pt does not fit network_def ({exc})") from exc
        torch.save(network.state_dict(), out / "model.pt")
        return "model.pt"
    if (models / "model.ts").is_file():
        shutil.copy(models / "model.ts", out / "model.ts")
        return "model.ts"
    raise ModelError(f"bundle {source}: no models/model.pt or models/model.ts")


def _licence_file(source: Path) -> str:
    return "see LICENSE" if (source / "LICENSE").is_file() else "not stated"


def _card(manifest: ModelManifest, meta: Mapping[str, Any]) -> str:
    provenance = manifest.provenance
    return "\n".join(
        [
            f"# {manifest.name} {manifest.version} (imported MONAI bundle)",
            "",
            str(meta.get("description", "")),
            "",
            f"- Bundle: {provenance['bundle']} {provenance['bundle_version']}, authors: {provenance['authors']}",
            f"- Licence: {provenance['license']}",
            f"- Training data: {provenance['data_source'] or 'not stated'}",
            "- Inputs (channel → sequence): "
            + ", ".join(
                f"{n} → {s}"
                for n, s in zip(
                    provenance["channel_def"].values(), manifest.preprocessing.channels, strict=True
                )
            ),
            f"- Intended use (the bundle's words): {meta.get('intended_use', 'not stated')}",
            f"- Reported metrics: {json.dumps(meta.get('eval_metrics', {}))}",
            "",
            "Check the licence, the training data and the sequences it expects before using it on patients.",
            "",
        ]
    )
