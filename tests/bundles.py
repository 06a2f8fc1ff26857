"""MONAI bundles in their real format for tests (configs/metadata.json, configs/inference.json, models/model.pt),
with the zoo's ``brats_mri_segmentation`` layout: random or hand-set weights, never for accuracy.

``reference_probabilities`` runs a bundle the way the bundle itself does (its own config through
``monai.bundle``: its ``LoadImaged`` on NIfTI files, its preprocessing, network, inferer, ``Activationsd`` and
``Invertd``), the yardstick tumorseg's import is held to.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from tumorseg.imaging import grid as g

ZOO_CHANNELS = {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}
REGION_OUTPUTS = {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}
# The zoo's SegResNet at half its width (init_filters 16 there): a real architecture, small enough here
SMALL_SEGRESNET = {
    "_target_": "SegResNet",
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 8,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}
ZOO_SEGRESNET = SMALL_SEGRESNET | {"init_filters": 16}


def write_bundle(
    directory: Path,
    *,
    network_def: Mapping[str, Any] = SMALL_SEGRESNET,
    channel_def: Mapping[str, str] = ZOO_CHANNELS,
    output_def: Mapping[str, str] = REGION_OUTPUTS,
    activation: str = "sigmoid",
    roi_size: Sequence[int] = (192, 192, 160),
    extra_preprocessing: Sequence[Mapping[str, Any]] = (),
    state_dict: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    name: str = "test_brats_bundle",
) -> Path:
    """A bundle with the zoo's BraTS configuration (``LoadImaged``, ``NormalizeIntensityd``, a sliding-window
    inferer, ``Activationsd``, ``Invertd``, ``AsDiscreted``, ``SaveImaged``), ``network_def`` with random
    weights of ``seed`` (or ``state_dict``); ``extra_preprocessing`` goes after the normalisation."""
    from monai.bundle import ConfigParser

    (directory / "configs").mkdir(parents=True, exist_ok=True)
    (directory / "models").mkdir(exist_ok=True)
    metadata = {
        "version": "0.3.0",
        "name": name,
        "monai_version": "1.6.1",
        "task": "Multimodal Brain Tumor segmentation (test)",
        "description": "A test bundle with random weights",
        "authors": "tumorseg tests",
        "copyright": "Copyright (c) tumorseg tests",
        "license": "Apache-2.0",
        "data_source": "none: random weights",
        "intended_use": "tests only",
        "eval_metrics": {"val_mean_dice": 0.0},
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "num_channels": len(channel_def), "channel_def": dict(channel_def)}
            },
            "outputs": {
                "pred": {"type": "image", "num_channels": len(output_def), "channel_def": dict(output_def)}
            },
        },
    }
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": True,
        "network_def": dict(network_def),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
                *extra_preprocessing,
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(roi_size),
            "sw_batch_size": 1,
            "overlap": 0.5,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", activation: True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "meta_keys": "pred_meta_dict",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                },
            ],
        },
    }
    (directory / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (directory / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    (directory / "LICENSE").write_text("Apache License 2.0 (test bundle)\n")
    torch.manual_seed(seed)
    network = ConfigParser({"network_def": dict(network_def)}).get_parsed_content("network_def")
    if state_dict is not None:
        network.load_state_dict(dict(state_dict))
    torch.save(network.state_dict(), directory / "models" / "model.pt")
    return directory


def write_channels(volumes: NDArray[np.float32], grid: sitk.Image, directory: Path) -> list[Path]:
    """Each channel of ``volumes`` ((C, I, J, K) on ``grid``) as a NIfTI file, in channel order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, channel in enumerate(volumes):
        path = directory / f"channel_{c}.nii.gz"
        sitk.WriteImage(g.from_array(np.ascontiguousarray(channel), grid), str(path))
        paths.append(path)
    return paths


def reference_probabilities(bundle: Path, files: Sequence[Path]) -> NDArray[np.float32]:
    """The bundle's own prediction on ``files`` (its input channels, in its channel order): its config's
    preprocessing (``LoadImaged`` reads the files), network with its weights, inferer, then its
    postprocessing up to and including ``Invertd`` (before ``AsDiscreted``). (C_out, i, j, k) as read."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    with warnings.catch_warnings():  # MONAI's DICOM reader says at creation it has no GPU decoder
        warnings.filterwarnings("ignore", "NvImgCodecPydicomReader", UserWarning)
        loading = parser.get_parsed_content("preprocessing")
    data = loading({"image": [str(f) for f in files]})
    with torch.inference_mode():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    post = parser.get_parsed_content("postprocessing")
    keep = Compose([t for t in post.transforms if type(t).__name__ in ("Activationsd", "Invertd")])
    with warnings.catch_warnings():  # Invertd warns when the preprocessing had nothing to invert
        warnings.filterwarnings("ignore", "inverse has been called but no invertible", UserWarning)
        return np.asarray(keep(data)["pred"].detach().numpy(), dtype=np.float32)
