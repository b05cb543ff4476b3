"""One synthetic scene: warped-Voronoi stuff regions, then 2-5 rotated, scaled, textured things painted in
order (later ones occlude earlier ones), then lighting and sensor noise. Labels are decided before any
colour is drawn, so the pixel maps are exact ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import STUFF_CLASSES, THING_CLASSES
from .shapes import SHAPE_EXTENT, shape_mask
from .textures import hsv_to_rgb, stuff_hsv, thing_pattern, value_noise

INSTANCES_PER_IMAGE = (2, 5)
STUFF_PER_IMAGE = (2, 4)
RADIUS_RANGE = (0.07, 0.16)  # fraction of the image side
MIN_VISIBLE_FRACTION = 0.3  # a thing less visible than this is removed (its pixels show the stuff below)
TEXTURE_DEPTH = 0.35
NOISE_STD = 0.012


@dataclass(frozen=True)
class Instance:
    """One painted thing: class, pose and colour."""

    thing: int  # index into THING_CLASSES
    cy: float
    cx: float
    radius: float
    angle: float
    aspect: float
    hue: float
    sat: float
    val: float
    shading: tuple[float, float]  # brightness slope along (u, v) per radius

    def window(self, size: int) -> tuple[slice, slice]:
        """Rows and columns of the image that can hold the instance."""
        half = SHAPE_EXTENT * self.radius * max(self.aspect, 1.0 / self.aspect)
        rows = slice(max(int(self.cy - half), 0), min(int(np.ceil(self.cy + half)) + 1, size))
        cols = slice(max(int(self.cx - half), 0), min(int(np.ceil(self.cx + half)) + 1, size))
        return rows, cols

    def local(self, window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Rotated pixel-centre offsets (u, v) from the centre, in pixels, over `window`."""
        dy = (np.arange(window[0].start, window[0].stop, dtype=np.float32) + 0.5 - self.cy)[:, None]
        dx = (np.arange(window[1].start, window[1].stop, dtype=np.float32) + 0.5 - self.cx)[None, :]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return dx * cos + dy * sin, -dx * sin + dy * cos

    def mask(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        shape = THING_CLASSES[self.thing].shape
        return shape_mask(shape, u / (self.radius * self.aspect), v / (self.radius / self.aspect))


@dataclass
class Scene:
    rgb: np.ndarray  # (H, W, 3) uint8
    stuff_map: np.ndarray  # (H, W) int64 stuff class index 0..S-1 under every pixel
    instance_map: np.ndarray  # (H, W) int32, 0 = no thing, k = instances[k - 1]
    instances: list[Instance]


def render_scene(rng: np.random.Generator, size: int) -> Scene:
    """A `size` x `size` scene drawn from `rng`."""
    unit = size / 256.0
    shape = (size, size)
    stuff_map = _stuff_layout(rng, size)
    n_instances = int(rng.integers(INSTANCES_PER_IMAGE[0], INSTANCES_PER_IMAGE[1] + 1))
    instances = [_sample_instance(rng, size) for _ in range(n_instances)]
    instance_map = _paint_instances(instances, size)

    hue = np.zeros(shape, np.float32)
    sat = np.zeros(shape, np.float32)
    val = np.zeros(shape, np.float32)
    for s in np.unique(stuff_map):
        h, sa, v = stuff_hsv(STUFF_CLASSES[s], rng, shape, unit)
        region = stuff_map == s
        hue[region], sat[region], val[region] = h[region], sa[region], v[region]
    for k, inst in enumerate(instances, start=1):
        rows, cols = inst.window(size)
        inside = instance_map[rows, cols] == k
        if not inside.any():
            continue
        u, v = inst.local((rows, cols))
        cls = THING_CLASSES[inst.thing]
        pattern = thing_pattern(cls.texture, rng, u, v, cls.period * unit)
        shade = 1.0 + (inst.shading[0] * u + inst.shading[1] * v) / inst.radius
        hue[rows, cols][inside] = inst.hue
        sat[rows, cols][inside] = (inst.sat * (1.0 - 0.1 * pattern))[inside]
        val[rows, cols][inside] = (inst.val * (1.0 - TEXTURE_DEPTH * pattern) * shade)[inside]

    lighting = rng.uniform(0.9, 1.1) * (1.0 + 0.08 * value_noise(rng, shape, 128 * unit))
    rgb = hsv_to_rgb(hue, sat, val * lighting)
    rgb += NOISE_STD * rng.standard_normal(rgb.shape).astype(np.float32)
    rgb8 = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return Scene(rgb=rgb8, stuff_map=stuff_map, instance_map=instance_map, instances=instances)


def _stuff_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """(H, W) stuff class index: Voronoi cells of a few seeds over domain-warped coordinates."""
    n = int(rng.integers(STUFF_PER_IMAGE[0], STUFF_PER_IMAGE[1] + 1))
    classes = rng.choice(len(STUFF_CLASSES), size=n, replace=False)
    seed_class = np.repeat(classes, 1 + (rng.random(n) < 0.4))
    seeds = rng.random((len(seed_class), 2)) * size
    shape = (size, size)
    warp_y = 0.25 * size * value_noise(rng, shape, size / 4) + 0.04 * size * value_noise(rng, shape, size / 16)
    warp_x = 0.25 * size * value_noise(rng, shape, size / 4) + 0.04 * size * value_noise(rng, shape, size / 16)
    yy = np.arange(size, dtype=np.float32)[:, None] + warp_y
    xx = np.arange(size, dtype=np.float32)[None, :] + warp_x
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return seed_class[np.argmin(dist, axis=0)].astype(np.int64)


def _sample_instance(rng: np.random.Generator, size: int) -> Instance:
    thing = int(rng.integers(len(THING_CLASSES)))
    cy, cx = rng.uniform(0.1, 0.9, size=2) * size
    return Instance(
        thing=thing,
        cy=float(cy),
        cx=float(cx),
        radius=float(rng.uniform(*RADIUS_RANGE) * size),
        angle=float(rng.uniform(0.0, 2.0 * np.pi)),
        aspect=float(rng.uniform(0.8, 1.25)),
        hue=float(THING_CLASSES[thing].hue + 0.012 * rng.standard_normal()),
        sat=float(rng.uniform(0.7, 0.95)),
        val=float(rng.uniform(0.72, 0.95)),
        shading=(float(0.12 * rng.standard_normal()), float(0.12 * rng.standard_normal())),
    )


def _paint_instances(instances: list[Instance], size: int) -> np.ndarray:
    """(H, W) int32 instance index map after occlusion, without the mostly hidden instances."""
    instance_map = np.zeros((size, size), np.int32)
    full_area = np.zeros(len(instances) + 1, np.int64)
    for k, inst in enumerate(instances, start=1):
        window = inst.window(size)
        inside = inst.mask(*inst.local(window))
        instance_map[window][inside] = k
        full_area[k] = inside.sum()
    visible = np.bincount(instance_map.ravel(), minlength=len(instances) + 1)
    hidden = np.flatnonzero(visible < MIN_VISIBLE_FRACTION * full_area)
    instance_map[np.isin(instance_map, hidden[hidden > 0])] = 0
    return instance_map
