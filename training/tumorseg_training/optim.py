"""Optimisation helpers: the region loss, the learning-rate schedule, a moving average of the weights and
the re-estimation of BatchNorm statistics.

Tensors are (B, C, X, Y, Z): ``C`` = 4 input channels (``Preprocessing.channels``) or 3 region channels
(TC, WT, ET); logits before the sigmoid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceLoss
from monai.transforms import Compose
from torch import nn


class RegionLoss(nn.Module):
    """Sigmoid Dice over the batch per region (+ BCE for ``dice_bce``); targets are (B, 3, …) floats.

    Computed in float32 whatever the logits' dtype. Training calls it outside autocast with the network's
    float16 logits (CUDA AMP), and a float16 sum of the predictions over a batch of crops (2 × 64³ voxels)
    would pass float16's maximum of 65504 for a large region, saturating its Dice term at 1."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = nn.BCEWithLogitsLoss() if kind == "dice_bce" else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        loss: torch.Tensor = self.dice(logits, target)
        if self.bce is not None:
            loss = loss + self.bce(logits, target)
        return loss


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """Exponential moving average of the parameters, with the usual warm-up of the decay
    (``min(decay, (1 + n) / (10 + n))`` after n updates) so that short runs track the network. The average
    is what gets validated and shipped: it is far less noisy than the last step's weights. BatchNorm
    statistics are not averaged; ``recalibrate_batch_norm`` estimates them for the averaged weights."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(network)
        self.model.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.model.parameters(), network.parameters(), strict=True):
            average.lerp_(current.detach(), 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def recalibrate_batch_norm(
    network: nn.Module,
    items: Sequence[dict[str, Any]],
    transform: Compose,
    batches: int,
    cases_per_batch: int,
    device: str,
) -> None:
    """Replace BatchNorm running statistics by their exact average over ``batches`` batches
    made like training batches (``cases_per_batch`` cases, cycling through ``items`` in a fixed order).
    Momentum averages of the last few small batches are noisy, and inference uses exactly these statistics.
    No-op for a network without BatchNorm."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not items:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    network.train()
    with torch.no_grad():
        for b in range(batches):
            chosen = [items[(b * cases_per_batch + i) % len(items)] for i in range(cases_per_batch)]
            crops = [sample["image"] for item in chosen for sample in transform(item)]
            network(torch.stack(crops).to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
