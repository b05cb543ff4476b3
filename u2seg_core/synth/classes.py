"""The synthetic dataset's classes: 6 thing shapes and 5 stuff materials, and their COCO categories.

Things have saturated, class-specific hues and a class-specific texture at a class-specific period;
stuff has muted palettes and its own texture. So colour and texture statistics of 8x8-pixel cells
separate the classes, while per-instance hue/brightness jitter, shading, lighting and noise keep it
from being trivial. Periods are in pixels of a 256-pixel image and scale with the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ThingTexture = Literal["stripes", "checker", "dots", "noise", "concentric", "plain"]
StuffTexture = Literal["gradient", "grain", "waves", "speckle", "blotches"]
Shape = Literal["disc", "square", "triangle", "star", "ring", "cross"]


@dataclass(frozen=True)
class ThingClass:
    name: str
    shape: Shape
    hue: float  # 0..1
    texture: ThingTexture
    period: float  # pixels at 256 px


@dataclass(frozen=True)
class StuffClass:
    name: str
    hue: float
    sat: float
    val: float
    texture: StuffTexture


THING_CLASSES: tuple[ThingClass, ...] = (
    ThingClass("disc", "disc", 0.00, "stripes", 6.0),
    ThingClass("square", "square", 0.08, "checker", 5.0),
    ThingClass("triangle", "triangle", 0.155, "dots", 7.0),
    ThingClass("star", "star", 0.28, "noise", 3.0),
    ThingClass("ring", "ring", 0.76, "plain", 1.0),
    ThingClass("cross", "cross", 0.88, "concentric", 7.0),
)

STUFF_CLASSES: tuple[StuffClass, ...] = (
    StuffClass("sky", 0.58, 0.22, 0.86, "gradient"),
    StuffClass("grass", 0.27, 0.42, 0.45, "grain"),
    StuffClass("water", 0.52, 0.45, 0.42, "waves"),
    StuffClass("sand", 0.11, 0.30, 0.72, "speckle"),
    StuffClass("rock", 0.05, 0.06, 0.50, "blotches"),
)


def thing_category_id(thing_index: int) -> int:
    """COCO category id of thing class `thing_index` (0-based): 1..T."""
    return thing_index + 1


def stuff_category_id(stuff_index: int) -> int:
    """COCO category id of stuff class `stuff_index` (0-based): T+1..T+S."""
    return len(THING_CLASSES) + stuff_index + 1


def thing_categories() -> list[dict[str, Any]]:
    """Categories of instances.json: things 1..T."""
    return [
        {"id": thing_category_id(i), "name": c.name, "supercategory": "thing"}
        for i, c in enumerate(THING_CLASSES)
    ]


def panoptic_categories() -> list[dict[str, Any]]:
    """Categories of panoptic.json: things 1..T (isthing 1), stuff T+1..T+S (isthing 0)."""
    things = [dict(c, isthing=1) for c in thing_categories()]
    stuff = [
        {"id": stuff_category_id(i), "name": c.name, "supercategory": "stuff", "isthing": 0}
        for i, c in enumerate(STUFF_CLASSES)
    ]
    return things + stuff
