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


def tiny_package(directory: Path, roi_size: tuple[int, int, int] = (32, 32, 32), **changes: object) -> Path:
    torch.manual_seed(0)
    network = build_network("monai.UNet", TINY)
    manifest = ModelManifest(
        name="tiny",
        version="0.0.1",
        architecture="monai.UNet",
        architecture_args=TINY,
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
    torch.manual_seed(seed)
    torch.save(build_network("monai.UNet", TINY).state_dict(), directory / "fallback.pt")
    data = json.loads((directory / "model.json").read_text())
    data["inputs"] = inputs or SHIPPED_INPUTS
    data["fallback"] = {"weights": "fallback.pt", "training": {"recipe": {"seed": seed}}, "metrics": {}}
    (directory / "model.json").write_text(json.dumps(data))
    return directory
