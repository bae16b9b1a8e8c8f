"""Scanning photos larger than a data set image tile by tile, and drawing where the cracks are."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

#: (left, top, right, bottom) in pixels, right/bottom exclusive, like PIL boxes.
Box = tuple[int, int, int, int]

#: Overlay colour (RGB) and its opacity at p(crack) = 1.
HEAT_COLOUR = np.array([255.0, 32.0, 0.0])
HEAT_MAX_ALPHA = 0.6
#: Colour of the outline around the tiles at or above the threshold.
OUTLINE_COLOUR = np.array([255.0, 230.0, 0.0])


def is_tiled(width: int, height: int, tile_size: int, min_side: int) -> bool:
    """True for a photo clearly larger than the model input: a side >= min_side and > tile_size.

    Anything smaller (a 256 px data set crop for a 224 px model) is one whole-image prediction.
    """
    return max(width, height) >= min_side and max(width, height) > tile_size


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets of windows of `tile` px every `stride` px; the last one ends flush with the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_boxes(width: int, height: int, tile: int, stride: int) -> list[Box]:
    """Windows covering the whole image, row by row; a side shorter than `tile` is taken whole."""
    tw, th = min(tile, width), min(tile, height)
    return [
        (x, y, x + tw, y + th)
        for y in tile_starts(height, tile, stride)
        for x in tile_starts(width, tile, stride)
    ]


def tile_batches(
    image: torch.Tensor,
    boxes: Sequence[Box],
    batch_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[torch.Tensor]:
    """Preprocessed tiles of a uint8 (3, H, W) image, `batch_size` at a time.

    Tiles are cut as views and `transform` (the data set's eval transform or its uint8 resize,
    which act on uint8 tensors as on PIL images) prepares them, so only one batch is ever copied.
    """
    for first in range(0, len(boxes), batch_size):
        crops = [
            image[:, top:bottom, left:right]
            for left, top, right, bottom in boxes[first : first + batch_size]
        ]
        yield transform(torch.stack(crops))


def _heat_grid(
    boxes: Sequence[Box],
    probs: Sequence[float],
    image_size: tuple[int, int],
    view_size: tuple[int, int],
) -> np.ndarray:
    """Per pixel of the shrunk view, the highest p(crack) of the tiles covering it."""
    sx, sy = view_size[0] / image_size[0], view_size[1] / image_size[1]
    heat = np.zeros((view_size[1], view_size[0]), dtype=np.float32)
    for (left, top, right, bottom), p in zip(boxes, probs, strict=True):
        x0, y0 = int(left * sx), int(top * sy)
        x1, y1 = max(x0 + 1, round(right * sx)), max(y0 + 1, round(bottom * sy))
        np.maximum(heat[y0:y1, x0:x1], p, out=heat[y0:y1, x0:x1])
    return heat


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within `width` px of its border (and of the image border)."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def heatmap_overlay(
    image: Image.Image,
    boxes: Sequence[Box],
    probs: Sequence[float],
    threshold: float,
    max_side: int = 1600,
) -> Image.Image:
    """The photo, shrunk to at most `max_side` px, with its crack tiles shaded by p(crack).

    A pixel covered by a tile at or above `threshold` is tinted red with opacity
    `HEAT_MAX_ALPHA` x (highest p(crack) of the tiles covering it), and the crack area is
    outlined in yellow; the rest of the photo is left as it is.
    """
    view = image.copy()
    view.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    heat = _heat_grid(boxes, probs, image.size, view.size)
    crack = heat >= threshold
    alpha = np.where(crack, HEAT_MAX_ALPHA * heat, 0.0)[..., None]
    pixels = np.asarray(view, dtype=np.float32) * (1 - alpha) + HEAT_COLOUR * alpha
    outline = _outline(crack, width=max(1, round(max(view.size) / 400)))
    pixels[outline] = OUTLINE_COLOUR
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), mode="RGB")
