"""Vectorised noise, colour conversion and the thing / stuff textures of the synthetic dataset."""

from __future__ import annotations

import numpy as np

from .classes import StuffClass, ThingTexture


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """(H, W) float32 smooth noise, about N(0, 0.5): a random grid with one value per `cell` pixels,
    interpolated with smoothstep weights (random sub-cell offset so grids of different calls do not align)."""
    height, width = shape
    cell = max(float(cell), 1.0)
    offset = rng.random(2)
    ys = np.arange(height) / cell + offset[0]
    xs = np.arange(width) / cell + offset[1]
    grid = rng.standard_normal((int(ys[-1]) + 2, int(xs[-1]) + 2)).astype(np.float32)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    ty, tx = ys - y0, xs - x0
    wy = (ty * ty * (3.0 - 2.0 * ty)).astype(np.float32)[:, None]
    wx = (tx * tx * (3.0 - 2.0 * tx)).astype(np.float32)[None, :]
    top = grid[np.ix_(y0, x0)] * (1 - wx) + grid[np.ix_(y0, x0 + 1)] * wx
    bottom = grid[np.ix_(y0 + 1, x0)] * (1 - wx) + grid[np.ix_(y0 + 1, x0 + 1)] * wx
    return top * (1 - wy) + bottom * wy


def hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """(H, W) hue (wraps at 1), saturation, value in [0, 1] -> (H, W, 3) float32 RGB in [0, 1]."""
    hue = np.mod(hue, 1.0) * 6.0
    sat = np.clip(sat, 0.0, 1.0)
    val = np.clip(val, 0.0, 1.0)
    sector = np.floor(hue).astype(np.int64) % 6
    frac = hue - np.floor(hue)
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    red = np.choose(sector, [val, q, p, p, t, val])
    green = np.choose(sector, [t, val, val, q, p, p])
    blue = np.choose(sector, [p, p, t, val, val, q])
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


def thing_pattern(
    texture: ThingTexture, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: float
) -> np.ndarray:
    """(h, w) pattern in [0, 1] at local pixel coordinates (u, v) (rotated with the instance)."""
    if texture == "stripes":
        return 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period)
    if texture == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2.0).astype(np.float32)
    if texture == "dots":
        du = u / period - np.round(u / period)
        dv = v / period - np.round(v / period)
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if texture == "noise":
        return np.clip(0.5 + value_noise(rng, u.shape, period), 0.0, 1.0)
    if texture == "concentric":
        return 0.5 + 0.5 * np.sin(2.0 * np.pi * np.hypot(u, v) / period)
    if texture == "plain":
        return np.zeros_like(u, dtype=np.float32)
    raise ValueError(f"unknown thing texture {texture!r}")


def stuff_hsv(
    stuff: StuffClass, rng: np.random.Generator, shape: tuple[int, int], unit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue, sat, val) maps (H, W) of one stuff material over the whole image; `unit` = size / 256."""
    height, width = shape
    yy = (np.arange(height, dtype=np.float32) / height)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    hue = stuff.hue + 0.015 * rng.standard_normal() + 0.02 * value_noise(rng, shape, 48 * unit)
    sat = np.full(shape, stuff.sat * rng.uniform(0.85, 1.15), dtype=np.float32)
    val = np.full(shape, stuff.val * rng.uniform(0.9, 1.1), dtype=np.float32)
    if stuff.texture == "gradient":  # sky: brighter and paler towards the top, almost no texture
        val = val + 0.12 * (0.5 - yy) + 0.03 * value_noise(rng, shape, 64 * unit)
        sat = sat * (0.7 + 0.6 * yy)
    elif stuff.texture == "grain":  # grass: fine grain over coarse patches
        val = val * (1.0 + 0.22 * value_noise(rng, shape, 1.5 * unit) + 0.12 * value_noise(rng, shape, 24 * unit))
    elif stuff.texture == "waves":  # water: horizontal, slightly meandering waves
        meander = 3.0 * unit * np.sin(2.0 * np.pi * xx / (40.0 * unit) + rng.uniform(0, 2 * np.pi))
        phase = 2.0 * np.pi * (yy * height + meander) / (9.0 * unit)
        val = val * (1.0 + 0.16 * np.sin(phase))
    elif stuff.texture == "speckle":  # sand: sparse dark grains
        grains = rng.random(shape) < 0.06
        val = val * (1.0 - 0.35 * grains + 0.05 * rng.standard_normal(shape))
    elif stuff.texture == "blotches":  # rock: grey blotches at two scales
        val = val * (1.0 + 0.25 * value_noise(rng, shape, 10 * unit) + 0.1 * value_noise(rng, shape, 3 * unit))
    else:
        raise ValueError(f"unknown stuff texture {stuff.texture!r}")
    return hue, sat, val
