"""CPU inference of a folded MONAI ``UNet`` with each convolution's activation and residual sum computed by
oneDNN as the convolution writes its output, instead of in passes of their own over the activations.

``fuse_pointwise`` replaces MONAI's ``Convolution`` and ``ResidualUnit`` blocks, in place, by modules that
call oneDNN's fused convolutions as torch registers them (``torch.ops.mkldnn._convolution_pointwise`` and
its transposed and binary forms: what ``torch.compile`` emits on the CPU, without its compile time or its
recompiling per input shape): a one-parameter PReLU as the convolution's leaky-ReLU post-op (the same
function), a residual convolution adding the block's output as it writes (binary post-op), an identity
residual added in place or folded into the last convolution's centre tap, and a transposed convolution
with few output channels computed by its output phases (``_SubPixel``). Every module runs the original
block for any input but a CPU tensor without gradient, and while ``unfused`` holds the network. The
probabilities equal the plain network's to rounding (~2e-6 on the shipped model, no label changed;
``tests/unit/test_model_package.py``); because the operators are private to torch, ``Predictor`` compares
the two at load time and ``unfuse`` gives the plain network back when they disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import nn


def _mkldnn_ops() -> Any:
    """oneDNN's fused convolutions as torch registers them (what ``torch.compile`` emits on the CPU), or
    None where this torch build lacks them."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return None
    try:
        ops._convolution_pointwise.binary, ops._convolution_transpose_pointwise.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return None
    return ops


class _FusedConvolution(nn.Module):
    """MONAI's ``Convolution`` (convolution, then a folded norm, an inactive dropout and a one-parameter
    PReLU, each optional) as one oneDNN convolution with the PReLU as its leaky-ReLU post-op (the same
    function: x where x > 0, else a·x). CPU inference only; any other input runs the original block."""

    def __init__(self, block: nn.Module, ops: Any) -> None:
        super().__init__()
        self.block, self._ops = block, ops
        self.active = True  # False: the original block runs (``unfused``)
        self.conv = cast(nn.Conv3d | nn.ConvTranspose3d, block.conv)
        act = getattr(getattr(block, "adn", None), "A", None)
        self._slope = None if act is None else float(act.weight.reshape(()).item())

    @property
    def post_op(self) -> tuple[str, list[float]]:
        """oneDNN's unary post-op (name, scalars) for this block's activation."""
        return ("none", []) if self._slope is None else ("leaky_relu", [self._slope])

    def forward(self, x: Any) -> Any:
        if not self.active or x.device.type != "cpu" or x.requires_grad:
            return self.block(x)
        conv = self.conv
        attr, scalars = self.post_op
        if isinstance(conv, nn.ConvTranspose3d):
            return self._ops._convolution_transpose_pointwise(
                x, conv.weight, conv.bias, conv.padding, conv.output_padding, conv.stride, conv.dilation,
                conv.groups, attr, scalars, "",
            )  # fmt: skip
        return self._ops._convolution_pointwise(
            x,
            conv.weight,
            conv.bias,
            conv.padding,
            conv.stride,
            conv.dilation,
            conv.groups,
            attr,
            scalars,
            "",
        )


# A stride-2 transposed convolution of kernel 3 (padding 1, output padding 1) with at most this many output
# channels runs as a convolution at the input's resolution (``_SubPixel``): oneDNN's transposed kernels
# vectorise over output channels, and with 3 of them reach 52 GFLOP/s here against 350 for 32.
SUB_PIXEL_MAX_CHANNELS = 4
# Per axis, output voxel 2m + phase takes input voxel m + offset through kernel tap ``_TAPS[phase, offset]``
_TAPS = {(0, 0): 1, (1, 0): 2, (1, 1): 0}


def _sub_pixel_weight(weight: Any) -> Any:
    """A transposed convolution's weight (in, out, 3, 3, 3) as the weight (8·out, in, 2, 2, 2) of the
    convolution that computes its 8 output phases (channel ((a·2 + b)·2 + c)·out + o: phase a, b, c along
    the three axes) from input voxels m and m + 1 of each axis."""
    channels_in, channels_out = weight.shape[:2]
    phased = weight.new_zeros((2, 2, 2, channels_out, channels_in, 2, 2, 2))
    for a, b, c, da, db, dc in np.ndindex(2, 2, 2, 2, 2, 2):
        if (a, da) in _TAPS and (b, db) in _TAPS and (c, dc) in _TAPS:
            tap = weight[:, :, _TAPS[a, da], _TAPS[b, db], _TAPS[c, dc]]
            phased[a, b, c, :, :, da, db, dc] = tap.transpose(0, 1)
    return phased.reshape(8 * channels_out, channels_in, 2, 2, 2).contiguous(
        memory_format=torch.channels_last_3d
    )


