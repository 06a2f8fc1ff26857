"""The network: MONAI ``UNet`` with 4 input channels (MR sequences) and 3 sigmoid outputs (TC, WT, ET).

Only architectures listed in ``ARCHITECTURES`` can be built from a package manifest, so a manifest cannot
name arbitrary code. ``for_inference`` makes the same function cheaper to evaluate: BatchNorm folded into
the convolution before it, and on the CPU the channels-last 3D memory layout (oneDNN's fast convolutions)
with each convolution's activation and residual sum computed by oneDNN as the convolution writes its output
(``fuse_pointwise``) instead of in passes of their own over the activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """``network`` (in eval mode, changed in place) with every BatchNorm that directly follows a convolution
    (MONAI's ``Convolution``: ``conv`` then ``adn`` with the norm first) folded into that convolution's
    weights and bias and replaced by an identity: the same function, one pass over the activations less."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    network.eval()
    with torch.no_grad():
        for module in network.modules():
            conv, adn = getattr(module, "conv", None), getattr(module, "adn", None)
            if not isinstance(conv, nn.Conv3d | nn.ConvTranspose3d) or not isinstance(adn, nn.Sequential):
                continue
            first = next(iter(adn.named_children()), None)
            if first is None or first[0] != "N" or not isinstance(first[1], nn.BatchNorm3d):
                continue  # instance norm (statistics of each input) or a norm after the activation
            norm = first[1]
            if conv.groups != 1 or norm.running_mean is None or norm.running_var is None:
                continue
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight,
                conv.bias,
                norm.running_mean,
                norm.running_var,
                norm.eps,
                norm.weight,
                norm.bias,
                transpose=isinstance(conv, nn.ConvTranspose3d),
            )
            adn.N = nn.Identity()
    return network


def for_inference(network: nn.Module, device: str) -> nn.Module:
    """``network`` made cheaper to evaluate, in place (probabilities equal to the plain network's to ~1e-5):
    BatchNorm folded; on the CPU, channels-last 3D weights (the input follows in ``Predictor.predict``) and
    activations and residual sums fused into the convolutions (``fuse_pointwise``)."""
    fold_batch_norms(network)
    if device == "cpu":
        network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # Module.to takes it; the stubs omit it
        from tumorseg.model.fused import fuse_pointwise

        fuse_pointwise(network)
    return network
