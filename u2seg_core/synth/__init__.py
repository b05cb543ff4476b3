"""Built-in synthetic dataset with exact panoptic ground truth (things on stuff)."""

from .classes import STUFF_CLASSES, THING_CLASSES, panoptic_categories, thing_categories
from .generate import dataset_is_complete, dataset_paths, generate_dataset

__all__ = [
    "STUFF_CLASSES",
    "THING_CLASSES",
    "dataset_is_complete",
    "dataset_paths",
    "generate_dataset",
    "panoptic_categories",
    "thing_categories",
]