class _SubPixel(nn.Module):
    """A fused transposed ``Convolution`` (see ``_FusedConvolution``) of stride 2, kernel 3, padding 1 and
    output padding 1 computed as a convolution of kernel 2 at the input's resolution giving its 8 output
    phases as channels (the activation fused in, elementwise, so before or after the shuffle is the same),
    then those phases shuffled into the output's voxels: the same sums in another order."""

    def __init__(self, fused: _FusedConvolution) -> None:
        super().__init__()
        self.fused, self._ops = fused, fused._ops
        self.active = True
        conv = fused.conv
        self.out_channels = int(conv.out_channels)
        self.register_buffer("weight", _sub_pixel_weight(conv.weight.detach()), persistent=False)
        bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(self.out_channels)
        self.register_buffer("bias", bias.repeat(8), persistent=False)

    def forward(self, x: Any) -> Any:
        if (
            not self.active
            or x.device.type != "cpu"
            or x.requires_grad
            or not x.is_contiguous(memory_format=torch.channels_last_3d)
        ):
            return self.fused(x)
        attr, scalars = self.fused.post_op
        # Padding 1 on each side: output voxel j + 1 reads input voxels j and j + 1 (j = 0 .. n - 1).
        phases = self._ops._convolution_pointwise(
            x, self.weight, self.bias, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, attr, scalars, ""
        )
        n, _, *size = x.shape
        out = torch.empty(
            (n, self.out_channels, *(2 * s for s in size)),
            dtype=phases.dtype,
            memory_format=torch.channels_last_3d,
        )
        per_voxel = phases.permute(0, 2, 3, 4, 1)[:, 1:, 1:, 1:]  # (n, d, h, w, 8·out)
        shaped = per_voxel.reshape(n, *size, 2, 2, 2, self.out_channels)
        target = out.permute(0, 2, 3, 4, 1).view(n, size[0], 2, size[1], 2, size[2], 2, self.out_channels)
        target.copy_(shaped.permute(0, 1, 4, 2, 5, 3, 6, 7))
        return out


def _sub_pixel_fits(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.ConvTranspose3d)
        and conv.out_channels <= SUB_PIXEL_MAX_CHANNELS
        and conv.groups == 1
        and tuple(conv.kernel_size) == (3, 3, 3)
        and tuple(conv.stride) == (2, 2, 2)
        and tuple(conv.padding) == (1, 1, 1)
        and tuple(conv.output_padding) == (1, 1, 1)
        and tuple(conv.dilation) == (1, 1, 1)
    )


