"""Small model packages for tests (random weights: for plumbing and geometry, never for accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tumorseg.imaging.preprocess import Preprocessing
from tumorseg.model.network import build_network
from tumorseg.model.package import InferenceConfig, ModelManifest, save_package

TINY = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
    "norm": "INSTANCE",
}


def tiny_package(
    directory: Path, roi_size: tuple[int, int, int] = (32, 32, 32), norm: str = "INSTANCE", **changes: object
) -> Path:
    """A tiny package (``norm="BATCH"``: with BatchNorm layers, whose statistics ``with_norms`` can vary)."""
    torch.manual_seed(0)
    network = build_network("monai.UNet", TINY | {"norm": norm})
    manifest = ModelManifest(
        name="tiny",
        version="0.0.1",
        architecture="monai.UNet",
        architecture_args=TINY | {"norm": norm},
        preprocessing=Preprocessing(divisible_by=16),
        inference=InferenceConfig(roi_size=roi_size),
    )
    save_package(directory, manifest, network.state_dict())
    if changes:
        data = json.loads((directory / "model.json").read_text())
        data.update(changes)
        (directory / "model.json").write_text(json.dumps(data))
    return directory


SHIPPED_INPUTS = {"required": ["t1ce"], "optional": ["flair", "t1", "t2"], "any_of": [["flair", "t2"]]}


def with_fallback(directory: Path, inputs: dict[str, object] | None = None, seed: int = 1) -> Path:
    """``directory`` (a ``tiny_package``) given a fallback network of other random weights and ``inputs``
    (default: the shipped model's) that let a study lack a sequence."""
    data = json.loads((directory / "model.json").read_text())
    torch.manual_seed(seed)
    torch.save(
        build_network("monai.UNet", data["architecture"]["args"]).state_dict(), directory / "fallback.pt"
    )
    data["inputs"] = inputs or SHIPPED_INPUTS
    data["fallback"] = {"weights": "fallback.pt", "training": {"recipe": {"seed": seed}}, "metrics": {}}
    (directory / "model.json").write_text(json.dumps(data))
    return directory


def with_norms(directory: Path, keys: tuple[str, ...] = ("t2",), seed: int = 2) -> Path:
    """``directory`` (a ``tiny_package(norm="BATCH")``, with a fallback or optional inputs) given BatchNorm
    statistics for the missing sets ``keys``: random, so each set's output differs from the network's own.
    They go to the fallback when there is one, else to the main network."""
    data = json.loads((directory / "model.json").read_text())
    network = build_network("monai.UNet", data["architecture"]["args"])
    generator = torch.Generator().manual_seed(seed)
    stats = {}
    for key in keys:
        buffers = {}
        for name, tensor in network.state_dict().items():
            if name.endswith("running_mean"):
                buffers[name] = torch.randn(tensor.shape, generator=generator)
            elif name.endswith("running_var"):
                buffers[name] = 0.5 + torch.rand(tensor.shape, generator=generator) * 2
        stats[key] = buffers
    file = "fallback_norms.pt" if "fallback" in data else "norms.pt"
    torch.save(stats, directory / file)
    if "fallback" in data:
        data["fallback"]["norms"] = file
    else:
        data["norms"] = file
    (directory / "model.json").write_text(json.dumps(data))
    return directory
