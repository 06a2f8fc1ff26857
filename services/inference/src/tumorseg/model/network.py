"""The network: MONAI ``UNet`` with 4 input channels (MR sequences) and 3 sigmoid outputs (TC, WT, ET).

Only architectures listed in ``ARCHITECTURES`` can be built from a package manifest, so a manifest cannot
name arbitrary code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

DEFAULT_UNET_ARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 3,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "INSTANCE",
    "dropout": 0.0,
}


def _unet(args: Mapping[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(**args)


ARCHITECTURES = {"monai.UNet": _unet}


def build_network(name: str, args: Mapping[str, Any]) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    if args.get("in_channels") != 4 or args.get("out_channels") != 3:
        raise ValueError("the network must take 4 channels (MR sequences) and give 3 (TC, WT, ET)")
    return ARCHITECTURES[name](args)


def stride_product(args: Mapping[str, Any]) -> int:
    """The factor every input side must divide by (product of the strides)."""
    product = 1
    for stride in args.get("strides", []):
        product *= int(stride)
    return product
