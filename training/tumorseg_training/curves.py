"""Training curves as a small PNG, drawn with Pillow (no plotting library needed).

Input: the per-epoch history records of ``train`` (``epoch``, ``loss``, optional ``val_dice_tc`` /
``val_dice_wt`` / ``val_dice_et``). Output: one RGB PNG, two panels side by side — training loss against
epoch (left) and validation Dice per region against epoch (right, 0–1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H, MARGIN = 440, 300, 48
COLOURS = {"loss": (40, 40, 40), "tc": (214, 39, 40), "wt": (31, 119, 180), "et": (44, 160, 44)}


def _panel(
    draw: ImageDraw.ImageDraw,
    left: int,
    title: str,
    series: dict[str, list[tuple[float, float]]],
    y_range: tuple[float, float],
    x_max: float,
) -> None:
    font = ImageFont.load_default()
    x0, y0, x1, y1 = left + MARGIN, MARGIN // 2 + 14, left + PANEL_W - 12, PANEL_H - MARGIN // 2 - 6
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    draw.text((x0, 4), title, fill=(0, 0, 0), font=font)
    lo, hi = y_range
    span = (hi - lo) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x1 - x0) * x / max(x_max, 1.0), y1 - (y1 - y0) * (min(max(y, lo), hi) - lo) / span)

    for i in range(5):
        value = lo + span * i / 4
        y = at(0, value)[1]
        draw.line((x0, y, x1, y), fill=(230, 230, 230))
        draw.text((left + 4, y - 6), f"{value:.2f}", fill=(90, 90, 90), font=font)
    draw.text((x0, y1 + 4), "0", fill=(90, 90, 90), font=font)
    draw.text((x1 - 40, y1 + 4), f"epoch {x_max:.0f}", fill=(90, 90, 90), font=font)
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS.get(name, (0, 0, 0))
        xy = [at(x, y) for x, y in points if math.isfinite(y)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((x1 - 40, y0 + 6 + 14 * n), name.upper(), fill=colour, font=font)


def draw_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write ``path`` (PNG) from the history records; returns ``path``."""
    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    x_max = float(max((r["epoch"] for r in history), default=1))
    loss = [(float(r["epoch"]), float(r["loss"])) for r in history if math.isfinite(float(r["loss"]))]
    values = [v for _, v in loss] or [0.0, 1.0]
    _panel(draw, 0, "training loss", {"loss": loss}, (min(0.0, min(values)), max(values) * 1.05), x_max)
    dice = {
        region: [
            (float(r["epoch"]), float(r[f"val_dice_{region}"])) for r in history if f"val_dice_{region}" in r
        ]
        for region in ("tc", "wt", "et")
    }
    _panel(draw, PANEL_W, "validation Dice (model grid)", dice, (0.0, 1.0), x_max)
    image.save(path, optimize=True)
    return path