class _FusedResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit`` (``conv(x) + residual(x)``) with the residual convolution writing the sum
    itself (oneDNN's binary post-op), or an identity residual added in place into the block's new output;
    when the block is one bare convolution that keeps the shape (the UNet's last), the identity is folded
    into its centre tap (``conv(x) + x`` as one convolution)."""

    def __init__(self, unit: nn.Module, ops: Any) -> None:
        super().__init__()
        self.unit, self._ops = unit, ops
        self.active = True
        self.conv, self.residual = cast(nn.Module, unit.conv), cast(nn.Module, unit.residual)
        self._identity_folded: tuple[torch.Tensor, torch.Tensor | None, list[int]] | None = None
        only = list(self.conv.children())
        if (
            isinstance(self.residual, nn.Identity)
            and len(only) == 1
            and isinstance(only[0], _FusedConvolution)
        ):
            conv = only[0].conv
            if only[0]._slope is None and isinstance(conv, nn.Conv3d) and _keeps_shape(conv):
                weight = conv.weight.detach().clone(memory_format=torch.channels_last_3d)
                centre = tuple(k // 2 for k in conv.kernel_size)
                for c in range(conv.in_channels):
                    weight[(c, c, *centre)] += 1.0
                bias = None if conv.bias is None else conv.bias.detach()
                self._identity_folded = (weight, bias, [int(p) for p in conv.padding])

    def forward(self, x: Any) -> Any:
        if not self.active or x.device.type != "cpu" or x.requires_grad:
            return self.unit(x)
        if self._identity_folded is not None:
            weight, bias, padding = self._identity_folded
            return self._ops._convolution_pointwise(
                x, weight, bias, padding, [1, 1, 1], [1, 1, 1], 1, "none", [], ""
            )
        out = self.conv(x)
        r = self.residual
        if not isinstance(r, nn.Conv3d):  # an identity (fuse_pointwise wraps no other)
            return out.add_(x)
        return self._ops._convolution_pointwise.binary(
            x, out, r.weight, r.bias, r.padding, r.stride, r.dilation, r.groups, "add", 1.0, None, [], None
        )


def _keeps_shape(conv: nn.Conv3d) -> bool:
    """A convolution whose output is its input's lattice, channel for channel (for a folded identity)."""
    return (
        conv.in_channels == conv.out_channels
        and conv.groups == 1
        and all(k % 2 == 1 for k in conv.kernel_size)
        and tuple(conv.padding) == tuple(k // 2 for k in conv.kernel_size)
        and tuple(conv.stride) == (1, 1, 1)
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.padding_mode == "zeros"
    )


def fuse_pointwise(network: nn.Module) -> nn.Module:
    """``network`` (folded, in eval mode, channels-last on the CPU) with MONAI's ``Convolution`` and
    ``ResidualUnit`` blocks replaced, in place, by fused ones where their parts allow (a PReLU with one
    parameter, a folded or absent norm, a plain 3D convolution as residual); other blocks stay as they are.
    Unchanged where torch has no oneDNN."""
    from monai.networks.blocks import Convolution, ResidualUnit

    ops = _mkldnn_ops()
    if ops is None:
        return network

    def fusable_block(module: nn.Module) -> bool:
        adn = getattr(module, "adn", None)
        if not isinstance(module, Convolution) or not isinstance(
            getattr(module, "conv", None), nn.Conv3d | nn.ConvTranspose3d
        ):
            return False
        if getattr(module.conv, "padding_mode", "zeros") != "zeros":
            return False
        if adn is None:
            return True
        parts = dict(adn.named_children())
        act, norm, dropout = parts.pop("A", None), parts.pop("N", None), parts.pop("D", None)
        return (
            not parts
            and (norm is None or isinstance(norm, nn.Identity))
            and (dropout is None or isinstance(dropout, nn.Identity) or not dropout.training)
            and (act is None or (isinstance(act, nn.PReLU) and act.num_parameters == 1))
        )

    def fusable_unit(module: nn.Module) -> bool:
        residual = getattr(module, "residual", None)
        return isinstance(module, ResidualUnit) and (
            isinstance(residual, nn.Identity)
            or (isinstance(residual, nn.Conv3d) and residual.padding_mode == "zeros")
        )

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            replace(child)
            if fusable_block(child):
                fused = _FusedConvolution(child, ops)
                setattr(parent, name, _SubPixel(fused) if _sub_pixel_fits(fused.conv) else fused)
            elif fusable_unit(child):
                setattr(parent, name, _FusedResidualUnit(child, ops))

    replace(network)
    return network


_FUSED = (_FusedConvolution, _SubPixel, _FusedResidualUnit)


def is_fused(network: nn.Module) -> bool:
    """Whether ``fuse_pointwise`` replaced any block of ``network``."""
    return any(isinstance(module, _FUSED) for module in network.modules())


@contextmanager
def unfused(network: nn.Module) -> Iterator[nn.Module]:
    """``network`` with every fused block running the original block it replaced (the plain network: the
    same folded, channels-last weights through torch's public convolutions) until the block exits."""
    blocks = [module for module in network.modules() if isinstance(module, _FUSED)]
    for block in blocks:
        block.active = False
    try:
        yield network
    finally:
        for block in blocks:
            block.active = True


def unfuse(network: nn.Module) -> nn.Module:
    """``network`` with every fused block replaced, in place, by the original block it wraps: what
    ``fuse_pointwise`` was given, with no private operator left in it."""

    def original(module: nn.Module) -> nn.Module:
        if isinstance(module, _SubPixel):
            return original(module.fused)
        if isinstance(module, _FusedConvolution):
            return module.block
        if isinstance(module, _FusedResidualUnit):
            return module.unit
        return module

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            plain = original(child)
            if plain is not child:
                setattr(parent, name, plain)
            replace(plain)

    replace(network)
    return network
