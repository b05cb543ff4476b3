"""Thing shapes as vectorised inside-tests in an instance's local frame.

Local coordinates (u, v) are rotated about the instance centre and divided by its radius (and aspect),
so every shape lies inside the square [-1.15, 1.15]^2.
"""

from __future__ import annotations

import numpy as np

from .classes import Shape

SHAPE_EXTENT = 1.15  # every shape fits in |u|, |v| <= SHAPE_EXTENT


def shape_mask(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(h, w) bool: which local points (u, v) lie inside `shape`."""
    rho = np.hypot(u, v)
    if shape == "disc":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        # equilateral, circumradius 1: inside all three half-planes n.p <= 1/2
        normals = np.deg2rad([-90.0, 30.0, 150.0])
        return np.all([u * np.cos(a) + v * np.sin(a) <= 0.5 for a in normals], axis=0)
    if shape == "star":
        # five points: the radius falls linearly from 1 at a tip to 0.42 between tips
        phase = (np.arctan2(v, u) * 5.0 / (2.0 * np.pi)) % 1.0
        return rho <= 0.42 + 0.58 * np.abs(2.0 * phase - 1.0)
    if shape == "ring":
        return (rho >= 0.55) & (rho <= 1.0)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")
