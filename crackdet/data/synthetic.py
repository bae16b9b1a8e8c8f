"""Deterministic synthetic concrete images, with and without a thin dark crack."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from crackdet.io import atomic_write_bytes, atomic_write_text


def concrete_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey, speckled, gently shaded surface as a float array in [0, 255] of shape (size, size)."""
    base = rng.uniform(145, 170)
    # Low-frequency shading: upsampled coarse noise, so no two surfaces share one brightness.
    coarse = rng.normal(0, 6, size=(4, 4)).astype(np.float32)
    shade = np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )
    grain = rng.normal(0, 9, size=(size, size))
    pits = (rng.random((size, size)) < 0.004) * rng.uniform(-60, -20, size=(size, size))
    return np.clip(base + shade + grain + pits, 0, 255)


def crack_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin, wandering crack path crossing the image, as a float mask in [0, 1]."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    # Start on one edge and walk towards the opposite one with a jittered heading.
    if rng.random() < 0.5:
        point = np.array([0.0, rng.uniform(0.2, 0.8) * size])
        heading = 0.0
    else:
        point = np.array([rng.uniform(0.2, 0.8) * size, 0.0])
        heading = np.pi / 2
    heading += rng.uniform(-0.5, 0.5)
    width = max(2, int(round(size * rng.uniform(0.05, 0.09))))
    step = size / 24
    points = [tuple(point)]
    for _ in range(48):
        heading += rng.normal(0, 0.18)
        point = point + step * np.array([np.cos(heading), np.sin(heading)])
        points.append(tuple(point))
        if not (-step <= point[0] <= size + step and -step <= point[1] <= size + step):
            break
    draw.line(points, fill=255, width=width, joint="curve")
    mask = mask.filter(ImageFilter.GaussianBlur(radius=max(0.5, width / 3)))
    return np.asarray(mask, dtype=np.float32) / 255.0


def synthetic_image(seed: int, size: int, crack: bool) -> Image.Image:
    """One RGB synthetic concrete image; the same (seed, size, crack) always gives the same pixels."""
    rng = np.random.default_rng(seed)
    grey = concrete_texture(rng, size)
    if crack:
        depth = rng.uniform(110, 150)
        grey = grey - depth * crack_mask(rng, size)
    tint = rng.uniform(-3, 3, size=3)
    rgb = np.clip(grey[..., None] + tint[None, None, :], 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def make_synthetic_dataset(root: str | Path, n_per_class: int, size: int, seed: int = 0) -> Path:
    """Write `n_per_class` crack (Positive/) and no-crack (Negative/) JPEGs under `root`, once.

    The folder is reused when it already holds a complete set made with the same parameters, so
    concurrent or repeated runs share one copy.
    """
    root = Path(root)
    params = {"n_per_class": n_per_class, "size": size, "seed": seed, "version": 2}
    stamp = root / "synthetic.json"
    try:
        if json.loads(stamp.read_text()) == params:
            return root
    except (OSError, ValueError):
        pass  # no set yet, or another one: (re)generate
    for folder, crack in (("Positive", True), ("Negative", False)):
        out = root / folder
        for i in range(n_per_class):
            image_seed = seed * 1_000_003 + i * 2 + int(crack)
            buffer = io.BytesIO()
            synthetic_image(image_seed, size, crack).save(buffer, format="JPEG", quality=92)
            # Unique temporary names: jobs generating the same set at once never collide.
            atomic_write_bytes(out / f"{i:05d}.jpg", buffer.getvalue())
        for extra in out.glob("*.jpg"):
            if extra.stem.isdigit() and int(extra.stem) >= n_per_class:
                extra.unlink(missing_ok=True)  # left by an earlier, larger set in this folder
    atomic_write_text(stamp, json.dumps(params))
    return root
