"""Images for TensorBoard drawn in milliseconds: a confusion matrix and a captioned image grid.

Rendering a matplotlib figure costs about 0.3 s, a 16-image grid about 0.45 s more: every
validation epoch of every sweep job paid that. These are drawn with Pillow and torchvision's
`make_grid` instead, and carry a header that states what they show (data set, split, threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

FONT_SIZE = 14
LINE = FONT_SIZE + 6
#: Smallest side of a grid cell: 48-px images are enlarged so their captions fit.
MIN_CELL = 160


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _header(lines: Sequence[str], width: int) -> Image.Image:
    """White strip with one text line per entry."""
    strip = Image.new("RGB", (width, LINE * len(lines) + 6), "white")
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((6, 3 + i * LINE), line, fill="black", font=_font())
    return strip


def _stack(header: Image.Image, body: Image.Image) -> torch.Tensor:
    """Header above body, as a uint8 (3, H, W) tensor for `SummaryWriter.add_image`."""
    width = max(header.width, body.width)
    canvas = Image.new("RGB", (width, header.height + body.height), "white")
    canvas.paste(header, (0, 0))
    canvas.paste(body, (0, header.height))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def confusion_matrix_image(
    counts: torch.Tensor | np.ndarray, class_names: Sequence[str], title: Sequence[str]
) -> torch.Tensor:
    """Counts and row-normalised rates per cell (rows true, columns predicted), under `title`."""
    counts = np.asarray(counts, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    n, cell, margin = len(class_names), 110, 120
    body = Image.new("RGB", (margin + n * cell + 10, LINE + n * cell + 10), "white")
    draw = ImageDraw.Draw(body)
    font = _font()
    for j, name in enumerate(class_names):
        draw.text((margin + j * cell + 6, 2), f"pred {name}", fill="black", font=font)
    for i, name in enumerate(class_names):
        top = LINE + i * cell
        draw.text((6, top + cell // 2 - LINE // 2), f"true {name}", fill="black", font=font)
        for j in range(n):
            left = margin + j * cell
            shade = int(255 - 200 * rates[i, j])  # darker blue for a larger share of the row
            fill = (shade, shade, 255)
            draw.rectangle((left, top, left + cell - 2, top + cell - 2), fill=fill)
            colour = "white" if rates[i, j] > 0.6 else "black"
            draw.text((left + 8, top + 30), f"{counts[i, j]:d}", fill=colour, font=font)
            draw.text((left + 8, top + 30 + LINE), f"{rates[i, j]:.3f}", fill=colour, font=font)
    return _stack(_header(title, body.width), body)


def captioned_grid(
    images: Sequence[torch.Tensor],
    captions: Sequence[Sequence[str]],
    title: Sequence[str],
    columns: int = 4,
) -> torch.Tensor:
    """Images (3, H, W floats in [0, 1]) in a grid, each above its caption lines, under `title`."""
    side = max(MIN_CELL, max(image.shape[-1] for image in images))
    cells = []
    for image, lines in zip(images, captions, strict=True):
        scaled = torch.nn.functional.interpolate(
            image[None].clamp(0, 1), size=(side, side), mode="bilinear", align_corners=False
        )[0]
        picture = Image.fromarray(
            (scaled.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), mode="RGB"
        )
        cell = Image.new("RGB", (side, side + LINE * len(lines) + 4), "white")
        cell.paste(picture, (0, 0))
        draw = ImageDraw.Draw(cell)
        for i, line in enumerate(lines):
            draw.text((2, side + 2 + i * LINE), line, fill="black", font=_font())
        cells.append(torch.from_numpy(np.asarray(cell).copy()).permute(2, 0, 1))
    height = max(c.shape[1] for c in cells)
    cells = [torch.nn.functional.pad(c, (0, 0, 0, height - c.shape[1]), value=255) for c in cells]
    grid = make_grid(cells, nrow=columns, padding=4, pad_value=255)
    body = Image.fromarray(grid.permute(1, 2, 0).numpy(), mode="RGB")
    return _stack(_header(title, body.width), body)
